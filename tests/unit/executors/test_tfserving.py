"""TFServingClient against ExecutorServer (every verb) and tiny fake servers (every error)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from mulambda.emulator import ExecutorServer, ServedModel, SyntheticModel
from mulambda.emulator.profiles import profile_by_name
from mulambda.errors import ConfigurationError, ExecutorError, MulambdaError
from mulambda.executors.tfserving import TFServingClient
from mulambda.harness.infra import free_port
from mulambda.protocols.tfserving import (
    BadRequest,
    DeadlineExceeded,
    ExecutorInternalError,
    ExecutorUnavailable,
    GarbageResponse,
    ModelNotFound,
    ModelVersionStatus,
    NonFiniteOutput,
    ResourceExhausted,
    TFServingError,
    Unimplemented,
    decode_finite_json,
    decode_json,
    encode_json,
    error_for_status,
    model_path,
    parse_model_status,
)
from mulambda.wire.codec import non_finite_path
from mulambda.wire.events import ModelState

pytestmark = pytest.mark.unit

FAST_BAD = profile_by_name("FastBad")
FAST_GOOD = profile_by_name("FastGood")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest_asyncio.fixture(scope="module")
async def executor() -> AsyncIterator[ExecutorServer]:
    models: dict[str, ServedModel | list[ServedModel]] = {
        "fast": [SyntheticModel(FAST_BAD, 1, 0.001), SyntheticModel(FAST_GOOD, 2, 0.001)],
        "predict-only": SyntheticModel(FAST_BAD, 1, 0.001, verbs=("predict",)),
        "my model": SyntheticModel(FAST_GOOD, 3, 0.001),  # needs URL quoting
    }
    async with ExecutorServer("127.0.0.1", 0, models, labels={"fast": {"stable": 1}}) as srv:
        assert await srv.wait_loaded(timeout_s=10)
        yield srv


@pytest_asyncio.fixture
async def client(executor: ExecutorServer) -> AsyncIterator[TFServingClient]:
    async with TFServingClient(executor.url, timeout_s=10) as c:
        yield c


@asynccontextmanager
async def fake_server(handler: Handler, prefix: str = "") -> AsyncIterator[str]:
    """A one-route aiohttp server on an ephemeral port; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{prefix}"
    finally:
        await runner.cleanup()


def answering(status: int, body: bytes, content_type: str = "application/json") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, body=body, content_type=content_type)

    return handler


# --- every verb against the executor -------------------------------------------------


async def test_predict_with_instances_inputs_and_body(client: TFServingClient) -> None:
    row = await client.predict("fast", instances=[0, {"feature": 1}], version=1)
    assert row == {
        "predictions": [
            {"confidence": pytest.approx(FAST_BAD.confidence(0)), "model": "FastBad"},
            {"confidence": pytest.approx(FAST_BAD.confidence(1)), "model": "FastBad"},
        ]
    }
    columnar = await client.predict("fast", inputs={"feature": [2]}, label="stable")
    assert columnar == {
        "outputs": {"confidence": [pytest.approx(FAST_BAD.confidence(2))], "model": ["FastBad"]}
    }
    whole = await client.predict("fast", {"instances": [0]}, signature_name="serving_default")
    assert whole["predictions"][0]["model"] == "FastGood"  # highest version


async def test_predict_quotes_model_names(client: TFServingClient) -> None:
    answer = await client.predict("my model", instances=[0])
    assert answer["predictions"][0]["model"] == "FastGood"
    statuses = await client.status("my model")
    assert [s.version for s in statuses] == [3]


async def test_classify_and_regress(client: TFServingClient) -> None:
    classified = await client.classify("fast", examples=[{"feature": 0}], version=2)
    assert classified == {"results": [[["FastGood", pytest.approx(FAST_GOOD.confidence(0))]]]}
    regressed = await client.regress(
        "fast", examples=[{}, {"feature": 2}], context={"feature": 1}, label="stable"
    )
    assert regressed == {
        "results": [pytest.approx(FAST_BAD.confidence(1)), pytest.approx(FAST_BAD.confidence(2))]
    }
    by_body = await client.regress("fast", {"examples": [{"feature": 0}]}, version=1)
    assert by_body == {"results": [pytest.approx(FAST_BAD.confidence(0))]}


async def test_infer_is_the_generic_form(client: TFServingClient) -> None:
    answer = await client.infer("predict", "fast", {"instances": [1]}, version=1)
    assert answer["predictions"][0]["confidence"] == pytest.approx(FAST_BAD.confidence(1))
    answer = await client.infer("classify", "fast", {"examples": [{"feature": 1}]}, version=1)
    assert answer["results"][0][0][0] == "FastBad"


async def test_status_is_parsed(client: TFServingClient) -> None:
    assert await client.status("fast") == [
        ModelVersionStatus(2, ModelState.AVAILABLE),
        ModelVersionStatus(1, ModelState.AVAILABLE),
    ]
    assert await client.status("fast", version=1) == [ModelVersionStatus(1, ModelState.AVAILABLE)]
    assert await client.status("fast", label="stable") == [
        ModelVersionStatus(1, ModelState.AVAILABLE)
    ]


async def test_metadata(client: TFServingClient) -> None:
    document = await client.metadata("fast", version=1)
    assert document["model_spec"] == {"name": "fast", "signature_name": "", "version": "1"}
    assert "serving_default" in document["metadata"]["signature_def"]["signature_def"]
    labelled = await client.metadata("fast", label="stable")
    assert labelled["model_spec"]["version"] == "1"


async def test_non_finite_floats_travel_as_tokens(client: TFServingClient) -> None:
    # orjson would write null for these; TF Serving wants NaN/Infinity tokens.
    body = {"instances": [{"feature": 0, "data": [math.nan, math.inf, None]}]}
    answer = await client.predict("fast", body, version=1)
    assert answer["predictions"][0]["model"] == "FastBad"


# --- errors the executor produces ----------------------------------------------------


@pytest.mark.parametrize(
    ("call", "cls", "status", "retriable", "server_message"),
    [
        (
            lambda c: c.predict("nope", instances=[0]),
            ModelNotFound,
            404,
            True,
            "Servable not found for request: Latest(nope)",
        ),
        (
            lambda c: c.status("fast", version=7),
            ModelNotFound,
            404,
            True,
            "Could not find version 7 of model fast",
        ),
        (
            lambda c: c.metadata("nope"),
            ModelNotFound,
            404,
            True,
            "Servable not found for request: Latest(nope)",
        ),
        (
            lambda c: c.predict("fast", {}),
            BadRequest,
            400,
            False,
            "Missing 'inputs' or 'instances' key",
        ),
        (
            lambda c: c.predict("fast", instances=[0], label="beta"),
            BadRequest,
            400,
            False,
            "Unrecognized servable version label: beta",
        ),
        (
            lambda c: c.predict("fast", instances=[0], signature_name="other"),
            BadRequest,
            400,
            False,
            'Serving signature name: "other" not found in signature def',
        ),
        (
            lambda c: c.classify("predict-only", examples=[{}]),
            Unimplemented,
            501,
            False,
            "Model predict-only version 1 does not implement classify",
        ),
    ],
)
async def test_executor_errors_are_typed(
    client: TFServingClient,
    call: Callable[[TFServingClient], Awaitable[Any]],
    cls: type[TFServingError],
    status: int,
    retriable: bool,
    server_message: str,
) -> None:
    with pytest.raises(cls) as caught:
        await call(client)
    error = caught.value
    assert isinstance(error, ExecutorError)
    assert isinstance(error, MulambdaError)
    assert error.status == status
    assert error.retriable is retriable
    assert error.server_message == server_message
    assert error.url is not None
    assert error.url.startswith(client.base_url)
    assert server_message in str(error)


# --- errors only fake servers produce ------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls", "retriable"),
    [
        (400, BadRequest, False),
        (403, BadRequest, False),
        (404, ModelNotFound, True),
        (408, DeadlineExceeded, True),
        (429, ResourceExhausted, True),
        (500, ExecutorInternalError, True),
        (501, Unimplemented, False),
        (502, ExecutorUnavailable, True),
        (503, ExecutorUnavailable, True),
        (504, DeadlineExceeded, True),
        (507, ExecutorInternalError, True),
    ],
)
async def test_http_status_mapping(status: int, cls: type[TFServingError], retriable: bool) -> None:
    async with (
        fake_server(answering(status, b'{"error": "boom \\"quoted\\""}')) as url,
        TFServingClient(url) as c,
    ):
        with pytest.raises(cls) as caught:
            await c.predict("m", instances=[1])
    assert type(caught.value) is cls
    assert caught.value.status == status
    assert caught.value.retriable is retriable
    assert caught.value.server_message == 'boom "quoted"'


async def test_error_bodies_that_are_not_json_still_give_a_message() -> None:
    html = b"<html><body>502 Bad Gateway</body></html>"
    async with fake_server(answering(503, html, "text/html")) as url, TFServingClient(url) as c:
        with pytest.raises(ExecutorUnavailable) as caught:
            await c.status("m")
    assert caught.value.status == 503
    assert caught.value.server_message == html.decode()


@pytest.mark.parametrize(
    ("body", "call"),
    [
        (b"<html>hello</html>", lambda c: c.predict("m", instances=[1])),
        (b"", lambda c: c.predict("m", instances=[1])),
        (b"[1, 2]", lambda c: c.predict("m", instances=[1])),
        (b'{"results": []}', lambda c: c.predict("m", instances=[1])),
        (b'{"predictions": []}', lambda c: c.classify("m", examples=[{}])),
        (b'{"error": "odd but 200"}', lambda c: c.regress("m", examples=[{}])),
        (b'{"model_version_status": "no"}', lambda c: c.status("m")),
        (b'{"model_version_status": [{"state": "AVAILABLE"}]}', lambda c: c.status("m")),
        (b'{"model_version_status": [{"version": "x1"}]}', lambda c: c.status("m")),
        (b'{"model_version_status": [7]}', lambda c: c.status("m")),
        (b'{"metadata": {}}', lambda c: c.metadata("m")),
    ],
)
async def test_garbage_success_bodies(
    body: bytes, call: Callable[[TFServingClient], Awaitable[Any]]
) -> None:
    async with fake_server(answering(200, body)) as url, TFServingClient(url) as c:
        with pytest.raises(GarbageResponse) as caught:
            await call(c)
    assert caught.value.retriable is True
    assert caught.value.status == 200


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"predictions": [1.5, NaN]}', "predictions[1] = nan"),
        (b'{"outputs": {"y": [[0.1, Infinity]]}}', "outputs.y[0][1] = inf"),
        (b'{"predictions": [-1e400]}', "predictions[0] = -inf"),
    ],
)
async def test_non_finite_numbers_in_answers_are_reported_not_nulled(
    body: bytes, where: str
) -> None:
    # A result is JSON, which cannot carry them: writing null would hide them.
    async with fake_server(answering(200, body)) as url, TFServingClient(url) as c:
        with pytest.raises(NonFiniteOutput) as caught:
            await c.predict("m", instances=[1])
    assert where in caught.value.reason
    assert caught.value.retriable is True
    assert caught.value.status == 200


def test_non_finite_path_and_the_finite_decoder() -> None:
    assert non_finite_path({"a": [1, 2.5, {"b": None}], "c": "NaN"}) is None
    assert non_finite_path([[0.0], [math.nan]]) == "[1][0] = nan"
    assert non_finite_path(-math.inf) == "<root> = -inf"
    assert decode_finite_json(b'{"predictions": [1.5]}') == {"predictions": [1.5]}
    with pytest.raises(ValueError, match="nested too deeply"):
        decode_finite_json(b"[" * 100_000 + b"]" * 100_000)
    # Status documents keep TF Serving's tokens (nothing in them is a result).
    assert math.isnan(decode_json(b"[NaN]")[0])


async def test_unknown_states_parse_as_unknown() -> None:
    body = b'{"model_version_status": [{"version": 4, "state": "HIBERNATING"}]}'
    async with fake_server(answering(200, body)) as url, TFServingClient(url) as c:
        assert await c.status("m") == [ModelVersionStatus(4, ModelState.UNKNOWN)]


async def test_oversized_responses_are_refused() -> None:
    body = b'{"predictions": [' + b",".join([b"1"] * 1000) + b"]}"
    async with fake_server(answering(200, body)) as url:
        async with TFServingClient(url, max_response_bytes=100) as c:
            with pytest.raises(GarbageResponse, match="exceeds 100"):
                await c.predict("m", instances=[1])
        async with TFServingClient(url, max_response_bytes=len(body)) as c:
            assert len((await c.predict("m", instances=[1]))["predictions"]) == 1000


async def test_closed_port_is_unavailable() -> None:
    async with TFServingClient(f"http://127.0.0.1:{free_port()}") as c:
        with pytest.raises(ExecutorUnavailable) as caught:
            await c.predict("m", instances=[1])
    assert caught.value.status is None
    assert caught.value.retriable is True


async def test_connection_reset_is_unavailable() -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.transport.abort()  # RST/close without an answer

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with TFServingClient(f"http://127.0.0.1:{port}") as c:
            with pytest.raises(ExecutorUnavailable) as caught:
                await c.status("m")
        assert caught.value.status is None
    finally:
        server.close()
        await server.wait_closed()


async def test_broken_http_is_garbage() -> None:
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HELLO THERE\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with TFServingClient(f"http://127.0.0.1:{port}") as c:
            with pytest.raises(GarbageResponse, match="malformed HTTP") as caught:
                await c.status("m")
        assert caught.value.retriable is True
        assert caught.value.status is None
    finally:
        server.close()
        await server.wait_closed()


async def test_slow_endpoint_is_deadline_exceeded() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"predictions": []})

    async with fake_server(slow) as url:
        async with TFServingClient(url, timeout_s=0.2) as c:
            started = time.perf_counter()
            with pytest.raises(DeadlineExceeded) as caught:
                await c.predict("m", instances=[1])
            assert time.perf_counter() - started < 3
            assert caught.value.status is None
            assert caught.value.retriable is True
        async with TFServingClient(url, timeout_s=30) as c:
            started = time.perf_counter()
            with pytest.raises(DeadlineExceeded):
                await c.status("m", timeout_s=0.2)  # per-call bound wins
            assert time.perf_counter() - started < 3
            with pytest.raises(DeadlineExceeded):
                await c.status("m", timeout_s=0)  # nothing left of a deadline
        release.set()


# --- pooling -------------------------------------------------------------------------


async def test_connector_limit_bounds_concurrency_and_connections_are_reused() -> None:
    active = 0
    peak = 0
    peers: set[Any] = set()

    async def tracked(request: web.Request) -> web.StreamResponse:
        nonlocal active, peak
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        return web.json_response({"predictions": [1]})

    async with fake_server(tracked) as url, TFServingClient(url, limit=2) as c:
        await asyncio.gather(*(c.predict("m", instances=[1]) for _ in range(8)))
        assert peak == 2
        assert len(peers) <= 2
        for _ in range(5):
            await c.predict("m", instances=[1])
        assert len(peers) <= 2  # keep-alive: no new connection per call


async def test_base_url_path_prefix_is_kept() -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(request.rel_url.raw_path)
        return web.json_response({"predictions": [1]})

    async with fake_server(record, prefix="/serving/") as url, TFServingClient(url) as c:
        await c.predict("m", instances=[1], version=3)
        await c.predict("a b", instances=[1], label="x y")
    assert seen == [
        "/serving/v1/models/m/versions/3:predict",
        "/serving/v1/models/a%20b/labels/x%20y:predict",
    ]


async def test_requests_carry_json_with_nan_tokens() -> None:
    bodies: list[bytes] = []

    async def record(request: web.Request) -> web.StreamResponse:
        assert request.content_type == "application/json"
        bodies.append(await request.read())
        return web.json_response({"predictions": [1]})

    async with fake_server(record) as url, TFServingClient(url) as c:
        await c.predict("m", instances=[[math.nan, None, 1.0]], signature_name="s")
    assert bodies == [b'{"instances":[[NaN,null,1.0]],"signature_name":"s"}']


# --- lifecycle and arguments ---------------------------------------------------------


async def test_lifecycle(executor: ExecutorServer) -> None:
    c = TFServingClient(executor.url)
    assert not c.started
    with pytest.raises(ConfigurationError, match="not started"):
        await c.status("fast")
    await c.start()
    await c.start()
    assert c.started
    assert len(await c.status("fast")) == 2
    await c.stop()
    await c.stop()
    assert not c.started
    with pytest.raises(ConfigurationError, match="not started"):
        await c.status("fast")
    await c.start()  # restartable
    assert len(await c.status("fast")) == 2
    await c.stop()


async def test_shared_session_is_not_closed(executor: ExecutorServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with TFServingClient(executor.url, session=session) as c:
            assert len(await c.status("fast")) == 2
        assert not session.closed
        async with TFServingClient(executor.url, session=session) as c:
            assert len(await c.status("fast")) == 2
    with pytest.raises(ConfigurationError, match="closed"):
        await TFServingClient(executor.url, session=session).start()


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.predict("m"),
        lambda c: c.predict("m", instances=[1], inputs=[1]),
        lambda c: c.predict("m", {"instances": [1]}, instances=[1]),
        lambda c: c.predict("m", instances=[1], version=1, label="x"),
        lambda c: c.predict("a/b", instances=[1]),
        lambda c: c.predict("a:b", instances=[1]),
        lambda c: c.predict("", instances=[1]),
        lambda c: c.predict("m", instances=[1], version=-1),
        lambda c: c.predict("m", instances=[1], label="x:y"),
        lambda c: c.classify("m"),
        lambda c: c.regress("m", {"examples": []}, examples=[{}]),
        lambda c: c.infer("explain", "m", {"instances": [1]}),
        lambda c: c.predict("m", instances=[b"raw bytes are not JSON"]),
    ],
)
async def test_bad_arguments_are_configuration_errors(
    call: Callable[[TFServingClient], Awaitable[Any]],
) -> None:
    async with TFServingClient(f"http://127.0.0.1:{free_port()}") as c:
        with pytest.raises(ConfigurationError):
            await call(c)


@pytest.mark.parametrize(
    "kwargs",
    [{"base_url": "ftp://x"}, {"timeout_s": 0}, {"limit": -1}, {"max_response_bytes": 0}],
)
def test_bad_client_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        TFServingClient(**{"base_url": "http://127.0.0.1:1", **kwargs})


# --- pure helpers --------------------------------------------------------------------


def test_model_path() -> None:
    assert model_path("m") == "/v1/models/m"
    assert model_path("m", version=0, suffix=":predict") == "/v1/models/m/versions/0:predict"
    assert (
        model_path("m", label="stable", suffix="/metadata") == "/v1/models/m/labels/stable/metadata"
    )
    assert model_path("a b%") == "/v1/models/a%20b%25"


def test_error_for_status_carries_everything() -> None:
    error = error_for_status(429, "slow down", url="http://x/v1/models/m:predict")
    assert isinstance(error, ResourceExhausted)
    assert (error.status, error.retriable, error.server_message) == (429, True, "slow down")
    assert error.reason == "HTTP 429 from http://x/v1/models/m:predict: slow down"


def test_default_status_and_explicit_none() -> None:
    assert BadRequest("x").status == 400
    assert ExecutorUnavailable("x").status == 503
    assert ExecutorUnavailable("x", status=None).status is None
    assert GarbageResponse("x").status is None


def test_parse_model_status_and_round_trip() -> None:
    entries = [
        ModelVersionStatus(3, ModelState.LOADING),
        ModelVersionStatus(2, ModelState.END, "NOT_FOUND", "gone"),
    ]
    document = {"model_version_status": [e.to_json() for e in entries]}
    assert document["model_version_status"][1] == {
        "version": "2",
        "state": "END",
        "status": {"error_code": "NOT_FOUND", "error_message": "gone"},
    }
    assert parse_model_status(document) == entries
    assert parse_model_status({"model_version_status": [{"version": 1}]}) == [
        ModelVersionStatus(1, ModelState.UNKNOWN)
    ]


def test_json_helpers() -> None:
    assert encode_json({"a": [1, None]}) == b'{"a":[1,null]}'
    assert encode_json([math.inf, -math.inf]) == b"[Infinity,-Infinity]"
    assert math.isnan(decode_json(b"[NaN]")[0])
    assert decode_json(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError, match="Expecting"):
        decode_json(b"{nope")
    # A null beside a type only orjson can write keeps orjson's output.
    when = datetime(2024, 1, 2, tzinfo=UTC)
    assert encode_json({"at": when, "x": None}) == b'{"at":"2024-01-02T00:00:00+00:00","x":null}'


async def test_redirects_are_not_followed() -> None:
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        if request.path.startswith("/elsewhere"):
            return web.json_response({"predictions": [1]})
        raise web.HTTPFound("/elsewhere")

    async with fake_server(handler) as url, TFServingClient(url) as c:
        with pytest.raises(GarbageResponse, match="redirect to /elsewhere not followed"):
            await c.predict("m", instances=[1])
    assert calls == ["/v1/models/m:predict"]


async def test_a_body_without_length_is_refused_once_past_the_bound() -> None:
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while sent < 10_000_000:
                await response.write(b" " * 65536)
                sent += 65536
        return response

    async with fake_server(endless) as url, TFServingClient(url, max_response_bytes=300_000) as c:
        with pytest.raises(GarbageResponse, match="exceeds 300000 bytes"):
            await c.predict("m", instances=[1])
    assert sent < 10_000_000  # refused while streaming, not after buffering it all
