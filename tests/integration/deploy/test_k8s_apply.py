"""Every rendered deploy/k8s overlay, applied (server-side, dry run) to a real Kubernetes API
server with the CRDs of Strimzi and KEDA installed: the server's own validation, defaulting,
admission and CRD schemas accept it. The same server refuses what it should."""

from __future__ import annotations

import copy
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from mulambda.launching.manifests import LaunchOptions, executor_deployment
from tests.factories import registration
from tests.kube import KubeApi
from tests.unit.deploy.manifests import OVERLAYS, by_kind, kustomize_command, render

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(kube_api: KubeApi) -> KubeApi:
    """The API server with the CRDs installed and the overlays' namespaces created for real:
    a dry run does not persist the Namespace its namespaced objects need."""
    kube_api.install_crds()
    if kustomize_command() is None:
        pytest.skip("no kustomize on PATH and no go to build it (sigs.k8s.io/kustomize v5)")
    namespaces = {
        o["metadata"]["name"]: o for overlay in OVERLAYS for o in render(overlay)
        if o["kind"] == "Namespace"
    }  # fmt: skip
    kube_api.kubectl(
        "apply", "--server-side", "--field-manager=mulambda-tests", "-f", "-",
        input=yaml.safe_dump_all(namespaces.values()),
    )  # fmt: skip
    return kube_api


def _dry_run(cluster: KubeApi, objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=mulambda-tests",
        "-f", "-", input=yaml.safe_dump_all(objects), check=False, timeout=120,
    )  # fmt: skip


def _applied(out: str) -> set[tuple[str, str]]:
    """(kind in lower case, name) of every object kubectl reports as applied."""
    applied = set()
    for line in out.splitlines():
        if line.endswith("serverside-applied (server dry run)"):
            kind_name = line.split()[0]
            kind, _, name = kind_name.partition("/")
            applied.add((kind.split(".")[0], name))
    return applied


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_server_accepts_every_object_of_the_overlay(cluster: KubeApi, overlay: str) -> None:
    objects = render(overlay)
    result = _dry_run(cluster, objects)
    assert result.returncode == 0, result.stderr
    expected = {(o["kind"].lower(), o["metadata"]["name"]) for o in objects}
    assert _applied(result.stdout) == expected


@pytest.mark.parametrize("replicas", [1, 3])
def test_the_api_server_accepts_launched_executor_workloads(
    cluster: KubeApi, replicas: int
) -> None:
    manifest = executor_deployment(registration("wine-1"), LaunchOptions(replicas=replicas))
    result = _dry_run(cluster, [manifest])
    assert result.returncode == 0, result.stderr
    assert _applied(result.stdout) == {(manifest["kind"].lower(), manifest["metadata"]["name"])}


def test_the_api_server_refuses_what_it_should(cluster: KubeApi) -> None:
    objects = render("dev")
    # A field Kubernetes does not know (strict field validation).
    router = copy.deepcopy(by_kind(objects, "Deployment")["mulambda-router"])
    router["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    result = _dry_run(cluster, [router])
    assert result.returncode != 0
    assert "livenesProbe" in result.stderr
    # A custom resource against its CRD's schema (Strimzi's, generated from its API model):
    # accepted as written, refused with partitions as a string.
    topic: dict[str, Any] = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {
            "name": "probe",
            "namespace": "mulambda",
            "labels": {"strimzi.io/cluster": "x"},
        },
        "spec": {"partitions": 3, "replicas": 1},
    }
    assert _dry_run(cluster, [topic]).returncode == 0
    topic["spec"]["partitions"] = "three"
    result = _dry_run(cluster, [topic])
    assert result.returncode != 0
    assert "spec.partitions" in result.stderr
    # A kind whose CRD is not installed is unknown to the server.
    unknown = {
        "apiVersion": "dragonflydb.io/v1alpha1",
        "kind": "Dragonfly",
        "metadata": {"name": "dragonfly", "namespace": "mulambda"},
        "spec": {"replicas": 1},
    }
    result = _dry_run(cluster, [unknown])
    assert result.returncode != 0
    assert "Dragonfly" in result.stderr


def test_the_launcher_role_grants_what_the_launcher_applies_and_nothing_else(
    cluster: KubeApi, tmp_path: Path
) -> None:
    # The overlay's ServiceAccount, Role and RoleBinding, applied for real in a namespace of
    # this test's own; then RBAC itself answers for the account's token.
    namespace = f"launcher-{uuid.uuid4().hex[:6]}"
    rbac = [
        copy.deepcopy(o)
        for o in render("dev")
        if o["kind"] in {"ServiceAccount", "Role", "RoleBinding"}
    ]
    for obj in rbac:
        obj["metadata"]["namespace"] = namespace
        for subject in obj.get("subjects", []):
            subject["namespace"] = namespace
    cluster.kubectl("create", "namespace", namespace)
    try:
        cluster.kubectl(
            "apply", "--server-side", "--field-manager=mulambda-tests", "-f", "-",
            input=yaml.safe_dump_all(rbac),
        )  # fmt: skip
        (account,) = [o["metadata"]["name"] for o in rbac if o["kind"] == "ServiceAccount"]
        token = cluster.service_account_token(namespace, account)
        config = cluster.kubeconfig_for_token(token, tmp_path / "launcher.kubeconfig")

        def can(verb: str, resource: str, where: str = namespace) -> bool:
            answer = cluster.kubectl(
                "--kubeconfig", str(config), "auth", "can-i", verb, resource, "-n", where,
                check=False,
            )  # fmt: skip
            return answer.stdout.strip() == "yes"

        for resource in ("statefulsets.apps", "deployments.apps", "services"):
            for verb in ("get", "list", "create", "patch", "delete"):
                assert can(verb, resource), (verb, resource)
        assert not can("get", "secrets")
        assert not can("create", "pods")
        assert not can("create", "pods/exec")
        assert not can("create", "roles.rbac.authorization.k8s.io")
        assert not can("create", "statefulsets.apps", "default")
        # A real request, not just the authorizer's opinion: a server-side dry run of a
        # launched StatefulSet is allowed, one in another namespace is refused.
        manifest = executor_deployment(
            registration("wine-1"), LaunchOptions(replicas=2, namespace=namespace)
        )
        allowed = cluster.kubectl(
            "--kubeconfig", str(config), "apply", "--server-side", "--dry-run=server",
            "--field-manager=mulambda-launcher", "-f", "-", input=yaml.safe_dump(manifest),
            check=False,
        )  # fmt: skip
        assert allowed.returncode == 0, allowed.stderr
        manifest["metadata"]["namespace"] = "default"
        refused = cluster.kubectl(
            "--kubeconfig", str(config), "apply", "--server-side", "--dry-run=server",
            "--field-manager=mulambda-launcher", "-f", "-", input=yaml.safe_dump(manifest),
            check=False,
        )  # fmt: skip
        assert refused.returncode != 0
        assert "forbidden" in refused.stderr
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
