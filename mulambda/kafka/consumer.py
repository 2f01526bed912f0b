"""The in-order consumer loop: a batch at a time, committed once every record is done.

At least once: offsets are committed only after every record of a batch was handled,
dead-lettered, or answered with an error. A record that cannot be decoded goes to the
dead-letter topic with the reason and the original bytes, and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from mulambda.errors import MulambdaError
from mulambda.kafka.config import KafkaConfig, KafkaConsumer, Membership, start_consumer
from mulambda.kafka.fetching import commit_offsets, fetch_retrying, lag_of
from mulambda.kafka.records import (
    ConsumerStats,
    DeadLetterer,
    Handler,
    InvalidHandler,
    RawRecord,
    RecordProcessor,
    TopicPartition,
)
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES
from mulambda.wire.events import WireModel

log = logging.getLogger(__name__)


async def _undelivered(
    records: Sequence[RawRecord], pending: Sequence[Awaitable[Any] | None]
) -> list[tuple[RawRecord, BaseException]]:
    """Await every delivery; the records whose answer failed, with the error."""
    waiting = [(raw, fut) for raw, fut in zip(records, pending, strict=True) if fut is not None]
    results = await asyncio.gather(*(fut for _, fut in waiting), return_exceptions=True)
    return [
        (raw, result)
        for (raw, _), result in zip(waiting, results, strict=True)
        if isinstance(result, BaseException)
    ]


class ConsumerLoop(Lifecycle):
    """Consumes ``topics`` (name → message model) a batch at a time, in order.

    For consumers whose records must be applied in order (materialisation) or are quick
    to answer (the selector); :class:`~mulambda.kafka.pipelined.PipelinedConsumer` suits
    slow handlers. Records are handled one after another; answers a handler returns as
    delivery futures are awaited together before the batch's offsets are committed (at
    least once). A batch whose answers failed is read again, up to ``max_retries``
    times, then the records whose answers could not be delivered are dead-lettered. Bad
    input: see :class:`~mulambda.kafka.records.RecordProcessor`.
    """

    def __init__(
        self,
        config: KafkaConfig,
        topics: Mapping[str, type[WireModel]],
        handler: Handler,
        *,
        group_id: str | None,
        membership: Membership | None = None,
        dead_letters: DeadLetterer,
        on_invalid: InvalidHandler | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_retries: int = 3,
        retry_backoff_s: float = 0.2,
        auto_offset_reset: str = "earliest",
        max_batch: int = 500,
        partitions: Sequence[TopicPartition] | None = None,
        commit_interval_s: float = 0.0,
    ) -> None:
        """``commit_interval_s``: a group's offsets are committed at most this often
        (and when the loop stops); 0: after every batch. A crash or rebalance redelivers
        what was handled since the last commit."""
        self._config = config
        self._commit_interval_s = commit_interval_s
        self._uncommitted: dict[TopicPartition, int] = {}
        self._last_commit = -math.inf  # the first commit goes out at once
        self._topics = list(topics)
        # Given partitions are assigned (no group rebalancing), else the topics subscribed.
        self._partitions = list(partitions) if partitions else None
        self._group_id = group_id
        self._membership = membership
        self._max_record_bytes = max_record_bytes
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        self._auto_offset_reset = auto_offset_reset
        self._max_batch = max_batch
        self._consumer: KafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.stats = ConsumerStats()
        self._processor = RecordProcessor(
            topics,
            handler,
            dead_letters=dead_letters,
            on_invalid=on_invalid,
            max_record_bytes=max_record_bytes,
            max_retries=max_retries,
            retry_backoff_s=retry_backoff_s,
            stopping=self._stopping,
            stats=self.stats,
        )
        self.positions: dict[TopicPartition, int] = {}
        """Next offset to handle per partition (for lag metrics)."""

    @property
    def consumer(self) -> KafkaConsumer | None:
        """The underlying consumer (for lag metrics), once started."""
        return self._consumer

    async def start(self) -> None:
        """Connect, subscribe and begin consuming in a background task."""
        if self._consumer is not None:
            return
        consumer = await start_consumer(
            self._config,
            "consumer",
            group_id=self._group_id,
            membership=self._membership,
            auto_offset_reset=self._auto_offset_reset,
            max_record_bytes=self._max_record_bytes,
        )
        if self._partitions:
            consumer.assign(self._partitions)
        else:
            consumer.subscribe(self._topics)
        self._consumer = consumer
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(consumer), name="mulambda-consumer")

    async def wait_assigned(self, timeout_s: float = 30.0) -> None:
        """Wait until the group gave this consumer its partitions."""
        consumer = self._consumer
        if consumer is None:
            raise MulambdaError("consumer is not started")
        async with asyncio.timeout(timeout_s):
            while not consumer.assignment():  # noqa: ASYNC110 - aiokafka has no such event
                await asyncio.sleep(0.05)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop fetching, finish the batch in hand within ``grace_s``, commit, close."""
        consumer, task = self._consumer, self._task
        self._consumer, self._task = None, None
        if consumer is None:
            return
        self._stopping.set()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), grace_s)
            except TimeoutError:
                log.warning("consumer did not finish its batch within %.1fs", grace_s)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # we are being cancelled ourselves
            except Exception:
                log.exception("consumer loop failed")
        await consumer.stop()

    def lag(self) -> int:
        """Records between what was handled and the partitions' high watermarks."""
        return lag_of(self._consumer, self.positions) if self._consumer is not None else 0

    @property
    def done(self) -> asyncio.Task[None] | None:
        """The background task; a worker awaits it to notice a crashed loop."""
        return self._task

    async def _run(self, consumer: KafkaConsumer) -> None:
        redeliveries = 0
        while not self._stopping.is_set():
            batches = await fetch_retrying(
                consumer,
                timeout_ms=200,
                max_records=self._max_batch,
                retry_backoff_s=self._retry_backoff_s,
                stopping=self._stopping,
            )
            if not batches:
                await self._commit(consumer)
                continue
            flat = [raw for records in batches.values() for raw in records]
            outcomes = [await self._processor.process(raw) for raw in flat]
            failed = await _undelivered(flat, [delivery for _, delivery in outcomes])
            unfinished = not all(finished for finished, _ in outcomes)
            if unfinished or failed:
                redeliveries += 1
                give_up = redeliveries > self._max_retries and not unfinished
                if not give_up:
                    # Read the batch again rather than commit unanswered records.
                    why = failed[0][1] if failed else "records left unfinished"
                    log.warning("re-reading the batch: %s", why)
                    owned = consumer.assignment()
                    for tp, records in batches.items():
                        # A partition lost to a rebalance meanwhile is its new owner's
                        # to read from the last commit; seeking it would fail.
                        if records and tp in owned:
                            consumer.seek(tp, records[0].offset)
                    await asyncio.sleep(self._retry_backoff_s * 2 ** min(redeliveries - 1, 5))
                    continue
                # Persistently undeliverable answers: keep the requests, with the reason.
                for raw, error in failed:
                    await self._processor.dead_letter(raw, error)
            redeliveries = 0
            offsets = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
            self.stats.batches += 1
            self.positions.update(offsets)
            self._uncommitted.update(offsets)
            await self._commit(consumer)
        await self._commit(consumer, force=True)

    async def _commit(self, consumer: KafkaConsumer, *, force: bool = False) -> None:
        """Commit the handled offsets when the interval has passed (or ``force``)."""
        if self._group_id is None or not self._uncommitted:
            return
        now = time.monotonic()
        if not force and now - self._last_commit < self._commit_interval_s:
            return
        offsets, self._uncommitted = self._uncommitted, {}
        self._last_commit = now
        owned = consumer.assignment()
        # Partitions lost to a rebalance since are their new owner's to commit.
        offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if offsets:
            await commit_offsets(consumer, offsets)
