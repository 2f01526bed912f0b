"""Reading through a started consumer: position it, fetch batches, commit, measure lag.

Every worker fetches through :func:`fetch` (one ``getmany``, aiokafka's errors
translated) or :func:`fetch_retrying` (a reader that rides out a broker hiccup). The
consumer itself comes from :func:`~mulambda.kafka.config.start_consumer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TypeAlias

from aiokafka.errors import KafkaError

from mulambda.errors import AccessDenied, AuthorizationError, KafkaUnavailable
from mulambda.kafka.config import KafkaConsumer, kafka_error
from mulambda.kafka.health import mark_denied
from mulambda.kafka.records import RawRecord, TopicPartition

log = logging.getLogger(__name__)

ACCESS_DENIED_BACKOFF_S = 5.0
"""How long a reader the cluster refuses waits before asking again: ACLs get fixed at
run time, so it keeps asking, but slowly (a refusal comes back at once)."""

Batches: TypeAlias = dict[TopicPartition, list[RawRecord]]
"""Fetched records by partition, in offset order within each."""


async def fetch(
    consumer: KafkaConsumer,
    *partitions: TopicPartition,
    timeout_ms: int,
    max_records: int | None = None,
    what: str = "fetch",
) -> Batches:
    """Records of ``partitions`` (all assigned when none), waiting up to ``timeout_ms``.

    Raises KafkaUnavailable ("``what`` failed: ...") when the fetch fails.
    """
    try:
        batches: Batches = await consumer.getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )
    except KafkaError as exc:
        raise kafka_error(exc, f"{what} failed") from exc
    if not batches:
        refused = refused_topics(consumer)
        if refused:
            raise AuthorizationError(
                f"{what} failed: not authorised by the cluster's ACLs to describe "
                f"{', '.join(sorted(refused))}"
            )
    return batches


def refused_topics(consumer: KafkaConsumer) -> set[str]:
    """Topics ``consumer`` reads that the last metadata answer said it may not describe.

    aiokafka raises nothing for those: without their metadata it never fetches them and
    ``getmany`` returns empty for ever. Its cluster view (no public accessor) knows.
    """
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    unauthorized: set[str] = set(getattr(cluster, "unauthorized_topics", None) or ())
    if not unauthorized:
        return set()
    wanted = {tp.topic for tp in consumer.assignment()} | set(consumer.subscription() or ())
    return wanted & unauthorized


async def fetch_retrying(
    consumer: KafkaConsumer,
    *partitions: TopicPartition,
    timeout_ms: int,
    retry_backoff_s: float,
    max_records: int | None = None,
    what: str = "fetch",
    stopping: asyncio.Event | None = None,
) -> Batches:
    """:func:`fetch`, retried every ``retry_backoff_s`` until it succeeds.

    A failed fetch is logged, not raised: the broker or a partition leader is usually
    back within seconds, and the reader must still be there then. A fetch the cluster
    refuses (AuthorizationError, AuthenticationError) is retried every
    :data:`ACCESS_DENIED_BACKOFF_S` at the least, and the consumer counts as not ready
    with the reason (:func:`~mulambda.kafka.health.consumer_problem`) until a fetch
    works. Returns no records once ``stopping`` is set after a failure, so a stopping
    loop is not held up.
    """
    while True:
        try:
            batches = await fetch(
                consumer, *partitions, timeout_ms=timeout_ms, max_records=max_records, what=what
            )
        except KafkaUnavailable as exc:
            log.warning("%s, retrying", exc.reason)
            await _pause(retry_backoff_s, stopping)
        except AccessDenied as exc:
            mark_denied(consumer, exc.reason)
            log.error("%s; retrying in %.0fs", exc.reason, ACCESS_DENIED_BACKOFF_S)
            await _pause(max(retry_backoff_s, ACCESS_DENIED_BACKOFF_S), stopping)
        else:
            mark_denied(consumer, None)
            return batches
        if stopping is not None and stopping.is_set():
            return {}


async def _pause(seconds: float, stopping: asyncio.Event | None) -> None:
    # Sleep, but wake when the reader is told to stop.
    if stopping is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


async def assign_at_end(consumer: KafkaConsumer, partitions: Sequence[TopicPartition]) -> None:
    """Assign ``partitions`` and fix their positions at the current ends, now.

    Kafka consumers otherwise resolve "end" lazily at their first fetch, so a record
    written between this call and that fetch would be skipped. The ends are asked for and
    sought explicitly: since aiokafka 0.13 the reset ``assign`` starts to the consumer's
    ``auto_offset_reset`` may answer after a ``seek_to_end`` and override it
    (``benchmarks/repro_aiokafka_seek_race.py``). KafkaUnavailable on failure.
    """
    try:
        consumer.assign(list(partitions))
        ends = await consumer.end_offsets(list(partitions))
        for tp in partitions:
            consumer.seek(tp, ends[tp])
    except KafkaError as exc:
        raise kafka_error(
            exc, f"cannot position at the end of {len(partitions)} partition(s)"
        ) from exc


async def commit_offsets(consumer: KafkaConsumer, offsets: Mapping[TopicPartition, int]) -> bool:
    """Commit ``offsets`` for the group; False (logged) when the commit failed."""
    try:
        await consumer.commit(dict(offsets))
    except KafkaError as exc:
        # A rebalance took the partition; the new owner re-reads from the last commit.
        log.warning("commit failed (records will be redelivered): %s", exc)
        return False
    return True


async def commit_unset_positions(consumer: KafkaConsumer) -> None:
    """Commit the position of every assigned partition the group never committed.

    Without it a new group's ``latest`` reset would skip what arrives before the first
    fetch, and so would the next owner of a partition after a rebalance.
    KafkaUnavailable when the broker cannot say or store the positions.
    """
    try:
        unset = {}
        for tp in consumer.assignment():
            position = await consumer.position(tp)
            if await consumer.committed(tp) is None:
                unset[tp] = position
        if unset:
            await consumer.commit(unset)
    except KafkaError as exc:
        raise kafka_error(exc, "start positions not committed") from exc


def lag_of(consumer: KafkaConsumer, positions: Mapping[TopicPartition, int]) -> int:
    """Sum over assigned partitions of high watermark minus the caller's position."""
    total = 0
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None and tp in positions:
            total += max(0, high - positions[tp])
    return total


async def end_offsets(
    consumer: KafkaConsumer, partitions: Sequence[TopicPartition], timeout_s: float = 5.0
) -> dict[TopicPartition, int]:
    """The current end (next offset to be written) of each partition, asked of the broker
    (no assignment needed); KafkaUnavailable when it does not answer in time."""
    try:
        async with asyncio.timeout(timeout_s):
            ends = await consumer.end_offsets(list(partitions))
    except (TimeoutError, KafkaError) as exc:
        raise KafkaUnavailable(f"end offsets unavailable: {exc!r}") from exc
    return {tp: int(end) for tp, end in ends.items()}
