"""The consumer-facing helpers against a consumer double: errors translated, retries, lag."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from mulambda.errors import KafkaUnavailable
from mulambda.kafka import (
    TopicPartition,
    assign_at_end,
    await_delivery,
    commit_offsets,
    commit_unset_positions,
    fetch,
    fetch_retrying,
    lag_of,
)

pytestmark = pytest.mark.unit

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class ConsumerDouble:
    """The part of aiokafka's consumer the helpers use, scripted per test."""

    def __init__(self, *, fetch_failures: int = 0, batches: dict[Any, list[Any]] | None = None):
        self.fetch_failures = fetch_failures
        self.batches = batches or {}
        self.fetches: list[tuple[tuple[Any, ...], int, int | None]] = []
        self.assigned: list[Any] = []
        self.ends = {TP0: 7, TP1: 3}
        self.positions: dict[Any, int] = {}
        self.committed_offsets: dict[Any, int] = {}
        self.commits: list[dict[Any, int]] = []
        self.fail_commit = False

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[Any, list[Any]]:
        self.fetches.append((partitions, timeout_ms, max_records))
        if self.fetch_failures:
            self.fetch_failures -= 1
            raise KafkaConnectionError("broker went away")
        return self.batches

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = list(partitions)

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return {tp: self.ends[tp] for tp in partitions}

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    async def position(self, tp: Any) -> int:
        return self.positions.get(tp, 0)

    async def committed(self, tp: Any) -> int | None:
        return self.committed_offsets.get(tp)

    async def commit(self, offsets: dict[Any, int]) -> None:
        if self.fail_commit:
            raise KafkaTimeoutError()
        self.commits.append(dict(offsets))

    def highwater(self, tp: Any) -> int | None:
        return self.ends.get(tp)


async def test_fetch_passes_the_arguments_through() -> None:
    consumer = ConsumerDouble(batches={TP0: ["r"]})
    assert await fetch(consumer, TP0, timeout_ms=300, max_records=9) == {TP0: ["r"]}
    assert consumer.fetches == [((TP0,), 300, 9)]


async def test_fetch_translates_kafka_errors() -> None:
    consumer = ConsumerDouble(fetch_failures=1)
    with pytest.raises(KafkaUnavailable, match=r"reading results failed: .*broker went away"):
        await fetch(consumer, timeout_ms=10, what="reading results")


async def test_fetch_retrying_rides_out_failures(caplog: pytest.LogCaptureFixture) -> None:
    consumer = ConsumerDouble(fetch_failures=2, batches={TP1: ["r"]})
    got = await fetch_retrying(
        consumer, TP1, timeout_ms=10, retry_backoff_s=0.0, what="state fetch"
    )
    assert got == {TP1: ["r"]}
    assert len(consumer.fetches) == 3
    assert sum("state fetch failed" in m and "retrying" in m for m in caplog.messages) == 2


async def test_fetch_retrying_gives_up_once_stopping() -> None:
    consumer = ConsumerDouble(fetch_failures=100)
    stopping = asyncio.Event()
    stopping.set()
    got = await fetch_retrying(consumer, timeout_ms=10, retry_backoff_s=0.0, stopping=stopping)
    assert got == {}
    assert len(consumer.fetches) == 1


async def test_fetch_retrying_without_failure_ignores_stopping() -> None:
    # A stopping loop still takes what one fetch brought; the caller decides about it.
    consumer = ConsumerDouble(batches={TP0: ["r"]})
    stopping = asyncio.Event()
    stopping.set()
    got = await fetch_retrying(consumer, timeout_ms=10, retry_backoff_s=0.0, stopping=stopping)
    assert got == {TP0: ["r"]}


async def test_assign_at_end_fixes_the_positions() -> None:
    consumer = ConsumerDouble()
    await assign_at_end(consumer, [TP0, TP1])
    assert consumer.assigned == [TP0, TP1]
    assert consumer.positions == {TP0: 7, TP1: 3}


async def test_commit_offsets_reports_a_refused_commit() -> None:
    consumer = ConsumerDouble()
    assert await commit_offsets(consumer, {TP0: 5}) is True
    consumer.fail_commit = True
    assert await commit_offsets(consumer, {TP0: 6}) is False
    assert consumer.commits == [{TP0: 5}]


async def test_commit_unset_positions_commits_only_what_the_group_never_did() -> None:
    consumer = ConsumerDouble()
    consumer.assign([TP0, TP1])
    consumer.positions = {TP0: 4, TP1: 2}
    consumer.committed_offsets = {TP0: 1}
    await commit_unset_positions(consumer)
    assert consumer.commits == [{TP1: 2}]
    consumer.committed_offsets = {TP0: 1, TP1: 2}
    await commit_unset_positions(consumer)
    assert consumer.commits == [{TP1: 2}]


async def test_commit_unset_positions_translates_kafka_errors() -> None:
    consumer = ConsumerDouble()
    consumer.assign([TP0])
    consumer.fail_commit = True
    with pytest.raises(KafkaUnavailable, match="start positions not committed"):
        await commit_unset_positions(consumer)


def test_lag_counts_assigned_partitions_behind_their_high_watermark() -> None:
    consumer = ConsumerDouble()
    consumer.assign([TP0, TP1])
    assert lag_of(consumer, {TP0: 5, TP1: 3}) == 2
    assert lag_of(consumer, {TP0: 9}) == 0  # ahead of a stale watermark: no negative lag
    consumer.assign([TP1])
    assert lag_of(consumer, {TP0: 0, TP1: 1}) == 2


async def test_await_delivery_translates_a_failed_delivery() -> None:
    loop = asyncio.get_running_loop()
    ok: asyncio.Future[str] = loop.create_future()
    ok.set_result("meta")
    assert await await_delivery(ok, "delivery to t failed") == "meta"
    failed: asyncio.Future[str] = loop.create_future()
    failed.set_exception(KafkaTimeoutError())
    with pytest.raises(KafkaUnavailable, match="request to t not delivered"):
        await await_delivery(failed, "request to t not delivered")
