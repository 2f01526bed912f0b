"""OIPClient against tiny fake OIP servers (URLs, readiness, every error), and
:func:`infer_on` dispatching by protocol (the TF Serving side against the emulator)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mulambda.emulator import ExecutorServer, SyntheticModel
from mulambda.emulator.profiles import profile_by_name
from mulambda.errors import ConfigurationError
from mulambda.executors.dispatch import infer_on
from mulambda.executors.oip import OIPClient
from mulambda.protocols.oip import oip_model_path
from mulambda.protocols.tfserving import (
    BadRequest,
    DeadlineExceeded,
    ExecutorInternalError,
    ExecutorUnavailable,
    GarbageResponse,
    ModelNotFound,
    ResourceExhausted,
    TFServingError,
)
from mulambda.wire.events import ExecutorProtocol, ModelState

pytestmark = pytest.mark.unit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ANSWER = {
    "model_name": "m",
    "outputs": [{"name": "y", "shape": [1, 1], "datatype": "INT64", "data": [2]}],
}


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[str]:
    """A catch-all aiohttp server on an ephemeral port; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def test_model_paths() -> None:
    assert oip_model_path("wine") == "/v2/models/wine"
    assert oip_model_path("wine", version=3, suffix="/infer") == "/v2/models/wine/versions/3/infer"
    assert oip_model_path("a b", version="v1") == "/v2/models/a%20b/versions/v1"
    for bad in ("", "a/b"):
        with pytest.raises(ConfigurationError):
            oip_model_path(bad)
    with pytest.raises(ConfigurationError):
        oip_model_path("wine", version=-1)


async def test_infer_posts_tensors_and_converts_back() -> None:
    seen: list[tuple[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, await request.json()))
        return web.json_response(ANSWER)

    async with fake_server(handler) as url, OIPClient(url) as client:
        answer = await client.infer("predict", "m", {"instances": [[1.0, 2.0]]}, version=4)
        assert answer == {"predictions": [[2]]}
        oip = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
        assert await client.infer("predict", "m", oip) == ANSWER
        with pytest.raises(BadRequest):
            await client.infer("classify", "m", oip)
    assert seen == [
        (
            "/v2/models/m/versions/4/infer",
            {
                "inputs": [
                    {"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}
                ]
            },
        ),
        ("/v2/models/m/infer", oip),
    ]


@pytest.mark.parametrize(
    ("status", "error", "retriable"),
    [
        (400, BadRequest, False),
        (404, ModelNotFound, True),
        (422, BadRequest, False),
        (429, ResourceExhausted, True),
        (500, ExecutorInternalError, True),
        (503, ExecutorUnavailable, True),
        (504, DeadlineExceeded, True),
    ],
)
async def test_error_statuses_map_like_tf_serving(
    status: int, error: type[TFServingError], retriable: bool
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "nope"}, status=status)

    async with fake_server(handler) as url, OIPClient(url) as client:
        with pytest.raises(error) as raised:
            await client.infer("predict", "m", {"instances": [1]})
    assert raised.value.status == status
    assert raised.value.retriable is retriable
    assert raised.value.server_message == "nope"


async def test_garbage_answers_and_closed_ports() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"model_name": "m"})

    async with fake_server(handler) as url, OIPClient(url) as client:
        with pytest.raises(GarbageResponse, match="lacks 'outputs'"):
            await client.infer("predict", "m", {"instances": [1]})
        with pytest.raises(GarbageResponse, match="lacks 'name'"):
            await client.metadata("m")
    async with fake_server(handler) as url:
        pass  # closed again: nothing listens there now
    async with OIPClient(url, timeout_s=2.0) as client:
        with pytest.raises(ExecutorUnavailable) as down:
            await client.server_ready()
    assert down.value.status is None


@pytest.mark.parametrize(
    ("server", "model", "state"),
    [
        (200, 200, ModelState.AVAILABLE),
        (200, 400, ModelState.LOADING),
        (200, 503, ModelState.LOADING),
        (503, 200, ModelState.UNKNOWN),
    ],
)
async def test_status_from_ready_endpoints(server: int, model: int, state: ModelState) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        status = server if request.path == "/v2/health/ready" else model
        assert request.path in ("/v2/health/ready", "/v2/models/m/versions/2/ready")
        return web.Response(status=status)  # empty bodies, as MLServer sends

    async with fake_server(handler) as url, OIPClient(url) as client:
        (entry,) = await client.status("m", 2)
    assert (entry.version, entry.state) == (2, state)


async def test_an_unknown_model_is_not_found_and_other_errors_raise() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v2/health/ready":
            return web.Response(status=200)
        if request.path == "/v2/models/gone/ready":
            return web.json_response({"error": "Model gone not found"}, status=404)
        return web.Response(status=500, text="boom")

    async with fake_server(handler) as url, OIPClient(url) as client:
        with pytest.raises(ModelNotFound):
            await client.status("gone")
        with pytest.raises(ExecutorInternalError):
            await client.model_ready("broken")


async def test_a_shared_session_stays_open() -> None:
    async with aiohttp.ClientSession() as session:
        client = OIPClient("http://127.0.0.1:1", session=session)
        assert client.started
        await client.stop()
        await client.stop()
        assert not session.closed


async def test_infer_on_dispatches_by_protocol() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.path == "/v2/models/m/infer"
        return web.json_response(ANSWER)

    fast = profile_by_name("FastGood")
    models = {fast.name: SyntheticModel(fast, time_scale=0.0, seed=1)}
    async with (
        fake_server(handler) as oip_url,
        ExecutorServer("127.0.0.1", 0, models) as tfs,
        aiohttp.ClientSession() as session,
    ):
        assert await tfs.wait_loaded(5)
        rows = {"instances": [[1.0, 2.0]]}
        over_oip = await infer_on(ExecutorProtocol.OIP_V2, oip_url, session, "predict", "m", rows)
        assert over_oip == {"predictions": [[2]]}
        plain = await infer_on(
            ExecutorProtocol.TFSERVING_REST, tfs.url, session, "predict", fast.name, rows
        )
        assert plain["predictions"][0]["model"] == fast.name
        oip = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}
        over_tfs = await infer_on(
            ExecutorProtocol.TFSERVING_REST, tfs.url, session, "predict", fast.name, oip
        )
        assert over_tfs["model_name"] == fast.name
        assert {t["name"] for t in over_tfs["outputs"]} == {"confidence", "model"}
        assert not session.closed
