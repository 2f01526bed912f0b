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
