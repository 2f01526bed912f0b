"""Generation fencing (KIP-447) against the real broker: the group refuses a transactional
commit made as a generation it has left, and a new owner does not read a partition while
a previous owner's transaction still carries offsets for it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mulambda.kafka import (
    Admin,
    DeadLetterer,
    KafkaConsumer,
    PipelinedConsumer,
    Producer,
    Record,
    TopicPartition,
    TransactionalProducer,
    assign_at_end,
    close_consumer,
    partitions_of,
    start_consumer,
)
from mulambda.kafka.fencing import (
    ErrorCode,
    FencedOffsets,
    Generation,
    fetch_stable_offsets,
    generation_of,
)
from mulambda.kafka.producer import idempotent_client
from mulambda.kafka.transactions import current_position
from mulambda.wire.catalog import Catalog, Topic
from tests.conftest import Infra
from tests.factories import one_of_each

pytestmark = pytest.mark.integration


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g}s")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _member(infra: Infra, group: str, topic: str) -> AsyncIterator[KafkaConsumer]:
    """A plain group consumer of ``topic`` (it only takes part in the group)."""
    consumer = await start_consumer(infra.kafka("fencing-member"), "member", group_id=group)
    consumer.subscribe([topic])
    try:
        yield consumer
    finally:
        await close_consumer(consumer)


async def _joined(consumer: KafkaConsumer, after: int = -1) -> Generation:
    """Wait until ``consumer`` is a member in a generation after ``after`` (with one
    partition and two members, one of them owns nothing)."""

    async def joined() -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.getmany(timeout_ms=50), 1.0)
        generation = generation_of(consumer)
        return generation.known and generation.generation_id > after

    await _until("joined the group", joined)
    return generation_of(consumer)


async def _hold(
    producer: TransactionalProducer, tp: TopicPartition, offset: int, topic: str
) -> None:
    token = current_position.set((tp, offset))
    try:
        await producer.send_raw(topic, f"answer-{offset}".encode())
    finally:
        current_position.reset(token)


async def _committed(infra: Infra, group: str) -> dict[TopicPartition, int]:
    async with Admin(infra.kafka()) as admin:
        return await admin.committed(group)


async def test_a_commit_as_a_generation_the_group_has_left_is_refused(
    infra: Infra, own_catalog: Catalog
) -> None:
    topic = own_catalog.name(Topic.CLIENT_REGISTRATIONS)
    answers = own_catalog.name(Topic.INFERENCE_RESULTS)
    tp = TopicPartition(topic, 0)
    group = f"fence-{uuid.uuid4().hex[:6]}"
    committed_reader = await start_consumer(infra.kafka(), "answers", read_committed=True)
    producer = TransactionalProducer(
        infra.kafka("fencing-txn"), transactional_id=f"{group}.t", group_id=group
    )
    try:
        await assign_at_end(committed_reader, await partitions_of(infra.kafka(), answers))
        await producer.start()
        async with _member(infra, group, topic) as first:
            old = await _joined(first)
            async with _member(infra, group, topic) as second:
                # The second member's join ends the first's generation for both.
                await _joined(second)
                current = await _joined(first, after=old.generation_id)
                assert current.generation_id > old.generation_id

                await _hold(producer, tp, 0, answers)
                assert not await producer.commit({tp: 1}, old), "ILLEGAL_GENERATION"
                assert producer.fenced == 1
                assert producer.held == 0, "a zombie's answers are dropped"
                assert producer.health.ok

                # Revoked and back: a new assignment; the live generation commits.
                producer.drop([tp])
                await _hold(producer, tp, 1, answers)
                live = generation_of(first if tp in first.assignment() else second)
                assert await producer.commit({tp: 2}, live)
                assert (await _committed(infra, group)).get(tp) == 2
                gone = generation_of(second)

            # The first member is alone again (a new generation); the second left for good.
            await _joined(first, after=current.generation_id)
            assert not await producer.commit({tp: 3}, gone), "UNKNOWN_MEMBER_ID"
            assert producer.fenced == 2
            producer.drop([tp])
            assert not await producer.commit({tp: 3}, Generation(-1, "")), "no membership"
            assert producer.fenced == 3
            assert (await _committed(infra, group)).get(tp) == 2

        # What this closes: without a generation the broker takes a zombie's commit.
        producer.drop([tp])
        assert await producer.commit({tp: 3}, None)
        assert (await _committed(infra, group)).get(tp) == 3

        seen: list[bytes] = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for records in (await committed_reader.getmany(timeout_ms=200)).values():
                seen.extend(r.value for r in records if r.value is not None)
        assert seen == [b"answer-1"], "only the live generation's answer was committed"
    finally:
        await producer.stop()
        await close_consumer(committed_reader)


async def test_fenced_offsets_name_the_refusal(infra: Infra, own_catalog: Catalog) -> None:
    """The I/O part alone: the group's refusal comes back as StaleGeneration."""
    from mulambda.errors import StaleGeneration

    topic = own_catalog.name(Topic.CLIENT_REGISTRATIONS)
    tp = TopicPartition(topic, 0)
    group = f"fence-{uuid.uuid4().hex[:6]}"
    client = idempotent_client(
        infra.kafka("fencing-raw"), linger_ms=0, transactional_id=f"{group}.raw"
    )
    await client.start()
    try:
        async with _member(infra, group, topic) as member:
            generation = await _joined(member)
            stale = Generation(generation.generation_id + 5, generation.member_id)
            fencing = FencedOffsets(group)
            await client.begin_transaction()
            with pytest.raises(StaleGeneration, match="ILLEGAL_GENERATION"):
                await fencing.send(client, {tp: 1}, stale)
            await client.abort_transaction()
            await client.begin_transaction()
            await fencing.send(client, {tp: 4}, generation)
            await client.commit_transaction()
            assert fencing.refused == 1
        assert (await _committed(infra, group)).get(tp) == 4
    finally:
        await client.stop()


async def test_a_new_owner_waits_for_a_pending_transactions_offsets(
    infra: Infra, own_catalog: Catalog
) -> None:
    topic = own_catalog.name(Topic.CLIENT_REGISTRATIONS)
    tp = TopicPartition(topic, 0)
    group = f"stable-{uuid.uuid4().hex[:6]}"
    client_registration = one_of_each()[1]
    handled: list[int] = []

    async def handle(record: Record[Any]) -> None:
        handled.append(record.offset)

    old_owner = idempotent_client(
        infra.kafka("stable-old"), linger_ms=0, transactional_id=f"{group}.old"
    )
    await old_owner.start()
    new_answers = TransactionalProducer(
        infra.kafka("stable-new"), transactional_id=f"{group}.new", group_id=group
    )
    async with Producer(infra.kafka()) as producer:
        first = [
            (await producer.send_and_wait(topic, client_registration, key=f"c-{i}")).offset
            for i in range(5)
        ]
        letters = DeadLetterer(producer, own_catalog.name(Topic.DEAD_LETTERS), group)
        try:
            # The old owner commits the five records' offsets in a transaction it leaves
            # open (as a router frozen between its offsets and its commit), then leaves.
            async with _member(infra, group, topic) as member:
                generation = await _joined(member)
                await old_owner.begin_transaction()
                await FencedOffsets(group).send(old_owner, {tp: first[-1] + 1}, generation)
                answers = await fetch_stable_offsets(member, group, [tp])
                assert answers[tp].error_code == ErrorCode.UNSTABLE_OFFSET_COMMIT

            await new_answers.start()
            new_owner = PipelinedConsumer(
                infra.kafka("stable-owner"),
                {topic: type(client_registration)},
                handle,
                group_id=group,
                dead_letters=letters,
                transactions=new_answers,
            )
            async with new_owner:

                async def assigned() -> bool:
                    consumer = new_owner.consumer
                    return consumer is not None and tp in consumer.assignment()

                await _until("the new owner got the partition", assigned)
                await asyncio.sleep(2.0)
                assert handled == [], "read while an open transaction carried its offsets"

                await old_owner.commit_transaction()
                later = (await producer.send_and_wait(topic, client_registration, key="c-5")).offset

                async def caught_up() -> bool:
                    return later in handled

                await _until("the new owner read on from the committed offset", caught_up)
            assert handled == [later], "the old owner's five records are not read again"
        finally:
            await new_answers.stop()
            await old_owner.stop()
