from __future__ import annotations

import asyncio
import sys

import pytest

from mulambda.errors import ConfigurationError
from mulambda.launching.manifests import LaunchOptions, apply_deployment, executor_deployment
from tests.factories import registration

pytestmark = pytest.mark.unit


def _containers(manifest: dict[str, object]) -> dict[str, dict[str, object]]:
    spec = manifest["spec"]["template"]["spec"]  # type: ignore[index]
    return {c["name"]: c for c in spec["initContainers"] + spec["containers"]}


def test_pod_fetches_the_model_then_serves_it_with_a_companion() -> None:
    reg = registration("Wine/EU:1", model_version=3)
    manifest = executor_deployment(reg, LaunchOptions(namespace="ml", cpu="500m"))
    assert manifest["metadata"]["name"] == "mulambda-executor-wine-eu-1"
    assert manifest["metadata"]["namespace"] == "ml"
    containers = _containers(manifest)
    assert containers["fetch-model"]["args"] == [
        "models", "download", "wine", "/models/wine/3", "--version", "3",
    ]  # fmt: skip
    serving = containers["tfserving"]
    assert "--model_base_path=/models/wine" in serving["args"]  # type: ignore[operator]
    assert serving["readinessProbe"]["httpGet"]["path"] == "/v1/models/wine"  # type: ignore[index]
    assert serving["resources"] == {"requests": {"cpu": "500m"}}
    args = containers["companion"]["args"]
    assert isinstance(args, list)
    assert args[args.index("--endpoint") + 1] == "http://$(POD_IP):8501"
    assert args[args.index("--executor-id") + 1] == "Wine/EU:1"
    assert args[args.index("--model-version") + 1] == "3"


def test_unpinned_model_is_served_as_version_one_and_config_comes_from_refs() -> None:
    manifest = executor_deployment(registration(model_version=None))
    containers = _containers(manifest)
    assert containers["fetch-model"]["args"][-1] == "/models/wine/1"  # type: ignore[index]
    assert "--model-version" not in containers["companion"]["args"]  # type: ignore[operator]
    refs = containers["companion"]["envFrom"]
    assert {"secretRef": {"name": "mulambda-secrets"}} in refs  # type: ignore[operator]


def test_dry_run_prints_plain_yaml() -> None:
    import yaml
    from click.testing import CliRunner

    from mulambda.cli.executors import executors

    result = CliRunner().invoke(
        executors,
        [
            "launch", "--executor-id", "wine-1", "--model-name", "wine",
            "--model-type", "classification", "--input-format", "wine-13",
            "--output-format", "probs-3", "--accuracy", "0.93", "--dry-run",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "&id" not in result.output
    manifest = yaml.safe_load(result.output)
    assert manifest["kind"] == "Deployment"
    assert manifest["metadata"]["name"] == "mulambda-executor-wine-1"


def test_launch_without_traits_is_refused_before_anything_else() -> None:
    from click.testing import CliRunner

    from mulambda.cli.executors import executors

    result = CliRunner().invoke(executors, ["launch", "--executor-id", "x", "--dry-run"])
    assert result.exit_code == 2
    assert "missing --model-name" in result.output


async def test_apply_without_the_kubernetes_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes_asyncio", None)  # import fails: not installed
    manifest = executor_deployment(registration("wine-1"))
    with pytest.raises(ConfigurationError, match=r"pip install 'mulambda\[kubernetes\]'"):
        await apply_deployment(manifest)


async def test_launch_without_the_kubernetes_extra_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from mulambda.cli.executors import executors

    monkeypatch.setitem(sys.modules, "kubernetes_asyncio", None)
    # In a worker thread: the command's asyncio.run would unset the session's event loop.
    result = await asyncio.to_thread(
        CliRunner().invoke,
        executors,
        [
            "launch", "--executor-id", "wine-1", "--model-name", "wine",
            "--model-type", "classification", "--input-format", "wine-13",
            "--output-format", "probs-3", "--accuracy", "0.93",
        ],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "needs the kubernetes extra: pip install 'mulambda[kubernetes]'" in result.output
