"""``executors launch --replicas N``: one executor id per replica."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mulambda.cli.executors import executors
from mulambda.launching.manifests import (
    POD_INDEX_LABEL,
    LaunchOptions,
    executor_deployment,
    replica_executor_ids,
)
from mulambda.wire.events import ExecutorRegistration
from tests.factories import registration
from tests.unit.deploy.kubelet import container_args, expand

pytestmark = pytest.mark.unit

LAUNCH = [
    "launch", "--executor-id", "wine-1", "--model-name", "wine",
    "--model-type", "classification", "--input-format", "wine-13",
    "--output-format", "probs-3", "--accuracy", "0.93", "--dry-run",
]  # fmt: skip


def _companion(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    (companion,) = [c for c in containers if c["name"] == "companion"]
    return dict(companion)


def _fields(ordinal: int, labels: dict[str, str]) -> dict[str, str]:
    """What the downward API would hand pod ``ordinal`` of the StatefulSet."""
    pod_labels = {**labels, POD_INDEX_LABEL: str(ordinal)}
    return {
        "status.podIP": f"10.0.0.{ordinal + 10}",
        "spec.nodeName": f"node-{ordinal}",
        **{f"metadata.labels['{k}']": v for k, v in pod_labels.items()},
    }


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "x-y-$(C)-$(A)"


def test_one_replica_stays_a_deployment_with_the_given_id() -> None:
    manifest = executor_deployment(registration("wine-1"))
    assert manifest["kind"] == "Deployment"
    args = container_args(_companion(manifest), _fields(0, {}))
    assert _flag(args, "--executor-id") == "wine-1"
    assert replica_executor_ids("wine-1", 1) == ["wine-1"]


def test_replicas_are_a_statefulset_whose_pods_register_distinct_valid_ids() -> None:
    reg = registration("wine-1")
    manifest = executor_deployment(reg, LaunchOptions(replicas=3))
    assert manifest["kind"] == "StatefulSet"
    assert manifest["spec"]["replicas"] == 3
    assert manifest["spec"]["podManagementPolicy"] == "Parallel"
    assert manifest["spec"]["serviceName"] == manifest["metadata"]["name"]
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert manifest["spec"]["selector"]["matchLabels"] == labels
    ids, endpoints = [], []
    for ordinal in range(3):
        args = container_args(_companion(manifest), _fields(ordinal, labels))
        ids.append(_flag(args, "--executor-id"))
        endpoints.append(_flag(args, "--endpoint"))
        # The id each pod registers is a valid one (the pydantic model accepts it).
        ExecutorRegistration.model_validate(
            {**reg.model_dump(), "executor_id": ids[-1], "endpoint": endpoints[-1]}
        )
        assert _flag(args, "--node") == f"node-{ordinal}"
    assert ids == ["wine-1-0", "wine-1-1", "wine-1-2"] == replica_executor_ids("wine-1", 3)
    assert endpoints == [f"http://10.0.0.{n}:8501" for n in (10, 11, 12)]


def test_companion_sidecar_serves_probes_on_every_interface() -> None:
    companion = _companion(executor_deployment(registration("wine-1")))
    env = {e["name"]: e.get("value") for e in companion["env"]}
    port = int(env["MULAMBDA_METRICS_PORT"] or 0)
    assert env["MULAMBDA_METRICS_HOST"] == "0.0.0.0"  # noqa: S104
    assert companion["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert companion["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}


def test_dry_run_with_replicas_prints_the_statefulset() -> None:
    result = CliRunner().invoke(executors, [*LAUNCH, "--replicas", "2"])
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.output)
    assert manifest["kind"] == "StatefulSet"
    assert manifest["spec"]["replicas"] == 2


def test_replica_ids_too_long_are_refused() -> None:
    args = list(LAUNCH)
    args[args.index("wine-1")] = "w" * 199
    result = CliRunner().invoke(executors, [*args, "--replicas", "10"])
    assert result.exit_code == 2
    assert "--executor-id" in result.output
