"""``mulambda executors``, ``mulambda clients`` and the companion's argument checks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
import pytest_asyncio
from click.testing import CliRunner, Result

from mulambda.cli import cli
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from tests.conftest import Infra

pytestmark = pytest.mark.integration

UNREACHABLE = {"MULAMBDA_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
"""A broker nobody listens on: a command that tried Kafka would fail with "unreachable"."""

TRAITS = [
    "--model-type", "classification", "--input-format", "wine-13",
    "--output-format", "probs-3",
]  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def own_catalog(infra: Infra) -> AsyncIterator[Catalog]:
    """Topics of this module alone, so listings show only what these tests wrote."""
    from mulambda.kafka import Admin

    catalog = load_catalog(f"admin-{uuid.uuid4().hex[:6]}.")
    async with Admin(infra.kafka("mulambda-test-admin")) as admin:
        await admin.apply(catalog)
        yield catalog
        await admin.delete([catalog.name(t) for t in Topic])


def _invoke(infra: Infra, catalog: Catalog | None, *args: str, **env: str) -> Result:
    """Run the CLI in-process, in a worker thread.

    The commands call ``asyncio.run``, which in the main thread would unset the session's
    event loop that the async tests and fixtures share.
    """
    environment = {**infra.env(), **env}
    if catalog is not None:
        environment["MULAMBDA_TOPIC_PREFIX"] = catalog.prefix
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(
            CliRunner().invoke, cli, list(args), env=environment, catch_exceptions=False
        ).result(timeout=60)


def _uid(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def test_executors_register_list_deregister_round_trip(infra: Infra, own_catalog: Catalog) -> None:
    first, second = _uid("ex-a"), _uid("ex-b")
    for executor_id, version in ((first, ["--model-version", "3"]), (second, [])):
        result = _invoke(
            infra, own_catalog, "executors", "register", "--executor-id", executor_id,
            "--endpoint", "http://10.0.0.5:8501", "--model-name", "wine", *version, *TRAITS,
            "--accuracy", "0.87", "--zone", "eu-1",
        )  # fmt: skip
        assert result.exit_code == 0, result.output + result.stderr
        assert result.output.strip() == f"registered {executor_id}"

    listed = _invoke(infra, own_catalog, "executors", "list")
    assert listed.exit_code == 0, listed.stderr
    assert listed.output.splitlines() == sorted(
        [
            f"{first}\twine\t3\tclassification/wine-13/probs-3\t0.87\thttp://10.0.0.5:8501",
            f"{second}\twine\t-\tclassification/wine-13/probs-3\t0.87\thttp://10.0.0.5:8501",
        ]
    )
    as_json = json.loads(_invoke(infra, own_catalog, "executors", "list", "--json").output)
    assert [e["executor_id"] for e in as_json] == sorted([first, second])
    assert as_json[0]["zone"] == "eu-1"
    assert as_json[0]["traits"]["input_format"] == "wine-13"

    gone = _invoke(infra, own_catalog, "executors", "deregister", first)
    assert gone.exit_code == 0, gone.stderr
    assert gone.stderr == ""
    listed = _invoke(infra, own_catalog, "executors", "list")
    assert [line.split("\t")[0] for line in listed.output.splitlines()] == [second]

    again = _invoke(infra, own_catalog, "executors", "deregister", first)
    assert again.exit_code == 0
    assert "was not registered" in again.stderr


@pytest.mark.parametrize("command", [["executors", "register"], ["companion"]])
def test_missing_traits_exit_2_before_any_kafka_traffic(infra: Infra, command: list[str]) -> None:
    started = time.monotonic()
    result = _invoke(
        infra, None, *command, "--executor-id", "ex-1", "--endpoint", "http://h:8501",
        "--model-name", "wine", "--model-type", "classification", **UNREACHABLE,
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: missing --input-format, --output-format, --accuracy")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("command", [["executors", "register"], ["companion"]])
@pytest.mark.parametrize("endpoint", ["10.0.0.5:8501", "ftp://h/x", "http://h x:1"])
def test_invalid_endpoint_is_refused(infra: Infra, command: list[str], endpoint: str) -> None:
    result = _invoke(
        infra, None, *command, "--executor-id", "ex-1", "--endpoint", endpoint,
        "--model-name", "wine", *TRAITS, "--accuracy", "0.5", **UNREACHABLE,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--endpoint: must be an http(s)://host[:port][/path] URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_out_of_range_values_name_their_option(infra: Infra) -> None:
    result = _invoke(
        infra, None, "executors", "register", "--executor-id", "has space",
        "--endpoint", "http://h:1", "--model-name", "wine", *TRAITS, "--accuracy", "1.5",
        **UNREACHABLE,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--executor-id: may hold only" in result.stderr
    assert "--accuracy: Input should be less than or equal to 1" in result.stderr
    result = _invoke(
        infra, None, "executors", "register", "--executor-id", "ex-1",
        "--endpoint", "http://h:1", "--model-name", "wine/v2", *TRAITS, "--accuracy", "1",
        **UNREACHABLE,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--model-name: model name 'wine/v2' is empty or contains '/' or ':'" in result.stderr


def test_companion_confirm_existing_refuses_registration_options(infra: Infra) -> None:
    result = _invoke(
        infra, None, "companion", "--confirm-existing", "--executor-id", "ex-1",
        "--endpoint", "http://h:1", "--model-type", "x", **UNREACHABLE,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "drop --model-type" in result.stderr


async def test_companion_confirming_an_unknown_executor_exits_1(
    infra: Infra, own_catalog: Catalog
) -> None:
    executor_id = _uid("ex-nobody")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mulambda.cli", "companion", "--confirm-existing",
        "--executor-id", executor_id, "--endpoint", "http://127.0.0.1:1",
        env={**os.environ, **infra.env(), "MULAMBDA_TOPIC_PREFIX": own_catalog.prefix},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert f"executor {executor_id} is not registered on" in stderr.decode()


def test_clients_register_list_deregister_round_trip(infra: Infra, own_catalog: Catalog) -> None:
    client_id = _uid("cl")
    url = "http://10.0.0.7:7000/probe"
    result = _invoke(
        infra, own_catalog, "clients", "register", "--client-id", client_id,
        "--probe-url", url, "--zone", "eu-2",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    listed = _invoke(infra, own_catalog, "clients", "list")
    assert f"{client_id}\t{url}\teu-2" in listed.output.splitlines()
    as_json = json.loads(_invoke(infra, own_catalog, "clients", "list", "--json").output)
    assert {c["client_id"]: c["probe_url"] for c in as_json}[client_id] == url
    assert _invoke(infra, own_catalog, "clients", "deregister", client_id).exit_code == 0
    listed = _invoke(infra, own_catalog, "clients", "list")
    assert client_id not in listed.output


def test_invalid_probe_url_is_refused(infra: Infra) -> None:
    result = _invoke(
        infra, None, "clients", "register", "--client-id", "cl-1", "--probe-url", "nope",
        **UNREACHABLE,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--probe-url: must be an http(s)://" in result.stderr


async def test_serve_probe_registers_answers_and_deregisters_on_sigterm(
    infra: Infra, own_catalog: Catalog
) -> None:
    client_id = _uid("cl-serve")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mulambda.cli", "clients", "serve-probe", "--port", "0",
        "--client-id", client_id, "--register",
        env={**os.environ, **infra.env(), "MULAMBDA_TOPIC_PREFIX": own_catalog.prefix},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        assert url.startswith("http://127.0.0.1:"), url
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert await response.json() == {"ok": True, "client_id": client_id}
        from mulambda.executors.probe import read_clients

        registered = await read_clients(infra.kafka(), own_catalog)
        assert registered[client_id].probe_url == url
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert client_id not in await read_clients(infra.kafka(), own_catalog)
