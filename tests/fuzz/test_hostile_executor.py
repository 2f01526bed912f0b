"""A hostile executor: garbage, huge and endless bodies, silence, redirects, NaN.

First the call the router makes per candidate (:func:`mulambda.executors.dispatch.infer_on`,
both protocols) against generated answers: it returns a usable document or raises a typed
executor error, never anything else, and never a document holding a non-finite number.
Then through the suite's real router: requests for executors that misbehave each way get
an error result naming the problem by their deadline, and the router serves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mulambda.executors.dispatch import infer_on
from mulambda.executors.registration import register_executor
from mulambda.kafka import read_until_key
from mulambda.protocols.tfserving import TFServingError
from mulambda.wire.catalog import Topic
from mulambda.wire.events import (
    ExecutorProtocol,
    ExecutorRegistration,
    InferenceRequest,
    InferenceResult,
    InferenceStatus,
    Traits,
    deadline_in,
)
from mulambda.wire.signatures import executor_key
from tests.conftest import Infra
from tests.fuzz.conftest import SECRET, Platform
from tests.fuzz.hostile import SERVED_TRAITS
from tests.strategies import json_values

HUGE_BYTES = 65 * 1024 * 1024
"""Past the clients' 64 MiB response bound."""


class Nasty:
    """An aiohttp server whose answer depends on the model name in the path."""

    def __init__(self) -> None:
        self.garbage = b"{}"
        """What the ``garbage`` model answers (set per example)."""
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        """Set on exit: silent and endless answers end, so no handler outlives the server."""
        self.url = ""

    async def __aenter__(self) -> Nasty:
        app = web.Application(client_max_size=1024**2)
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        await asyncio.sleep(0.1)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        path = request.path
        if "garbage" in path:
            return web.Response(body=self.garbage, content_type="application/json")
        if "nan" in path:
            return web.Response(
                body=b'{"predictions": [[0.5, NaN]]}', content_type="application/json"
            )
        if "redirect" in path:
            raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/v1/models/x:predict")
        if "silent" in path:
            await self._closing.wait()
            return web.Response(status=503)
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        endless, sent = "endless" in path, 0
        with contextlib.suppress(ConnectionError):
            while not self._closing.is_set() if endless else sent <= HUGE_BYTES:
                await response.write(b" " * 65536)
                sent += 65536
                if endless:
                    await asyncio.sleep(0.05)
        return response


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def nasty() -> AsyncIterator[Nasty]:
    async with Nasty() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # the standard library: integers of any size


ANSWERS = st.one_of(
    st.binary(max_size=200),
    json_values().map(_dumps),
    st.dictionaries(
        st.sampled_from(["predictions", "outputs", "model_name", "error"]), json_values()
    ).map(_dumps),
    json_values().map(lambda v: _dumps({"predictions": [v, 0.5]}).replace(b"0.5", b"NaN")),
    # Open Inference Protocol answers with odd tensors.
    st.lists(
        st.fixed_dictionaries(
            {"name": json_values(), "shape": json_values(), "data": json_values()},
            optional={"datatype": st.sampled_from(["FP64", "INT64", "BYTES", "BOOL", "FP32"])},
        ),
        max_size=3,
    ).map(lambda tensors: _dumps({"model_name": "m", "outputs": tensors})),
)


@given(body=ANSWERS, protocol=st.sampled_from(list(ExecutorProtocol)))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
async def test_any_answer_is_a_document_or_a_typed_error(
    nasty: Nasty, session: aiohttp.ClientSession, body: bytes, protocol: ExecutorProtocol
) -> None:
    nasty.garbage = body
    reason: str | None = None
    try:
        document = await infer_on(
            protocol, nasty.url, session, "predict", "garbage", {"instances": [1]}, timeout_s=5
        )
    except TFServingError as exc:
        reason = exc.reason
    else:
        assert isinstance(document, dict)
        assert _finite(document)
        return
    assert reason


@pytest.mark.parametrize(
    ("model", "fragment", "within_s"),
    [
        ("nan", "non-finite number", 2),
        ("redirect", "not followed", 2),
        ("huge", "exceeds 67108864 bytes", 20),
        ("endless", "no answer within 1s", 3),
        ("silent", "no answer within 1s", 3),
    ],
)
async def test_each_misbehaviour_is_a_typed_error_in_time(
    nasty: Nasty, session: aiohttp.ClientSession, model: str, fragment: str, within_s: float
) -> None:
    started = time.monotonic()
    with pytest.raises(TFServingError, match=fragment):
        await infer_on(
            ExecutorProtocol.TFSERVING_REST,
            nasty.url,
            session,
            "predict",
            model,
            {"instances": [1]},
            timeout_s=1 if model in ("endless", "silent") else 30,
        )
    assert time.monotonic() - started < within_s


async def test_the_router_answers_requests_for_misbehaving_executors_with_errors(
    infra: Infra, platform: Platform, nasty: Nasty
) -> None:
    behaviours = {
        "nan": "non-finite number",
        "redirect": "not followed",
        "huge": "exceeds",
        "endless": "no answer within",
        "silent": "no answer within",
        "garbage": "not JSON",
    }
    nasty.garbage = b"<html>not json</html>"
    catalog = platform.catalog
    for name in behaviours:
        executor_id = f"fz-nasty-{name}"
        registration = ExecutorRegistration(
            executor_id=executor_id,
            model_name=name,
            traits=Traits(model_type="fz-nasty", input_format=name, output_format="c"),
            accuracy=0.5,
            endpoint=nasty.url,
            heartbeat_interval_s=300,
        )
        await register_executor(
            platform.producer,
            catalog,
            registration,
            signing_key=executor_key(SECRET, executor_id),
        )
    give_up = time.monotonic() + 10
    while any(platform.selector.view.get(f"fz-nasty-{n}") is None for n in behaviours):
        assert time.monotonic() < give_up
        await asyncio.sleep(0.05)

    async def ask(traits: Traits, deadline_s: float) -> InferenceResult:
        request = InferenceRequest(
            reply_topic=catalog.name(Topic.INFERENCE_RESULTS),
            deadline=deadline_in(deadline_s),
            client_id="fz-nasty-client",
            traits=traits,
            body={"instances": [1]},
        )
        async with read_until_key(
            infra.kafka(), request.reply_topic, request.correlation_id, InferenceResult
        ) as waiter:
            await platform.producer.send_and_wait(
                catalog.name(Topic.INFERENCE_REQUESTS), request, key=request.client_id
            )
            return await waiter.result(deadline_s + 10)

    started = time.monotonic()
    results = await asyncio.gather(
        *(
            ask(Traits(model_type="fz-nasty", input_format=name, output_format="c"), 4.0)
            for name in behaviours
        )
    )
    for (name, fragment), result in zip(behaviours.items(), results, strict=True):
        assert result.status is InferenceStatus.ERROR, (name, result)
        assert result.error is not None
        assert fragment in result.error, (name, result.error)
        assert result.output is None
    assert time.monotonic() - started < 15  # each by its deadline (plus delivery)
    # And the router serves on.
    served = await ask(SERVED_TRAITS, 10.0)
    assert served.status is InferenceStatus.OK, served
    assert platform.router.ready
