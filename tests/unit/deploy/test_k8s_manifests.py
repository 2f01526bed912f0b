"""deploy/k8s overlays, rendered by a real kustomize and validated against Kubernetes'
schemas (kubernetes-validate, strict), plus the properties the schemas cannot see."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import click
import pytest

from mulambda.cli import cli
from mulambda.executors.launcher import (
    COMPANION_HEALTH_PORT,
    TF_SERVING_REST_PORT,
    LaunchOptions,
    executor_deployment,
)
from mulambda.runtime.settings import Settings
from tests.factories import registration
from tests.unit.deploy.manifests import (
    DEPLOY,
    KUBERNETES_VERSION,
    OVERLAYS,
    by_kind,
    kustomize_command,
    render,
)

pytestmark = pytest.mark.unit

WORKERS = ("selector", "router")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    if kustomize_command() is None:
        pytest.skip("no kustomize on PATH and no go to build it (sigs.k8s.io/kustomize v5)")
    overlay = str(request.param)
    return overlay, render(overlay)


def _validator() -> Any:
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (dev extra)"
    )


def _pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for deployment in by_kind(objects, "Deployment").values():
        yield deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]


def _config(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(by_kind(objects, "ConfigMap")["mulambda-config"]["data"])


def test_every_rendered_object_is_valid_for_kubernetes(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    kv = _validator()
    _, objects = rendered
    kinds = {o["kind"] for o in objects}
    assert kinds == {
        "Namespace", "ConfigMap", "Deployment", "PodDisruptionBudget", "ServiceAccount",
        "Role", "RoleBinding", "NetworkPolicy",
    }  # fmt: skip
    for obj in objects:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["metadata"].get("namespace", "mulambda") == "mulambda"


def test_the_validator_rejects_what_it_should(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    kv = _validator()
    _, objects = rendered
    broken = copy.deepcopy(by_kind(objects, "Deployment")["mulambda-router"])
    broken["spec"]["replicas"] = "3"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = copy.deepcopy(by_kind(objects, "Deployment")["mulambda-router"])
    unknown["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(unknown, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("replicas", [1, 3])
def test_launched_executor_workloads_are_valid_for_kubernetes(replicas: int) -> None:
    kv = _validator()
    manifest = executor_deployment(registration("wine-1"), LaunchOptions(replicas=replicas))
    kv.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_workers_run_real_commands_and_probe_where_they_bind(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    config = _config(objects)
    # Kubelet dials the pod IP: a loopback bind (the local default) fails every probe.
    assert config["MULAMBDA_METRICS_HOST"] in {"0.0.0.0", "::"}  # noqa: S104
    port = int(config["MULAMBDA_METRICS_PORT"])
    assert isinstance(cli, click.Group)
    for worker in WORKERS:
        spec = by_kind(objects, "Deployment")[f"mulambda-{worker}"]["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        command = cli.get_command(click.Context(cli), container["args"][0])
        assert command is not None
        assert container["args"][1] in {o for p in command.params for o in p.opts}
        (metrics,) = container["ports"]
        assert metrics["containerPort"] == port
        probes = {k: container[k]["httpGet"] for k in container if k.endswith("Probe")}
        assert probes == {
            "startupProbe": {"path": "/healthz", "port": "metrics"},
            "livenessProbe": {"path": "/healthz", "port": "metrics"},
            "readinessProbe": {"path": "/readyz", "port": "metrics"},
        }
        assert metrics["name"] == "metrics"


def test_workers_are_non_root_read_only_and_bounded(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for name, spec in _pod_specs(objects):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        # Only the launcher talks to the Kubernetes API, as its own ServiceAccount.
        launcher = name == "mulambda-launcher"
        assert spec["automountServiceAccountToken"] is launcher, name
        assert spec.get("serviceAccountName") == ("mulambda-launcher" if launcher else None)
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name


def test_each_worker_has_a_disruption_budget_and_spreads(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = rendered
    budgets = by_kind(objects, "PodDisruptionBudget")
    for worker in WORKERS:
        deployment = by_kind(objects, "Deployment")[f"mulambda-{worker}"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (budget,) = [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert budget["spec"]["maxUnavailable"] == 1
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
        for constraint in spread:
            assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        hard = {c["topologyKey"] for c in spread if c["whenUnsatisfiable"] == "DoNotSchedule"}
        if overlay == "dev":
            assert deployment["spec"]["replicas"] == 1
            assert not hard  # one node: a hard spread would leave pods pending
        else:
            assert deployment["spec"]["replicas"] > 1
            assert hard == {"kubernetes.io/hostname"}
            assert "topology.kubernetes.io/zone" in {c["topologyKey"] for c in spread}


def test_secrets_are_referenced_never_written(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    assert not by_kind(objects, "Secret")
    for name, spec in _pod_specs(objects):
        refs = [r for c in spec["containers"] for r in c.get("envFrom", [])]
        assert {"secretRef": {"name": "mulambda-secrets"}} in refs, name
    secret_settings = {
        f"MULAMBDA_{n.upper()}"
        for n in ("minio_access_key", "minio_secret_key", "kafka_sasl_password")
    }
    assert not secret_settings & set(_config(objects))
    for path in (DEPLOY / "k8s").rglob("*.yaml"):
        assert "change-me" not in path.read_text(), path


def test_configmaps_set_only_known_settings(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    known = {f"MULAMBDA_{name.upper()}" for name in Settings.model_fields}
    keys = set(_config(objects))
    assert keys <= known, keys - known
    Settings.model_validate(
        {k.removeprefix("MULAMBDA_").lower(): v for k, v in _config(objects).items()}
    )


def test_the_launcher_runs_its_command_on_the_kubernetes_backend_and_probes_it(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    deployment = by_kind(objects, "Deployment")["mulambda-launcher"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(cli, click.Group)
    assert cli.get_command(click.Context(cli), container["args"][0]) is not None
    assert container["args"] == ["launcher"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MULAMBDA_LAUNCHER_BACKEND"]["value"] == "kubernetes"
    namespace = env["MULAMBDA_LAUNCHER_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert namespace == "metadata.namespace"  # where its Role is bound
    (metrics,) = container["ports"]
    assert metrics["containerPort"] == int(_config(objects)["MULAMBDA_METRICS_PORT"])
    probes = {k: container[k]["httpGet"] for k in container if k.endswith("Probe")}
    assert probes == {
        "startupProbe": {"path": "/healthz", "port": "metrics"},
        "livenessProbe": {"path": "/healthz", "port": "metrics"},
        "readinessProbe": {"path": "/readyz", "port": "metrics"},
    }


def test_launcher_role_allows_exactly_what_the_launcher_applies(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    (role,) = by_kind(objects, "Role").values()
    allowed = {
        (group, resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    applied = {
        (
            "apps",
            executor_deployment(registration(), LaunchOptions(replicas=n))["kind"].lower() + "s",
        )
        for n in (1, 2)
    }
    assert applied <= allowed
    assert allowed <= applied | {("", "services")}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    (binding,) = by_kind(objects, "RoleBinding").values()
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"],
    }  # fmt: skip
    (account,) = by_kind(objects, "ServiceAccount").values()
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "mulambda"}
    ]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_only_routers_reach_executors_rest_port(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    executor_labels = executor_deployment(registration())["spec"]["template"]["metadata"]["labels"]
    pod_labels = {
        name.removeprefix("mulambda-"): d["spec"]["template"]["metadata"]["labels"]
        for name, d in by_kind(objects, "Deployment").items()
    }
    policies = [
        p
        for p in by_kind(objects, "NetworkPolicy").values()
        if _selects(p["spec"]["podSelector"], executor_labels)
    ]
    assert policies, "no NetworkPolicy selects the launcher's executor pods"
    open_to: dict[int, list[dict[str, Any]]] = {}
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"]["ingress"]:
            for port in rule["ports"]:
                open_to.setdefault(port["port"], []).extend(rule["from"])
    assert set(open_to) == {TF_SERVING_REST_PORT, COMPANION_HEALTH_PORT}
    rest_peers = open_to[TF_SERVING_REST_PORT]
    assert all(set(peer) == {"podSelector"} for peer in rest_peers)
    reaching = {
        w
        for w, labels in pod_labels.items()
        for p in rest_peers
        if _selects(p["podSelector"], labels)
    }
    assert reaching == {"router"}
    # Workers themselves admit only their metrics port.
    for worker, labels in pod_labels.items():
        ports = {
            port["port"]
            for p in by_kind(objects, "NetworkPolicy").values()
            if _selects(p["spec"]["podSelector"], labels)
            for rule in p["spec"]["ingress"]
            for port in rule["ports"]
        }
        assert ports == {int(_config(objects)["MULAMBDA_METRICS_PORT"])}, worker


def test_files_the_config_names_are_mounted(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    files = [v for k, v in _config(objects).items() if k.endswith("FILE")]
    for name, spec in _pod_specs(objects):
        for container in spec["containers"]:
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
            for path in files:
                assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), (name, path)
