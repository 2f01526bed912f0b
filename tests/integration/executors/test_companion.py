"""The companion against real Kafka, a synthetic-model executor and probe servers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from mulambda.emulator import ExecutorServer, SyntheticModel
from mulambda.emulator.profiles import SyntheticProfile, profile_by_name
from mulambda.errors import ConfigurationError
from mulambda.executors.companion import Companion
from mulambda.executors.heartbeats import parse_stats, summarise_model_state
from mulambda.executors.probe import ProbeServer, deregister_client, register_client
from mulambda.executors.registration import read_executors
from mulambda.executors.tfserving import TFServingClient
from mulambda.harness.infra import free_port
from mulambda.kafka import Admin, Producer, Record, replay
from mulambda.protocols.tfserving import ModelVersionStatus
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    WireModel,
)
from tests.conftest import Infra
from tests.factories import registration

pytestmark = pytest.mark.integration

MODEL = "FastGood"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def own_catalog(infra: Infra) -> AsyncIterator[Catalog]:
    """Topics of this module alone: companions probe every registered client they see."""
    catalog = load_catalog(f"companion-{uuid.uuid4().hex[:6]}.")
    async with Admin(infra.kafka("mulambda-test-admin")) as admin:
        await admin.apply(catalog)
        yield catalog
        await admin.delete([catalog.name(t) for t in Topic])


@pytest_asyncio.fixture(loop_scope="session")
async def producer(infra: Infra) -> AsyncIterator[Producer]:
    async with Producer(infra.kafka()) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="session")
async def executor() -> AsyncIterator[ExecutorServer]:
    """A synthetic model whose requests take 0.6 s each, so in-flight counts can be seen."""
    profile = SyntheticProfile(name=MODEL, D=600, alpha=0, beta=0, J=0, confidences=(0.9,), gamma=0)
    model = SyntheticModel(profile, seed=1)
    async with ExecutorServer("127.0.0.1", 0, {MODEL: model}) as server:
        assert await server.wait_loaded(5)
        yield server


def _uid(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def _companion(
    infra: Infra,
    catalog: Catalog,
    reg: ExecutorRegistration | None,
    executor_id: str,
    endpoint: str,
    **kwargs: Any,
) -> Companion:
    return Companion(
        infra.kafka(),
        catalog,
        reg,
        executor_id=executor_id,
        tfserving=TFServingClient(endpoint, timeout_s=2.0),
        **kwargs,
    )


async def _events(
    infra: Infra, catalog: Catalog, topic: Topic, model: type[WireModel], key: str
) -> list[Record[Any]]:
    """Every record under ``key`` on ``topic`` so far (tombstones included)."""
    found: list[Record[Any]] = []

    def keep(record: Record[Any]) -> None:
        if record.key_str == key:
            found.append(record)

    await replay(infra.kafka(), {catalog.name(topic): model}, keep)
    return found


async def _eventually(
    probe: Callable[[], Any], *, timeout_s: float = 15.0, what: str = "condition"
) -> Any:
    """Poll the async ``probe`` until it returns something truthy, within a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s (last: {result!r})")
        await asyncio.sleep(0.1)


async def _statuses(infra: Infra, catalog: Catalog, executor_id: str) -> list[ExecutorStatus]:
    records = await _events(infra, catalog, Topic.EXECUTOR_STATUS, ExecutorStatus, executor_id)
    return [r.value for r in records if isinstance(r.value, ExecutorStatus)]


async def _latencies(infra: Infra, catalog: Catalog, executor_id: str) -> list[LatencyMeasurement]:
    records = await _events(
        infra, catalog, Topic.LATENCY_MEASUREMENTS, LatencyMeasurement, executor_id
    )
    return [r.value for r in records if isinstance(r.value, LatencyMeasurement)]


# --- pure pieces ---------------------------------------------------------------------


def test_model_state_summary() -> None:
    def v(version: int, state: ModelState, code: str = "OK") -> ModelVersionStatus:
        return ModelVersionStatus(version, state, code, "" if code == "OK" else "boom")

    assert summarise_model_state([v(1, ModelState.END), v(2, ModelState.AVAILABLE)]) == (
        ModelState.AVAILABLE,
        None,
    )
    state, detail = summarise_model_state(
        [v(1, ModelState.END, "UNKNOWN"), v(2, ModelState.LOADING)]
    )
    assert state is ModelState.LOADING
    assert detail == "version 2: LOADING; version 1: END (UNKNOWN: boom)"
    assert summarise_model_state([])[0] is ModelState.UNKNOWN


def test_stats_documents_other_than_mulambdas_are_ignored() -> None:
    assert parse_stats({"in_flight": 2, "errors": 5, "requests": 9}) is not None
    junks: list[Any] = [[], {"in_flight": -1, "errors": 0}, {"in_flight": True, "errors": 0}]
    for junk in junks:
        assert parse_stats(junk) is None


# --- the companion -------------------------------------------------------------------


async def test_registers_heartbeats_and_probes_registered_clients(
    infra: Infra, own_catalog: Catalog, producer: Producer, executor: ExecutorServer
) -> None:
    executor_id = _uid("ex")
    reg = registration(
        executor_id,
        model_name=MODEL,
        model_version=None,
        endpoint=executor.url,
        heartbeat_interval_s=0.3,
    )
    early, late = _uid("cl-early"), _uid("cl-late")
    async with ProbeServer(client_id=early) as probe_a, ProbeServer(client_id=late) as probe_b:
        await register_client(
            producer, own_catalog, ClientRegistration(client_id=early, probe_url=probe_a.url)
        )
        companion = _companion(infra, own_catalog, reg, executor_id, executor.url)
        async with companion:
            assert companion.ready()
            assert early in companion.clients  # replayed before the first round
            live = await read_executors(infra.kafka(), own_catalog)
            assert live[executor_id] == reg

            statuses = await _eventually(
                lambda: _available_statuses(infra, own_catalog, executor_id, 3),
                what="three AVAILABLE statuses",
            )
            assert all(s.heartbeat_interval_s == 0.3 for s in statuses)

            # A client registered while running is followed, and probed.
            await register_client(
                producer, own_catalog, ClientRegistration(client_id=late, probe_url=probe_b.url)
            )
            measured = await _eventually(
                lambda: _clients_measured(infra, own_catalog, executor_id, {early, late}),
                what="latencies to both clients",
            )
            assert all(m.source is LatencySource.PROBE for m in measured)
            assert all(0 < m.latency_ms < 2000 for m in measured)
            assert probe_a.requests >= 1
            assert probe_b.requests >= 1

            # A tombstone removes the client: it is no longer probed.
            await deregister_client(producer, own_catalog, late)
            await _eventually(lambda: _gone(companion, late), what="tombstoned client dropped")
            before = probe_b.requests
            rounds = companion.stats.probe_rounds
            await _eventually(
                lambda: _rounds_after(companion, rounds + 2), what="two more probe rounds"
            )
            assert probe_b.requests == before
            assert companion.stats.probes_failed == 0
            assert companion.stats.probes_timed_out == 0


async def _available_statuses(
    infra: Infra, catalog: Catalog, executor_id: str, count: int
) -> list[ExecutorStatus]:
    found = [
        s
        for s in await _statuses(infra, catalog, executor_id)
        if s.model_state is ModelState.AVAILABLE
    ]
    return found if len(found) >= count else []


async def _clients_measured(
    infra: Infra, catalog: Catalog, executor_id: str, clients: set[str]
) -> list[LatencyMeasurement]:
    found = await _latencies(infra, catalog, executor_id)
    return found if {m.client_id for m in found} >= clients else []


async def _gone(companion: Companion, client_id: str) -> bool:
    return client_id not in companion.clients


async def _rounds_after(companion: Companion, rounds: int) -> bool:
    return companion.stats.probe_rounds >= rounds


async def test_status_carries_in_flight_and_errors_from_the_executor(
    infra: Infra, own_catalog: Catalog, executor: ExecutorServer
) -> None:
    executor_id = _uid("ex-load")
    reg = registration(
        executor_id,
        model_name=MODEL,
        model_version=None,
        endpoint=executor.url,
        heartbeat_interval_s=30,  # the test reads statuses itself
    )
    async with (
        _companion(infra, own_catalog, reg, executor_id, executor.url) as companion,
        aiohttp.ClientSession() as session,
    ):
        first = await companion.read_status()
        assert (first.model_state, first.in_flight) == (ModelState.AVAILABLE, 0)
        url = f"{executor.url}/v1/models/{MODEL}:predict"

        async def predict() -> int:
            async with session.post(url, json={"instances": [1]}) as response:
                return response.status

        calls = [asyncio.create_task(predict()) for _ in range(3)]
        await _eventually(lambda: _in_flight(executor, 3), what="three requests in flight")
        loaded = await companion.read_status()
        assert loaded.in_flight == 3
        assert await asyncio.gather(*calls) == [200, 200, 200]
        async with session.post(url, json={"nothing": 1}) as bad:
            assert bad.status == 400
        after = await companion.read_status()
        assert (after.in_flight, after.errors) == (0, 1)
        again = await companion.read_status()
        assert again.errors == 0  # errors are counted since the previous status


async def _in_flight(executor: ExecutorServer, count: int) -> bool:
    return executor.in_flight >= count


async def test_silent_probe_urls_never_delay_heartbeats(
    infra: Infra, own_catalog: Catalog, producer: Producer, executor: ExecutorServer
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_sleep(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(accept_and_sleep, "127.0.0.1", 0)
    silent_url = f"http://127.0.0.1:{silent.sockets[0].getsockname()[1]}/probe"
    executor_id = _uid("ex-silent")
    interval = 0.25
    reg = registration(
        executor_id,
        model_name=MODEL,
        model_version=None,
        endpoint=executor.url,
        heartbeat_interval_s=interval,
    )
    healthy_id = _uid("cl-ok")
    silent_ids = [_uid("cl-silent") for _ in range(40)]
    try:
        async with ProbeServer(client_id=healthy_id) as healthy:
            await register_client(
                producer,
                own_catalog,
                ClientRegistration(client_id=healthy_id, probe_url=healthy.url),
            )
            for client_id in silent_ids:
                await producer.send(
                    own_catalog.name(Topic.CLIENT_REGISTRATIONS),
                    ClientRegistration(client_id=client_id, probe_url=silent_url),
                    key=client_id,
                )
            await producer.flush()
            # 4 at a time, 1.5 s each: one round over 40 silent clients takes ~15 s.
            companion = _companion(
                infra,
                own_catalog,
                reg,
                executor_id,
                executor.url,
                probe_concurrency=4,
                probe_timeout_s=1.5,
            )
            async with companion:
                window_start = time.time()
                await asyncio.sleep(3.0)
                window_end = time.time()
                assert companion.stats.probe_rounds == 0  # the first round is still stuck
                await _eventually(lambda: _timed_out(companion, 4), what="timed-out probes counted")
                stats = companion.stats
            beats = [
                s
                for s in await _statuses(infra, own_catalog, executor_id)
                if window_start <= s.timestamp.timestamp() <= window_end
                and s.model_state is ModelState.AVAILABLE
            ]
            expected = (window_end - window_start) / interval
            # Coupled to the probe round, there would be none; allow a noisy machine slack.
            assert len(beats) >= 0.7 * expected, (len(beats), expected)
            measured = await _latencies(infra, own_catalog, executor_id)
            assert {m.client_id for m in measured} == {healthy_id}
            assert stats.probes_ok >= 1
            assert stats.probes_timed_out >= 4
            assert stats.latencies_published >= 1
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
        for client_id in [healthy_id, *silent_ids]:
            await producer.send(own_catalog.name(Topic.CLIENT_REGISTRATIONS), None, key=client_id)
        await producer.flush()


async def _timed_out(companion: Companion, count: int) -> bool:
    return companion.stats.probes_timed_out >= count


async def test_endpoint_down_reports_unknown_then_recovers(
    infra: Infra, own_catalog: Catalog
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    executor_id = _uid("ex-down")
    reg = registration(
        executor_id,
        model_name=MODEL,
        model_version=None,
        endpoint=endpoint,
        heartbeat_interval_s=0.3,
    )
    async with _companion(infra, own_catalog, reg, executor_id, endpoint) as companion:
        down = await _eventually(
            lambda: _statuses_in(infra, own_catalog, executor_id, ModelState.UNKNOWN, 2),
            what="two UNKNOWN statuses",
        )
        assert all(s.detail and f"127.0.0.1:{port}" in s.detail for s in down)
        assert all(s.errors >= 1 for s in down)
        assert companion.ready()
        assert companion.stats.status_errors >= 2
        model = SyntheticModel(profile_by_name(MODEL), seed=2)
        async with ExecutorServer("127.0.0.1", port, {MODEL: model}) as server:
            await server.wait_loaded(5)
            await _eventually(
                lambda: _statuses_in(infra, own_catalog, executor_id, ModelState.AVAILABLE, 1),
                what="AVAILABLE after the endpoint came up",
            )


async def _statuses_in(
    infra: Infra, catalog: Catalog, executor_id: str, state: ModelState, count: int
) -> list[ExecutorStatus]:
    found = [s for s in await _statuses(infra, catalog, executor_id) if s.model_state is state]
    return found if len(found) >= count else []


async def test_garbage_status_answer_is_unknown_with_detail(
    infra: Infra, own_catalog: Catalog
) -> None:
    async def garbage(_: web.Request) -> web.Response:
        return web.Response(text="<html>surely not TF Serving</html>")

    app = web.Application()
    app.router.add_get("/{tail:.*}", garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}"
    executor_id = _uid("ex-garbage")
    reg = registration(
        executor_id,
        model_name=MODEL,
        model_version=None,
        endpoint=endpoint,
        heartbeat_interval_s=30,
    )
    try:
        async with _companion(infra, own_catalog, reg, executor_id, endpoint) as companion:
            status = companion.last_status
            assert status is not None
            assert status.model_state is ModelState.UNKNOWN
            assert status.detail
            assert "not JSON" in status.detail
            assert status.in_flight == 0  # the stats path answered garbage too: ignored
    finally:
        await runner.cleanup()


async def test_confirm_existing_registration_and_keep_it_on_stop(
    infra: Infra, own_catalog: Catalog, producer: Producer, executor: ExecutorServer
) -> None:
    executor_id = _uid("ex-admin")
    reg = registration(
        executor_id,
        model_name=MODEL,
        model_version=None,
        endpoint=executor.url,
        heartbeat_interval_s=0.5,
    )
    await producer.send_and_wait(
        own_catalog.name(Topic.EXECUTOR_REGISTRATIONS), reg, key=executor_id
    )
    companion = _companion(infra, own_catalog, None, executor_id, executor.url)
    async with companion:
        assert companion.registration == reg
        assert companion.heartbeat_interval_s == 0.5
        first = companion.last_status
    final = companion.last_status
    assert first is not None
    assert first.model_state is ModelState.AVAILABLE
    assert final is not None
    assert final.model_state is ModelState.END
    live = await read_executors(infra.kafka(), own_catalog)
    assert live[executor_id] == reg  # the administrator's registration stays

    missing = _companion(infra, own_catalog, None, _uid("ex-nobody"), executor.url)
    with pytest.raises(ConfigurationError, match="is not registered on"):
        await missing.start()
    await missing.stop()
    assert not missing.ready()


async def test_cli_companion_deregisters_on_sigterm(
    infra: Infra, own_catalog: Catalog, executor: ExecutorServer, tmp_path: Path
) -> None:
    executor_id = _uid("ex-cli")
    env = {
        **os.environ,
        **infra.env(),
        "MULAMBDA_TOPIC_PREFIX": own_catalog.prefix,
        "MULAMBDA_METRICS_PORT": "0",
    }
    args = [
        "-m", "mulambda.cli", "companion",
        "--executor-id", executor_id, "--endpoint", executor.url,
        "--model-name", MODEL, "--model-type", "classification",
        "--input-format", "feature", "--output-format", "confidence",
        "--accuracy", "0.9", "--heartbeat-interval", "0.3",
    ]  # fmt: skip
    log_path = tmp_path / "companion.log"
    with log_path.open("w") as log:
        # Async: the executor fixture answers on this test's event loop.
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env, stdout=log, stderr=log
        )
        try:
            await _eventually(
                lambda: _statuses_in(infra, own_catalog, executor_id, ModelState.AVAILABLE, 1),
                timeout_s=30,
                what="the CLI companion's first status",
            )
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert code == 0, log_path.read_text()
    records = await _events(
        infra, own_catalog, Topic.EXECUTOR_REGISTRATIONS, ExecutorRegistration, executor_id
    )
    assert [r.value is None for r in records] == [False, True]  # registration, tombstone
    statuses = await _statuses(infra, own_catalog, executor_id)
    assert statuses[-1].model_state is ModelState.END
    assert executor_id not in await read_executors(infra.kafka(), own_catalog)
