"""Kafka plumbing against the real broker: topics, consumers, dead letters, replay, metadata."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson
import pytest

from mulambda.errors import ConfigurationError, MulambdaError, RequestTimeout
from mulambda.kafka import (
    Admin,
    ConsumerLoop,
    DeadLetterer,
    PipelinedConsumer,
    Producer,
    Record,
    TopicPartition,
    partitions_of,
    read_until_key,
    replay,
)
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from mulambda.wire.codec import decode, encode
from mulambda.wire.events import DeadLetter, ExecutorRegistration
from tests.conftest import Infra
from tests.factories import registration

pytestmark = pytest.mark.integration


def _cli(infra: Infra, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mulambda.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **infra.env(), **env},
    )


async def test_topics_apply_twice_is_idempotent(infra: Infra) -> None:
    prefix = f"apply-{uuid.uuid4().hex[:6]}."
    first = await asyncio.to_thread(_cli, infra, "topics", "apply", MULAMBDA_TOPIC_PREFIX=prefix)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == len(Topic)
    second = await asyncio.to_thread(_cli, infra, "topics", "apply", MULAMBDA_TOPIC_PREFIX=prefix)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("unchanged") == len(Topic), second.stdout
    listed = await asyncio.to_thread(_cli, infra, "topics", "list", MULAMBDA_TOPIC_PREFIX=prefix)
    assert f"{prefix}mulambda.executor-registrations" in listed.stdout
    assert "cleanup.policy=compact" in listed.stdout
    catalog = load_catalog(prefix)
    async with Admin(infra.kafka()) as admin:
        await admin.delete([catalog.name(t) for t in Topic])


async def _wait_for_config(admin: Admin, name: str, key: str, value: str) -> None:
    # Config changes reach the broker's metadata cache asynchronously.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (await admin.describe([name]))[name]["config"].get(key) == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}: {key} never became {value}")


async def test_apply_restores_drifted_config(infra: Infra) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    catalog = load_catalog(f"drift-{uuid.uuid4().hex[:6]}.")
    async with Admin(infra.kafka()) as admin:
        await admin.apply(catalog)
        name = catalog.name(Topic.DEAD_LETTERS)
        await admin._require().alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {"retention.ms": "1000"})]
        )
        await _wait_for_config(admin, name, "retention.ms", "1000")
        changes = {c.name: c for c in await admin.apply(catalog)}
        assert changes[name].action == "updated"
        assert "retention.ms=1209600000" in changes[name].detail
        await _wait_for_config(admin, name, "retention.ms", "1209600000")
        await admin.delete([catalog.name(t) for t in Topic])


def test_unreachable_broker_fails_fast_with_one_line(infra: Infra) -> None:
    started = time.monotonic()
    result = _cli(
        infra,
        "topics",
        "apply",
        MULAMBDA_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        MULAMBDA_KAFKA_REQUEST_TIMEOUT_S="2",
    )
    assert result.returncode == 1
    assert "Kafka unreachable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert time.monotonic() - started < 30  # bounded, with generous slack for a slow machine


async def _collect_dead_letters(
    infra: Infra, catalog: Catalog, expect: int, timeout_s: float = 20
) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    def keep(record: Record[Any]) -> None:
        assert isinstance(record.value, DeadLetter)
        found.append(record.value)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found.clear()
        await replay(infra.kafka(), {catalog.name(Topic.DEAD_LETTERS): DeadLetter}, keep)
        if len(found) >= expect:
            break
        await asyncio.sleep(0.2)
    return found


async def test_malformed_records_are_dead_lettered_and_valid_ones_handled(
    infra: Infra, own_catalog: Catalog
) -> None:
    catalog = own_catalog
    topic = catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    handled: list[str] = []
    failures = {"fatal-1": MulambdaError("refused for good")}
    flaky = {"flaky-1": 2}  # fails twice, retriably, then succeeds

    async def handler(record: Record[Any]) -> None:
        assert isinstance(record.value, ExecutorRegistration)
        executor_id = record.value.executor_id
        if executor_id in failures:
            raise failures[executor_id]
        if flaky.get(executor_id, 0) > 0:
            flaky[executor_id] -= 1
            raise MulambdaError("try again", retriable=True)
        handled.append(executor_id)

    valid = [registration(f"ok-{i}") for i in range(3)]
    async with Producer(infra.kafka()) as producer:
        loop = ConsumerLoop(
            infra.kafka(),
            {topic: ExecutorRegistration},
            handler,
            group_id=f"g-{uuid.uuid4().hex[:6]}",
            dead_letters=DeadLetterer(producer, catalog.name(Topic.DEAD_LETTERS), "g"),
            max_record_bytes=4096,
            retry_backoff_s=0.01,
        )
        async with loop:
            await producer.send_and_wait(topic, valid[0], key="ok-0")
            await producer.send_raw(topic, b"{not json", key="bad-json")
            await producer.send_and_wait(topic, valid[1], key="ok-1")
            await producer.send_raw(topic, orjson.dumps({"executor_id": "x"}), key="bad-schema")
            await producer.send_raw(topic, b"{" + b" " * 5000 + b"}", key="oversize")
            await producer.send_and_wait(topic, registration("fatal-1"), key="fatal-1")
            await producer.send_and_wait(topic, registration("flaky-1"), key="flaky-1")
            await producer.send_and_wait(topic, valid[2], key="ok-2")
            deadline = time.monotonic() + 20
            while len(handled) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        assert handled == ["ok-0", "ok-1", "flaky-1", "ok-2"]
        assert loop.stats.retries == 2

    letters = await _collect_dead_letters(infra, catalog, expect=4)
    by_key = {letter.original_key: letter for letter in letters}
    assert set(by_key) == {b"bad-json", b"bad-schema", b"oversize", b"fatal-1"}
    assert by_key[b"bad-json"].original_value == b"{not json"
    assert "not valid JSON" in by_key[b"bad-json"].reason
    assert "model_name" in by_key[b"bad-schema"].reason
    assert "exceeds the 4096-byte bound" in by_key[b"oversize"].reason
    assert by_key[b"fatal-1"].reason == "refused for good"
    assert all(letter.topic == topic for letter in letters)
    fatal = decode(ExecutorRegistration, by_key[b"fatal-1"].original_value)
    assert fatal.executor_id == "fatal-1"


async def test_offsets_commit_only_after_handling(infra: Infra, catalog: Catalog) -> None:
    """A record whose handling was interrupted is delivered again to the next consumer."""
    topic = catalog.name(Topic.CLIENT_REGISTRATIONS)
    group = f"g-{uuid.uuid4().hex[:6]}"
    first_seen: list[int] = []
    gate = asyncio.Event()
    ours: list[int] = []  # the offset of this test's record, once produced

    async def stuck(record: Record[Any]) -> None:
        first_seen.append(record.offset)
        if record.offset in ours:  # earlier tests' records on the topic pass
            await gate.wait()  # never released: the loop is stopped mid-record

    from tests.factories import one_of_each

    client = one_of_each()[1]
    async with Producer(infra.kafka()) as producer:
        meta = await producer.send_and_wait(topic, client, key="cl-1")
        ours.append(meta.offset)
        letters = DeadLetterer(producer, catalog.name(Topic.DEAD_LETTERS), group)
        loop = ConsumerLoop(
            infra.kafka(), {topic: type(client)}, stuck, group_id=group, dead_letters=letters
        )
        await loop.start()
        deadline = time.monotonic() + 20
        while meta.offset not in first_seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await loop.stop(grace_s=0.2)
        assert meta.offset in first_seen

        again: list[int] = []

        async def record_it(record: Record[Any]) -> None:
            again.append(record.offset)

        async with ConsumerLoop(
            infra.kafka(), {topic: type(client)}, record_it, group_id=group, dead_letters=letters
        ):
            deadline = time.monotonic() + 20
            while meta.offset not in again and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        assert meta.offset in again


async def test_replay_reads_compacted_topic_with_tombstones(infra: Infra, catalog: Catalog) -> None:
    topic = catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    async with Producer(infra.kafka()) as producer:
        await producer.send_and_wait(topic, registration("replay-a"), key="replay-a")
        await producer.send_and_wait(topic, registration("replay-b"), key="replay-b")
        await producer.send_and_wait(topic, None, key="replay-a")
    latest: dict[str, ExecutorRegistration | None] = {}

    def apply(record: Record[Any]) -> None:
        assert record.key_str is not None
        latest[record.key_str] = record.value

    ends = await replay(infra.kafka(), {topic: ExecutorRegistration}, apply)
    assert latest["replay-a"] is None
    replay_b = latest["replay-b"]
    assert replay_b is not None
    assert replay_b.executor_id == "replay-b"
    assert sum(ends.values()) >= 3
    assert encode(replay_b) == encode(
        registration("replay-b").model_copy(
            update={"message_id": replay_b.message_id, "timestamp": replay_b.timestamp}
        )
    )


async def test_undeliverable_answer_is_retried_then_dead_lettered(
    infra: Infra, catalog: Catalog
) -> None:
    topic = catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    attempts: dict[str, int] = {}

    async def handler(record: Record[Any]) -> asyncio.Future[None]:
        assert isinstance(record.value, ExecutorRegistration)
        executor_id = record.value.executor_id
        attempts[executor_id] = attempts.get(executor_id, 0) + 1
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if executor_id == "undeliverable-1":
            delivery.set_exception(MulambdaError("reply topic vanished", retriable=True))
        else:
            delivery.set_result(None)
        return delivery

    async with Producer(infra.kafka()) as producer:
        loop = ConsumerLoop(
            infra.kafka(),
            {topic: ExecutorRegistration},
            handler,
            group_id=f"g-{uuid.uuid4().hex[:6]}",
            dead_letters=DeadLetterer(producer, catalog.name(Topic.DEAD_LETTERS), "g"),
            max_retries=2,
            retry_backoff_s=0.01,
        )
        async with loop:
            await producer.send_and_wait(topic, registration("undeliverable-1"), key="und-1")
            deadline = time.monotonic() + 20
            while attempts.get("undeliverable-1", 0) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            # Stopping lets the batch in hand finish: the third failure dead-letters it.
    assert attempts["undeliverable-1"] == 3  # first try and two re-reads
    deadline = time.monotonic() + 20
    mine: list[DeadLetter] = []
    while not mine and time.monotonic() < deadline:
        letters = await _collect_dead_letters(infra, catalog, expect=1)
        mine = [letter for letter in letters if letter.original_key == b"und-1"]
    assert len(mine) == 1
    assert mine[0].reason == "reply topic vanished"


async def test_partitions_of_lists_every_partition_and_refuses_a_missing_topic(
    infra: Infra, catalog: Catalog
) -> None:
    requests = catalog.name(Topic.INFERENCE_REQUESTS)
    letters = catalog.name(Topic.DEAD_LETTERS)
    partitions = await partitions_of(infra.kafka(), requests, letters)
    want = catalog.spec(Topic.INFERENCE_REQUESTS).partitions
    assert partitions == [TopicPartition(requests, p) for p in range(want)] + [
        TopicPartition(letters, p) for p in range(catalog.spec(Topic.DEAD_LETTERS).partitions)
    ]
    with pytest.raises(ConfigurationError, match="does not exist"):
        await partitions_of(infra.kafka(), requests, f"missing-{uuid.uuid4().hex[:6]}")
    async with Admin(infra.kafka()) as admin:
        counts = await admin.partition_counts()
    assert {catalog.name(t): catalog.spec(t).partitions for t in Topic}.items() <= counts.items()
    assert "__consumer_offsets" not in counts  # internal: nothing may be produced there


async def test_read_until_key_sees_only_what_was_published_after_it(
    infra: Infra, catalog: Catalog
) -> None:
    topic = catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    async with Producer(infra.kafka()) as producer:
        await producer.send_and_wait(topic, registration("before"), key="wanted")
        async with read_until_key(infra.kafka(), topic, "wanted", ExecutorRegistration) as waiter:
            await producer.send_and_wait(topic, registration("other"), key="unwanted")
            await producer.send_and_wait(topic, registration("after"), key="wanted")
            got = await waiter.result(timeout_s=15)
        assert got.executor_id == "after"
        async with read_until_key(infra.kafka(), topic, "wanted", ExecutorRegistration) as waiter:
            with pytest.raises(RequestTimeout):
                await waiter.result(timeout_s=0.5)


async def test_pipelined_consumer_commits_below_the_oldest_record_in_flight(
    infra: Infra, catalog: Catalog
) -> None:
    """Records finished after a stuck one are read again by the next owner; none is lost."""
    # One partition, so offsets are in order; earlier tests' records come first.
    topic = catalog.name(Topic.CLIENT_REGISTRATIONS)
    group = f"g-{uuid.uuid4().hex[:6]}"
    from tests.factories import one_of_each

    client = one_of_each()[1]
    model = type(client)
    done: list[int] = []
    stuck_at: list[int] = []

    async def first_sticks(record: Record[Any]) -> None:
        if record.key == b"c-0":
            stuck_at.append(record.offset)
            await asyncio.Event().wait()  # never finishes: cancelled after the grace
        done.append(record.offset)

    async with Producer(infra.kafka()) as producer:
        sent = [
            (await producer.send_and_wait(topic, client, key=f"c-{i}")).offset for i in range(3)
        ]
        letters = DeadLetterer(producer, catalog.name(Topic.DEAD_LETTERS), group)
        consumer = PipelinedConsumer(
            infra.kafka(),
            {topic: model},
            first_sticks,
            group_id=group,
            dead_letters=letters,
            grace_s=0.2,
        )
        await consumer.start()
        deadline = time.monotonic() + 20
        while not set(sent[1:]) <= set(done) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert consumer.in_flight == 1
        await consumer.stop()
        assert stuck_at == [sent[0]]
        assert set(sent[1:]) <= set(done)

        again: list[int] = []

        async def record_it(record: Record[Any]) -> None:
            again.append(record.offset)

        async with PipelinedConsumer(
            infra.kafka(), {topic: model}, record_it, group_id=group, dead_letters=letters
        ):
            deadline = time.monotonic() + 20
            while not set(sent) <= set(again) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        # The stuck record held the commit point, so the two after it come again too.
        assert set(sent) <= set(again)

        later: list[int] = []

        async def record_later(record: Record[Any]) -> None:
            later.append(record.offset)

        async with PipelinedConsumer(
            infra.kafka(), {topic: model}, record_later, group_id=group, dead_letters=letters
        ) as third:
            marker = (await producer.send_and_wait(topic, client, key="marker")).offset
            deadline = time.monotonic() + 20
            while marker not in later and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert third.lag() == 0
        # Everything was finished and committed by the second owner: only the new record.
        assert later == [marker]


async def test_a_commit_interval_defers_commits_until_it_passes_or_the_loop_stops(
    infra: Infra, catalog: Catalog
) -> None:
    topic = catalog.name(Topic.CLIENT_REGISTRATIONS)
    group = f"g-{uuid.uuid4().hex[:6]}"
    handled: list[int] = []

    async def record_it(record: Record[Any]) -> None:
        handled.append(record.offset)

    from tests.factories import one_of_each

    client = one_of_each()[1]
    async with Producer(infra.kafka()) as producer, Admin(infra.kafka()) as admin:
        letters = DeadLetterer(producer, catalog.name(Topic.DEAD_LETTERS), group)
        loop = ConsumerLoop(
            infra.kafka(),
            {topic: type(client)},
            record_it,
            group_id=group,
            dead_letters=letters,
            commit_interval_s=3600.0,
        )
        await loop.start()
        await loop.wait_assigned()
        first = await producer.send_and_wait(topic, client, key="cl-1")
        deadline = time.monotonic() + 20
        while first.offset not in handled and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # The first commit goes out at once (none was made yet), the next waits an hour.
        second = await producer.send_and_wait(topic, client, key="cl-1")
        while second.offset not in handled and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert second.offset in handled
        tp = TopicPartition(topic, second.partition)
        committed = (await admin.committed(group)).get(tp)
        assert committed is not None  # the first batch's
        assert committed <= first.offset + 1
        await loop.stop()
        assert (await admin.committed(group)).get(tp) == second.offset + 1  # on stop
