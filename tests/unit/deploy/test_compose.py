"""deploy/compose/compose.yaml: valid against the Compose Specification's schema, and wired
so the host's ``mulambda`` (default settings) reaches it and every model has a companion."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from importlib import resources
from typing import Any

import click
import pytest
import yaml

from mulambda.cli import cli
from mulambda.runtime.settings import Settings
from tests.unit.deploy.manifests import DEPLOY

pytestmark = pytest.mark.unit

COMPOSE = DEPLOY / "compose" / "compose.yaml"
ONE_SHOT = {"topics", "model-upload", "model-fetch"}
"""Services that run once to completion (restart on failure only, no health check)."""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def _mulambda_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    image = compose["x-mulambda"]["image"]
    return {n: s for n, s in compose["services"].items() if s.get("image") == image}


def _published(service: dict[str, Any]) -> dict[int, int]:
    """Host port → container port of ``127.0.0.1:H:C`` entries."""
    found = {}
    for entry in service.get("ports", []):
        host_ip, host, container = str(entry).split(":")
        assert host_ip == "127.0.0.1", entry  # not on every interface of the host
        found[int(host)] = int(container)
    return found


def test_compose_file_is_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (dev)")
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (dev)")
    vendored = resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    schema = json.loads((vendored / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors
    # The schema does reject what it should.
    broken = {**compose, "services": {"x": {"restart": 7, "image": "y"}}}
    assert list(validator.iter_errors(broken))


def test_every_mulambda_command_parses(compose: dict[str, Any]) -> None:
    assert isinstance(cli, click.Group)
    commands = {name: _argv(service) for name, service in _mulambda_services(compose).items()}
    # And the registrations one-shot scripts publish.
    # A shell variable there stands for a value the script computes: a number here.
    commands |= {
        f"register {n}": [re.sub(r"^\$\w+$", "0.9", a) for a in argv]
        for n, argv in _registered_by_scripts(compose).items()
    }
    assert any(name.startswith("register ") for name in commands)
    for name, argv in commands.items():
        command: click.Command | None = cli
        context = click.Context(cli)
        while isinstance(command, click.Group):
            command = command.get_command(context, argv.pop(0))
            assert command is not None, name
            context = click.Context(command, parent=context)
        assert command is not None, name
        command.make_context(command.name, list(argv), parent=context.parent)


def _registered_by_scripts(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Executor id → argv of each ``mulambda executors register`` a one-shot script runs."""
    found = {}
    for service in compose["services"].values():
        command = service.get("command")
        if service.get("entrypoint", [None])[0] != "sh" or not isinstance(command, list):
            continue
        # Compose turns $$ into $; the shell joins continued lines.
        script = command[-1].replace("$$", "$").replace("\\\n", " ")
        for line in script.splitlines():
            words = shlex.split(line)
            if "register" in words and words[words.index("register") - 1] == "executors":
                argv = words[words.index("executors") :]
                found[argv[argv.index("--executor-id") + 1]] = argv
    return found


def _served(compose: dict[str, Any]) -> set[tuple[str, str]]:
    """(endpoint, model) of every model an executor service serves: MuLambda's synthetic
    executor and TF Serving."""
    served: set[tuple[str, str]] = set()
    for name, service in compose["services"].items():
        argv = _argv(service)
        if service.get("image", "").startswith("tensorflow/serving:"):
            flags = dict(a.removeprefix("--").split("=", 1) for a in argv)
            served.add((f"http://{name}:{flags['rest_api_port']}", flags["model_name"]))
        elif argv[:2] == ["executor", "serve"]:
            port = argv[argv.index("--port") + 1]
            models = [argv[i + 1] for i, a in enumerate(argv) if a == "--synthetic"]
            served |= {(f"http://{name}:{port}", m) for m in models}
    return served


def test_every_served_model_has_a_companion(compose: dict[str, Any]) -> None:
    services = _mulambda_services(compose)
    registered = _registered_by_scripts(compose)
    companions = {}
    for service in services.values():
        argv = _argv(service)
        if argv[:1] == ["companion"]:
            executor_id = argv[argv.index("--executor-id") + 1]
            if "--confirm-existing" in argv:
                # The registration an administrator's step published, same id and endpoint.
                register = registered.pop(executor_id)
                assert _flag(register, "--endpoint") == _flag(argv, "--endpoint")
                model = _flag(register, "--model-name")
            else:
                model = _flag(argv, "--model-name")
            endpoint = _flag(argv, "--endpoint")
            companions[(endpoint, model)] = executor_id
            executor = endpoint.split("//")[1].split(":")[0]
            assert service["depends_on"][executor] == {"condition": "service_healthy"}
    assert not registered, "registered without a companion"
    served = _served(compose)
    assert {m for _, m in served} >= {"wine-keras"}  # TF Serving serves the real model
    assert set(companions) == served
    assert len(set(companions.values())) == len(companions)  # one executor id each


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_tf_serving_reads_what_model_fetch_downloads(compose: dict[str, Any]) -> None:
    services = compose["services"]
    fetch = _argv(services["model-fetch"])
    assert fetch[:2] == ["models", "download"]
    name, dest = fetch[2], fetch[3]
    flags = dict(a.removeprefix("--").split("=", 1) for a in _argv(services["tfserving"]))
    assert flags["model_name"] == name
    # TF Serving wants <base path>/<numeric version>/.
    assert dest == f"{flags['model_base_path']}/{_flag(fetch, '--version')}"
    volume = {v.split(":")[0] for v in services["model-fetch"]["volumes"]}
    assert volume == {v.split(":")[0] for v in services["tfserving"]["volumes"]}
    assert services["tfserving"]["depends_on"] == {
        "model-fetch": {"condition": "service_completed_successfully"}
    }
    assert "AVAILABLE" in services["tfserving"]["healthcheck"]["test"][-1]


def test_host_reaches_kafka_redis_and_minio_with_default_settings(
    compose: dict[str, Any],
) -> None:
    defaults = Settings.model_construct()
    services = compose["services"]
    kafka = services["kafka"]["environment"]
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    network = compose["x-mulambda"]["environment"]["MULAMBDA_KAFKA_BOOTSTRAP_SERVERS"]
    # One listener for the compose network, one for the host, on different ports.
    by_address = {address: name for name, address in advertised.items()}
    assert network in by_address
    assert defaults.kafka_bootstrap_servers in by_address
    host_listener = by_address[defaults.kafka_bootstrap_servers]
    host_port = int(defaults.kafka_bootstrap_servers.rsplit(":", 1)[1])
    container_port = int(listeners[host_listener].rsplit(":", 1)[1])
    assert _published(services["kafka"]) == {host_port: container_port}
    assert network.split(":")[0] == "kafka"
    assert int(listeners[by_address[network]].rsplit(":", 1)[1]) == int(network.split(":")[1])
    redis_port = int(defaults.redis_url.split(":")[2].split("/")[0])
    assert redis_port in _published(services["dragonfly"])
    minio_port = int(defaults.minio_endpoint.split(":")[1])
    assert _published(services["minio"]) == {minio_port: 9000}


def test_restart_policies_and_health_checks(compose: dict[str, Any]) -> None:
    metrics_port = compose["x-mulambda"]["environment"]["MULAMBDA_METRICS_PORT"]
    assert compose["x-mulambda"]["environment"]["MULAMBDA_METRICS_HOST"] == "0.0.0.0"  # noqa: S104
    for name, service in compose["services"].items():
        one_shot = name in ONE_SHOT
        assert service["restart"] == ("on-failure" if one_shot else "unless-stopped"), name
        check = service["healthcheck"]
        if one_shot:
            assert check == {"disable": True}
            continue
        assert check["test"][0] == "CMD", name
        argv = _argv(service)
        if service.get("image") == compose["x-mulambda"]["image"] and argv[0] != "executor":
            assert f"127.0.0.1:{metrics_port}/readyz" in check["test"][-1], name
    for name, service in _mulambda_services(compose).items():
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert condition == {"condition": wanted}, (name, dependency)


def test_image_builds_ask_for_extras_the_package_has(compose: dict[str, Any]) -> None:
    extras = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    builds = [s["build"] for s in compose["services"].values() if "build" in s]
    asked = [b["args"]["EXTRAS"] for b in builds if "EXTRAS" in b.get("args", {})]
    assert asked, "no image is built with the tensorflow extra for the real model"
    for value in asked:
        assert set(value.split(",")) <= set(extras), value
    assert any("tensorflow" in value.split(",") for value in asked)
