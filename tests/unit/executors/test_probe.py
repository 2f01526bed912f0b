"""The probe endpoint and the latency measurement against it (local sockets only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from mulambda.errors import RequestTimeout, TransportError
from mulambda.executors.probe import ProbeServer, apply_client_record, measure_latency
from mulambda.harness.infra import free_port
from mulambda.kafka import Record
from mulambda.wire.events import ClientRegistration

pytestmark = pytest.mark.unit


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _silent_server() -> tuple[asyncio.Server, list[asyncio.StreamWriter], int]:
    """A server that accepts connections and then never sends a byte."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, held, server.sockets[0].getsockname()[1]


async def test_probe_server_answers_with_its_client_id(session: aiohttp.ClientSession) -> None:
    async with ProbeServer(client_id="cl-probe") as server:
        assert server.url == f"http://127.0.0.1:{server.port}/probe"
        async with session.get(server.url) as response:
            assert response.status == 200
            assert await response.json() == {"ok": True, "client_id": "cl-probe"}
        async with session.get(server.url.replace("/probe", "/other")) as response:
            assert response.status == 404
        assert server.requests == 1


async def test_probe_server_wait_returns_after_stop_and_stop_is_idempotent() -> None:
    server = ProbeServer()
    await server.start()
    waiter = asyncio.create_task(server.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await server.stop()
    await asyncio.wait_for(waiter, 1)
    await server.stop()


async def test_wildcard_host_advertises_loopback() -> None:
    async with ProbeServer("0.0.0.0", 0) as server:  # noqa: S104 - the case under test
        assert server.url.startswith("http://127.0.0.1:")
    server = ProbeServer("0.0.0.0", 0, advertise_host="10.1.2.3")  # noqa: S104
    async with server:
        assert server.url == f"http://10.1.2.3:{server.port}/probe"


async def test_busy_port_is_a_clean_transport_error() -> None:
    async with ProbeServer() as first:
        with pytest.raises(TransportError, match="cannot bind"):
            await ProbeServer(port=first.port).start()


async def test_measure_latency_times_a_round_trip(session: aiohttp.ClientSession) -> None:
    async with ProbeServer() as server:
        figures = [await measure_latency(session, server.url, 2.0) for _ in range(5)]
        assert server.requests == 5
    assert all(0 < ms < 2000 for ms in figures)


async def test_measure_latency_times_out_cleanly_against_a_silent_socket(
    session: aiohttp.ClientSession,
) -> None:
    server, held, port = await _silent_server()
    try:
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match=r"no answer within 0\.3s"):
            await measure_latency(session, f"http://127.0.0.1:{port}/probe", 0.3)
        elapsed = time.monotonic() - started
        assert held, "the silent server never saw the connection"
        assert 0.25 < elapsed < 5
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_measure_latency_refused_and_non_2xx_are_transport_errors(
    session: aiohttp.ClientSession,
) -> None:
    with pytest.raises(TransportError, match=r"probe http://127\.0\.0\.1"):
        await measure_latency(session, f"http://127.0.0.1:{free_port()}/probe", 2.0)
    async with ProbeServer() as server:
        with pytest.raises(TransportError, match="answered HTTP 404"):
            await measure_latency(session, server.url + "x", 2.0)


def _record(key: str, value: ClientRegistration | None) -> Record[ClientRegistration]:
    return Record("t", 0, 0, key.encode(), value)


def test_client_records_fold_latest_wins_and_tombstones_remove() -> None:
    clients: dict[str, ClientRegistration] = {}
    first = ClientRegistration(client_id="a", probe_url="http://h:1/probe")
    moved = ClientRegistration(client_id="a", probe_url="http://h:2/probe", zone="z")
    other = ClientRegistration(client_id="b", probe_url="http://h:3/probe")
    for key, value in [("a", first), ("b", other), ("a", moved), ("b", None), ("zz", None)]:
        apply_client_record(clients, _record(key, value))
    assert clients == {"a": moved}
