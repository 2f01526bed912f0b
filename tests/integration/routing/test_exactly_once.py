"""The router's exactly-once mode against the real Kafka: results and offsets commit in
transactions, so a ``read_committed`` reader sees one result per request, also when a
router stops without committing and another one redoes its requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import orjson
import pytest

from mulambda.emulator import ExecutorServer
from mulambda.kafka import (
    Producer,
    TopicPartition,
    assign_at_end,
    commit_offsets,
    partitions_of,
    start_consumer,
)
from mulambda.kafka.fencing import Generation
from mulambda.routing.router import Router
from mulambda.selection.selector import Selector
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import InferenceStatus, deadline_in
from tests.conftest import Infra
from tests.integration.routing.support import (
    ResultReader,
    inference_request,
    new_traits,
    publish,
    register,
    uid,
)

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def committed_results(infra: Infra, topic: str) -> AsyncIterator[ResultReader]:
    """A reader that sees only committed transactions, positioned at the topic's end."""
    consumer = await start_consumer(
        infra.kafka(), "committed results", fetch_max_wait_ms=100, read_committed=True
    )
    try:
        await assign_at_end(consumer, await partitions_of(infra.kafka(), topic))
        yield ResultReader(consumer)
    finally:
        await consumer.stop()


async def _group_at_end(infra: Infra, cat: Catalog, group: str) -> str:
    """Start ``group`` at the requests' current end: the module's earlier tests left
    requests there that a new group would otherwise route again."""
    consumer = await start_consumer(infra.kafka(), "group at end", group_id=group)
    try:
        topic = cat.name(Topic.INFERENCE_REQUESTS)
        partitions = await partitions_of(infra.kafka(), topic)
        await assign_at_end(consumer, partitions)
        ends = {tp: await consumer.position(tp) for tp in partitions}
        assert await commit_offsets(consumer, ends)
    finally:
        await consumer.stop()
    return group


def _eos_router(infra: Infra, cat: Catalog, group: str, router_id: str) -> Router:
    return Router(
        infra.kafka(router_id),
        cat,
        router_id=router_id,
        group_id=group,
        selection_timeout_s=5.0,
        call_timeout_s=5.0,
        exactly_once=True,
    )


async def test_committed_readers_see_one_result_per_request_across_restarts(
    infra: Infra, cat: Catalog, selector: Selector, producer: Producer, fast: ExecutorServer
) -> None:
    traits = new_traits()
    await register(producer, cat, selector, traits, fast.url)
    group, router_id = await _group_at_end(infra, cat, uid("eos-group")), uid("eos-router")
    first = [inference_request(cat, traits) for _ in range(20)]
    later = [inference_request(cat, traits) for _ in range(5)]
    invalid_key = uid("invalid")
    async with committed_results(infra, cat.name(Topic.INFERENCE_RESULTS)) as reader:
        async with _eos_router(infra, cat, group, router_id) as router:
            for request in first:
                await publish(producer, cat, request)
            # an invalid request with a readable reply address: its error result too
            await producer.send_raw(
                cat.name(Topic.INFERENCE_REQUESTS),
                orjson.dumps(
                    {
                        "reply_topic": cat.name(Topic.INFERENCE_RESULTS),
                        "correlation_id": invalid_key,
                        "deadline": deadline_in(30).isoformat(),
                    }
                ),
                key="x",
            )
            got = await reader.collect([r.correlation_id for r in first] + [invalid_key])
            assert router._transactions is not None
            assert router._transactions.transactions >= 1
        # The same instance again (a restart): nothing it committed is routed again.
        async with _eos_router(infra, cat, group, router_id):
            for request in later:
                await publish(producer, cat, request)
            got |= await reader.collect([r.correlation_id for r in later])
        await reader.read_for(1.0)  # anything late would show up here
    for request in first + later:
        results = reader.results[request.correlation_id]
        assert len(results) == 1, request.correlation_id
        assert results[0].status is InferenceStatus.OK, results[0].error
        assert results[0].request_id == request.message_id
    assert reader.results[invalid_key][0].status is InferenceStatus.ERROR
    assert len(reader.results[invalid_key]) == 1


async def test_results_never_committed_are_invisible_and_redone_once(
    infra: Infra, cat: Catalog, selector: Selector, producer: Producer, fast: ExecutorServer
) -> None:
    # A router that routes but never gets a transaction through (as if it crashed before
    # committing): its results stay invisible; the next owner redoes them, once.
    traits = new_traits()
    await register(producer, cat, selector, traits, fast.url)
    group = await _group_at_end(infra, cat, uid("eos-group"))
    requests = [inference_request(cat, traits) for _ in range(8)]
    keys = [r.correlation_id for r in requests]
    async with committed_results(infra, cat.name(Topic.INFERENCE_RESULTS)) as reader:
        stuck = _eos_router(infra, cat, group, uid("eos-stuck"))
        async with stuck:
            transactions = stuck._transactions
            assert transactions is not None

            async def never(
                offsets: Mapping[TopicPartition, int], generation: Generation | None = None
            ) -> bool:
                return False

            transactions.commit = never  # type: ignore[method-assign]
            for request in requests:
                await publish(producer, cat, request)
            for _ in range(100):
                if transactions.held >= len(requests):
                    break
                await asyncio.sleep(0.1)
            assert transactions.held >= len(requests), "every request was routed"
            await reader.read_for(1.0)
            assert not any(k in reader.results for k in keys), "uncommitted results leaked"
        async with _eos_router(infra, cat, group, uid("eos-next")):
            await reader.collect(keys)
        await reader.read_for(1.0)
    assert all(len(reader.results[k]) == 1 for k in keys)
