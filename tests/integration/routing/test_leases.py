"""Selection leases against real Kafka: requests of a kind share selections, the slots
not spent are released to the selector, and a registration ends a lease at once."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mulambda.emulator import ExecutorServer
from mulambda.kafka import Producer
from mulambda.routing.router import Router
from mulambda.selection.selector import Selector
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import InferenceResult, InferenceStatus, Traits
from tests.conftest import Infra
from tests.integration.routing.support import (
    inference_request,
    new_traits,
    publish,
    register,
    results_of,
    uid,
    until,
)

pytestmark = pytest.mark.integration


def _leasing_router(infra: Infra, cat: Catalog, max_age_s: float) -> Router:
    return Router(
        infra.kafka("router-test"),
        cat,
        router_id=uid("router"),
        group_id=uid("leasing-group"),
        selection_timeout_s=5.0,
        call_timeout_s=5.0,
        lease_slots=16,
        lease_max_age_s=max_age_s,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def leasing_router(infra: Infra, cat: Catalog, selector: Selector) -> AsyncIterator[Router]:
    """Leases of up to 16 slots, spent within a second."""
    async with _leasing_router(infra, cat, 1.0) as worker:
        yield worker


@pytest_asyncio.fixture(loop_scope="session")
async def lasting_router(infra: Infra, cat: Catalog, selector: Selector) -> AsyncIterator[Router]:
    """Leases that outlive the test unless something ends them."""
    async with _leasing_router(infra, cat, 60.0) as worker:
        yield worker


def _metric(router: Router, name: str) -> float:
    return router.registry.get_sample_value(name) or 0.0


async def _burst(
    infra: Infra, cat: Catalog, producer: Producer, traits: Traits, count: int
) -> list[InferenceResult]:
    """``count`` requests of one kind published one after another; their results."""
    async with results_of(infra, cat.name(Topic.INFERENCE_RESULTS)) as reader:
        requests = [inference_request(cat, traits) for _ in range(count)]
        for request in requests:
            await publish(producer, cat, request)
        results = await reader.collect([r.correlation_id for r in requests], timeout_s=30)
    return [only for (only,) in results.values()]


async def test_requests_of_one_kind_share_selections_and_release_what_they_leave(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    leasing_router: Router,
) -> None:
    traits = new_traits()
    executor_id = await register(producer, cat, selector, traits, fast.url)
    results = await _burst(infra, cat, producer, traits, 40)

    assert all(r.status is InferenceStatus.OK for r in results), [r.error for r in results]
    assert {r.executor_id for r in results} == {executor_id}
    selections = Counter(r.selection for r in results)
    assert set(selections) <= {"fresh", "leased"}
    assert selections["leased"] >= 10, selections  # most of them asked nobody
    assert (
        _metric(leasing_router, "mulambda_router_leased_selections_total") == selections["leased"]
    )
    # Every dispatch the selector counted as pending comes back observed (leased slots
    # are outstanding only), nothing waits for its 30 s pending timeout, and each call's
    # observation reaches the selector (the batches arrive after the results).
    entry = selector.view.get(executor_id)
    assert entry is not None
    await until(lambda: not entry.pending, "every dispatch to be observed")
    await until(
        lambda: entry.service_samples >= len(results) - 1, "each call to teach the selector"
    )


async def test_a_new_executor_for_the_traits_ends_the_lease(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    lasting_router: Router,
) -> None:
    traits = new_traits()
    await register(producer, cat, selector, traits, fast.url, accuracy=0.5)
    first = await _burst(infra, cat, producer, traits, 20)
    assert any(r.selection == "leased" for r in first)
    ended = _metric(lasting_router, "mulambda_router_leases_ended_total")
    # A better executor arrives (the weighted policy ranks by accuracy here): the lease
    # that ranked only the first one ends at once, not after its minute of age.
    better = await register(producer, cat, selector, traits, fast.url, accuracy=0.99)
    await until(
        lambda: _metric(lasting_router, "mulambda_router_leases_ended_total") > ended,
        "the router to end the lease",
    )
    (after,) = await _burst(infra, cat, producer, traits, 1)
    assert after.status is InferenceStatus.OK, after.error
    assert after.executor_id == better
    assert after.selection == "fresh"
