"""The deployment files name settings, commands and URLs the code really has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from mulambda.cli import cli
from mulambda.runtime.settings import Settings

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _setting_names() -> set[str]:
    return {f"MULAMBDA_{name.upper()}" for name in Settings.model_fields}


def test_configmap_and_secret_only_set_known_settings() -> None:
    docs = _documents(DEPLOY / "k8s" / "base" / "config.yaml")
    keys = {key for doc in docs for key in {**doc.get("data", {}), **doc.get("stringData", {})}}
    assert keys
    assert keys <= _setting_names(), keys - _setting_names()


def test_compose_environment_only_sets_known_settings() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    env = compose["x-mulambda"]["environment"]
    assert set(env) <= _setting_names(), set(env) - _setting_names()


@pytest.mark.parametrize("worker", ["selector", "router"])
def test_worker_deployments_use_real_commands_and_health_paths(worker: str) -> None:
    (deployment,) = _documents(DEPLOY / "k8s" / "base" / f"{worker}.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command, option = container["args"][0], container["args"][1]
    assert isinstance(cli, click.Group)
    registered = cli.get_command(click.Context(cli), command)
    assert registered is not None, command
    assert option in {opt for param in registered.params for opt in param.opts}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("folder", ["base", "overlays/dev", "overlays/prod"])
def test_kustomization_lists_existing_files(folder: str) -> None:
    root = DEPLOY / "k8s" / folder
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (root / resource).exists(), resource


def test_every_lazy_command_loads() -> None:
    from mulambda.cli import COMMANDS

    assert isinstance(cli, click.Group)
    context = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(context, name)
        assert isinstance(command, click.Command), name
        assert command.name == name
