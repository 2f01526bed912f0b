"""The router under overload: executors far slower than the load still leave every request
answered by its deadline (with an error), and the router holds a bounded queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mulambda.emulator import ExecutorServer, SyntheticModel
from mulambda.kafka import Producer
from mulambda.routing.router import Router
from mulambda.selection.selector import Selector
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import InferenceStatus, deadline_in
from tests.conftest import Infra
from tests.integration.routing.support import (
    FAST,
    TIME_SCALE,
    inference_request,
    new_traits,
    publish,
    register,
    results_of,
    uid,
    until,
)

pytestmark = pytest.mark.integration

CALL_S = 5.0
"""Every call of the slow executor takes this long: longer than any deadline here."""


class _Slow(SyntheticModel):
    async def predict(self, signature_name: str, payload: Any, *, row: bool) -> Any:
        await asyncio.sleep(CALL_S)
        return await super().predict(signature_name, payload, row=row)


@pytest_asyncio.fixture(loop_scope="session")
async def slow() -> AsyncIterator[ExecutorServer]:
    async with ExecutorServer(
        "127.0.0.1", 0, {FAST.name: _Slow(FAST, time_scale=TIME_SCALE)}
    ) as server:
        assert await server.wait_loaded(5)
        yield server


async def test_requests_beyond_the_routing_slots_are_answered_by_their_deadlines(
    infra: Infra, cat: Catalog, selector: Selector, producer: Producer, slow: ExecutorServer
) -> None:
    traits = new_traits()
    await register(producer, cat, selector, traits, slow.url)
    router = Router(
        infra.kafka("router-backpressure"),
        cat,
        router_id=uid("router"),
        group_id=uid("router-group"),
        concurrency=2,
        queue_limit=50,
    )
    requests = [inference_request(cat, traits, deadline=deadline_in(2.5)) for _ in range(20)]
    async with (
        results_of(infra, cat.name(Topic.INFERENCE_RESULTS)) as reader,
        router,
    ):
        started = time.monotonic()
        for request in requests:
            await publish(producer, cat, request)
        got = await reader.collect([r.correlation_id for r in requests], timeout_s=10)
        elapsed = time.monotonic() - started
    assert elapsed < 2.5 + 1.5, f"answers came {elapsed:.1f}s after the first request"
    reasons = [results[0].error or "" for results in got.values()]
    assert all(len(results) == 1 for results in got.values())
    assert all(r.status is InferenceStatus.ERROR for results in got.values() for r in results)
    overloaded = [r for r in reasons if r.startswith("router overloaded")]
    assert len(overloaded) >= len(requests) - 2, reasons
    assert router.registry.get_sample_value("mulambda_router_overloaded_total") == len(overloaded)


class _Steady(SyntheticModel):
    """Answers every call after ``call_s``, whatever the load: a known service time."""

    call_s = 0.4

    async def predict(self, signature_name: str, payload: Any, *, row: bool) -> Any:
        await asyncio.sleep(self.call_s)
        return await super().predict(signature_name, payload, row=row)


class _Slower(_Steady):
    call_s = 1.5


async def _server(model: SyntheticModel) -> ExecutorServer:
    server = ExecutorServer("127.0.0.1", 0, {FAST.name: model})
    await server.start()
    assert await server.wait_loaded(5)
    return server


async def test_requests_the_slot_queue_cannot_reach_in_time_are_shed_at_once(
    infra: Infra, cat: Catalog, selector: Selector, producer: Producer
) -> None:
    server = await _server(_Steady(FAST, time_scale=TIME_SCALE))
    try:
        traits = new_traits()
        await register(producer, cat, selector, traits, server.url)
        router = Router(
            infra.kafka("router-shedding"),
            cat,
            router_id=uid("router"),
            group_id=uid("router-group"),
            concurrency=1,
            queue_limit=50,
        )
        async with results_of(infra, cat.name(Topic.INFERENCE_RESULTS)) as reader, router:
            # One route teaches the router how long a slot is held (0.4 s here).
            warm = inference_request(cat, traits, deadline=deadline_in(10))
            await publish(producer, cat, warm)
            first = await reader.collect([warm.correlation_id], timeout_s=15)
            assert first[warm.correlation_id][0].status is InferenceStatus.OK
            # 20 at once with 2 s deadlines: one slot serves about 4 of them in time.
            burst = [inference_request(cat, traits, deadline=deadline_in(2.0)) for _ in range(20)]
            started = time.monotonic()
            for request in burst:
                await publish(producer, cat, request)
            got = await reader.collect([r.correlation_id for r in burst], timeout_s=10)
        shed = {
            key: reader.received[key] - started
            for key, results in got.items()
            if (results[0].error or "").startswith("router overloaded: all 1 routing slots busy")
        }
    finally:
        await server.stop()
    assert len(shed) >= 10, [r[0].error for r in got.values()]
    # Told at once, not at their deadlines (2 s).
    assert max(shed.values()) < 1.5, shed
    assert all(len(results) == 1 for results in got.values())
    assert router.registry.get_sample_value("mulambda_router_shed_total") == len(shed)
    served = [r for results in got.values() for r in results if r.status is InferenceStatus.OK]
    assert served, "the requests the slot could reach were served"


async def test_a_request_no_executor_can_serve_in_time_is_answered_at_once(
    infra: Infra, cat: Catalog, selector: Selector, producer: Producer, router: Router
) -> None:
    server = await _server(_Slower(FAST, time_scale=TIME_SCALE))
    try:
        traits = new_traits()
        executor_id = await register(producer, cat, selector, traits, server.url)
        entry = selector.view.get(executor_id)
        assert entry is not None
        adaptive = {"policy": "adaptive"}
        async with results_of(infra, cat.name(Topic.INFERENCE_RESULTS)) as reader:
            # Nothing learned yet: the call is made and times out at the deadline. The
            # router reports it failed, so the selector stops counting it as load long
            # before its pending timeout (30 s).
            blind = inference_request(cat, traits, deadline=deadline_in(0.8), **adaptive)
            await publish(producer, cat, blind)
            timed_out = await reader.collect([blind.correlation_id], timeout_s=10)
            assert timed_out[blind.correlation_id][0].status is InferenceStatus.ERROR
            await until(lambda: entry.load == 0, "the failed call to stop counting", 5.0)
            assert entry.service_ms is None  # a timeout teaches no service time
            # One served request teaches the selector the 1.5 s service time ...
            warm = inference_request(cat, traits, deadline=deadline_in(10), **adaptive)
            await publish(producer, cat, warm)
            first = await reader.collect([warm.correlation_id], timeout_s=15)
            assert first[warm.correlation_id][0].status is InferenceStatus.OK
            await until(lambda: entry.service_ms is not None, "the service time learned")
            calls = server.stats()["requests"]
            # ... so one with 1 s left is told at once that nobody can make it.
            hopeless = inference_request(cat, traits, deadline=deadline_in(1.0), **adaptive)
            started = time.monotonic()
            await publish(producer, cat, hopeless)
            got = await reader.collect([hopeless.correlation_id], timeout_s=10)
            answered_s = reader.received[hopeless.correlation_id] - started
    finally:
        await server.stop()
    result = got[hopeless.correlation_id][0]
    assert result.status is InferenceStatus.ERROR
    assert result.error is not None
    assert result.error.startswith("no candidate (eliminated by deadline)"), result.error
    assert "no candidate can answer before the deadline" in result.error
    assert result.attempts == 0
    assert answered_s < 0.9, f"answered {answered_s:.2f}s after publishing"
    assert server.stats()["requests"] == calls  # the executor was not called
