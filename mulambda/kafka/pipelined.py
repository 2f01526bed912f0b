"""The pipelined group consumer: many records in flight across fetches, committed safely.

Which offsets may be committed is decided by the pure
:class:`~mulambda.kafka.commits.CommitTracker`; this module moves records and offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from aiokafka.abc import ConsumerRebalanceListener

from mulambda.errors import KafkaUnavailable, MulambdaError
from mulambda.kafka.commits import CommitTracker, Taken
from mulambda.kafka.config import (
    KafkaConfig,
    KafkaConsumer,
    Membership,
    close_consumer,
    start_consumer,
)
from mulambda.kafka.fencing import ErrorCode, StableGate, fetch_stable_offsets, generation_of
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
from mulambda.kafka.transactions import TransactionalProducer, current_position
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES
from mulambda.wire.events import WireModel

log = logging.getLogger(__name__)

RETRY_COMMIT_S = 0.2
"""Exactly once: the longest a consumer waits between commits while answers are held
(the last commit failed; nothing was finished since)."""


class PipelinedConsumer(ConsumerRebalanceListener, Lifecycle):  # type: ignore[misc]
    """A group consumer that keeps up to ``concurrency`` records in flight, across fetches.

    :class:`~mulambda.kafka.consumer.ConsumerLoop` fetches the next batch only once the
    current one is handled, so a record fetched alongside a slow one waits for it. For a
    router, whose handling takes as long as the executors do, that doubled round trips
    under steady load. Here a record starts as soon as it is read; order within a
    partition is not kept.

    At least once: per partition, the committed offset is the lowest offset still in
    flight (or past the last fetched record when none is), so nothing is committed
    before it was answered or dead-lettered. Bad input and retries: see
    :class:`~mulambda.kafka.records.RecordProcessor`; a delivery future a handler
    returns is awaited, and its failure dead-letters the record. A record that could not
    be finished (not even dead-lettered) is handled again with growing backoff, so it
    never holds its partition's commit point for good. On a rebalance the records of
    revoked partitions are finished (within ``grace_s``) and committed first.

    Exactly once, with ``transactions``: handlers answer through that
    :class:`~mulambda.kafka.transactions.TransactionalProducer`, and each commit sends
    the answers of the records below the commit points together with the offsets in one
    transaction, instead of committing offsets alone. A transaction starts as soon as a
    record is answered and the one before it is done, at most every ``commit_interval_s``
    (0: no wait): alone when idle, the answers made during a commit all in the next one
    under load (a group commit). The
    offsets go with the group generation they were chosen in, so a zombie (frozen past
    its session timeout, its partitions moved) commits nothing; and a newly assigned
    partition stays paused until its committed offset is stable, so a previous owner's
    transaction still carrying offsets for it is committed or aborted before it is read
    from there (:mod:`mulambda.kafka.fencing`).
    """

    def __init__(
        self,
        config: KafkaConfig,
        topics: Mapping[str, type[WireModel]],
        handler: Handler,
        *,
        group_id: str,
        membership: Membership | None = None,
        dead_letters: DeadLetterer,
        on_invalid: InvalidHandler | None = None,
        concurrency: int = 64,
        grace_s: float = 10.0,
        max_retries: int = 3,
        retry_backoff_s: float = 0.2,
        commit_interval_s: float = 0.2,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        transactions: TransactionalProducer | None = None,
        max_unfinished_backoff_s: float = 5.0,
        stable_poll_s: float = 0.1,
    ) -> None:
        self._config = config
        self._topics = list(topics)
        self._group_id = group_id
        self._membership = membership
        self._concurrency = max(1, concurrency)
        self._grace_s = grace_s
        self._retry_backoff_s = retry_backoff_s
        self._commit_interval_s = commit_interval_s
        self._max_record_bytes = max_record_bytes
        self._transactions = transactions
        self._max_unfinished_backoff_s = max_unfinished_backoff_s
        self._commit_lock = asyncio.Lock()
        self._committer: asyncio.Task[None] | None = None
        self._consumer: KafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._freed = asyncio.Event()
        self._answered = asyncio.Event()  # transactional: a record was finished
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
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._offsets: CommitTracker[TopicPartition] = CommitTracker()
        self._last_commit = 0.0
        # Transactional only: new partitions wait for stable offsets (module fencing).
        self._gate: StableGate[TopicPartition] = StableGate()
        self._gated = asyncio.Event()
        self._stable_poll_s = stable_poll_s
        self._stabilizer: asyncio.Task[None] | None = None

    @property
    def done(self) -> asyncio.Task[None] | None:
        """The fetch task; it ends only on stop or failure."""
        return self._task

    @property
    def in_flight(self) -> int:
        """Records being handled now."""
        return len(self._tasks)

    @property
    def consumer(self) -> KafkaConsumer | None:
        """The underlying consumer (for readiness and lag), once started."""
        return self._consumer

    def lag(self) -> int:
        """Records between what was taken into work and the high watermarks."""
        if self._consumer is None:
            return 0
        return lag_of(self._consumer, self._offsets.positions())

    async def start(self) -> None:
        """Connect, subscribe and begin fetching in a background task."""
        if self._consumer is not None:
            return
        consumer = await start_consumer(
            self._config,
            "consumer",
            group_id=self._group_id,
            membership=self._membership,
            auto_offset_reset="earliest",
            max_record_bytes=self._max_record_bytes,
        )
        consumer.subscribe(self._topics, listener=self)
        self._stopping.clear()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="mulambda-pipelined")
        if self._transactions is not None:
            # A failed transaction may have committed: the group's offsets tell.
            self._transactions.resolve_with(self._committed_offsets)
            # Answers wait for their transaction: commit on a clock, not only after fetches.
            self._committer = asyncio.create_task(
                self._commit_when_answered(consumer), name="mulambda-committer"
            )
            self._stabilizer = asyncio.create_task(
                self._release_when_stable(consumer), name="mulambda-stable-offsets"
            )

    async def stop(self) -> None:
        """Stop fetching, let in-flight records finish within the grace, commit, close."""
        consumer, task = self._consumer, self._task
        self._consumer, self._task = None, None
        if consumer is None:
            return
        self._stopping.set()
        for background in (self._committer, self._stabilizer):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        self._committer = self._stabilizer = None
        if task is not None:
            try:
                await task  # leaves its loop within one fetch timeout
            except Exception:
                log.exception("consumer loop failed")
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=self._grace_s)
            if late:
                # Their offsets stay in flight, hence uncommitted: the next owner redoes them.
                log.warning("%d record(s) unfinished after %.1fs grace", len(late), self._grace_s)
                for straggler in late:
                    straggler.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        await self._commit(consumer, force=True)
        await close_consumer(consumer)

    async def _committed_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        consumer = self._consumer
        if consumer is None:
            raise KafkaUnavailable("the consumer is stopped")
        return {tp: await consumer.committed(tp) for tp in partitions}

    # rebalance listener

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Finish and commit the revoked partitions' records before the new owner starts."""
        gone = set(revoked)
        tasks = [t for t, tp in self._tasks.items() if tp in gone]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self._grace_s)
            if late and self._transactions is not None:
                # Their answers would be held for partitions this consumer no longer owns:
                # were a partition to come back, a later transaction would commit them
                # although the next owner redoes those records. Cancelled, nothing of
                # theirs leaves (their answers only ever wait in the transaction buffer).
                log.warning("%d record(s) of revoked partitions cancelled", len(late))
                for straggler in late:
                    straggler.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        consumer = self._consumer
        if consumer is not None:
            await self._commit(consumer, force=True, only=gone)
        self._offsets.revoke(gone)
        if self._transactions is not None:
            self._transactions.drop(gone)
            self._gate.forget(gone)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Positions come from the group's committed offsets. Transactional: each new
        partition is paused until its committed offset is stable (module docstring)."""
        consumer = self._consumer
        if self._transactions is None or consumer is None or not assigned:
            return
        # Paused before this callback yields: the fetcher has no position for a new
        # partition yet, so nothing of it was returned before.
        consumer.pause(*assigned)
        self._gate.hold(assigned)
        self._gated.set()

    async def _release_when_stable(self, consumer: KafkaConsumer) -> None:
        """Ask the stable offsets of the held partitions until each is let go: seek it to
        that offset and resume it."""
        while True:
            await self._gated.wait()
            asked = self._gate.ask()
            if not asked:
                self._gated.clear()
                continue
            try:
                answers = await fetch_stable_offsets(consumer, self._group_id, list(asked))
            except MulambdaError as exc:
                log.info("stable offsets not read yet: %s", exc.reason)
                answers = {}
            ready = self._gate.answered(asked, answers)
            owned = consumer.assignment()
            for tp, offset in ready.items():
                if tp not in owned:
                    continue
                if offset is not None:
                    consumer.seek(tp, offset)
                consumer.resume(tp)
            unsettled = {
                tp: a.error_code
                for tp, a in answers.items()
                if self._gate.holds(tp) and a.error_code != ErrorCode.UNSTABLE_OFFSET_COMMIT
            }
            if unsettled:
                log.warning("stable offsets refused: %s", unsettled)
            if self._gate.ask():
                await asyncio.sleep(self._stable_poll_s)

    # fetching

    async def _run(self, consumer: KafkaConsumer) -> None:
        while not self._stopping.is_set():
            self._freed.clear()  # before counting, so no completion is missed
            free = self._concurrency - len(self._tasks)
            if free <= 0:
                # Not a zero wait: exactly once commits as soon as answers are ready
                # (interval 0), and a zero timeout here spun while every slot was busy.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._freed.wait(), self._commit_interval_s or RETRY_COMMIT_S
                    )
                await self._commit_after_fetch(consumer)
                continue
            batches = await fetch_retrying(
                consumer,
                timeout_ms=200,
                max_records=free,
                retry_backoff_s=self._retry_backoff_s,
                stopping=self._stopping,
            )
            if self._stopping.is_set():
                break  # not taken into work, so not committed: redelivered
            for tp, records in batches.items():
                for raw in records:
                    self._spawn(tp, raw)
            await self._commit_after_fetch(consumer)

    async def _commit_after_fetch(self, consumer: KafkaConsumer) -> None:
        """Commit between fetches, at most every ``commit_interval_s``; exactly once,
        the committer task commits as records finish, and a transaction here would only
        hold up the next fetch."""
        if self._transactions is None:
            await self._commit(consumer)

    def _spawn(self, tp: TopicPartition, raw: RawRecord) -> None:
        taken = self._offsets.take(tp, raw.offset)
        task = asyncio.create_task(self._process(taken, raw))
        self._tasks[task] = tp
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._freed.set()
        self._answered.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("record task failed", exc_info=task.exception())

    async def _process(self, taken: Taken[TopicPartition], raw: RawRecord) -> None:
        current_position.set((taken.partition, taken.offset))
        backoff = self._retry_backoff_s
        while True:
            finished = await self._process_once(raw)
            if finished:
                self._offsets.finished(taken)
                return
            if self._stopping.is_set():
                # Left uncommitted on purpose: the next owner handles it again.
                self._offsets.failed(taken)
                return
            log.warning(
                "%s[%d]@%d unfinished, handling it again in %.1fs",
                raw.topic,
                raw.partition,
                raw.offset,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_unfinished_backoff_s)

    async def _process_once(self, raw: RawRecord) -> bool:
        finished, delivery = await self._processor.process(raw)
        if delivery is not None:
            try:
                await delivery
            except Exception as exc:
                finished = await self._processor.dead_letter(raw, exc)
        return finished

    async def _commit_when_answered(self, consumer: KafkaConsumer) -> None:
        """Commit (a transaction) when a record was finished, and at least every
        :data:`RETRY_COMMIT_S` (a failed commit's answers are still held)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), RETRY_COMMIT_S)
            self._answered.clear()  # records finished from here on: the next commit
            try:
                await self._commit(consumer, force=True)
            except Exception:
                log.exception("transactional commit failed")
            if self._commit_interval_s > 0:
                await asyncio.sleep(self._commit_interval_s)

    async def _commit(
        self,
        consumer: KafkaConsumer,
        *,
        force: bool = False,
        only: set[TopicPartition] | None = None,
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self._commit_interval_s:
            return
        self._last_commit = now
        async with self._commit_lock:
            offsets = self._offsets.to_commit(consumer.assignment(), only)
            if not offsets:
                return
            if self._transactions is not None:
                # Read with the offsets, before any await: the membership they belong to.
                generation = generation_of(consumer)
                committed = await self._transactions.commit(offsets, generation)
            else:
                committed = await commit_offsets(consumer, offsets)
            if committed:
                self._offsets.committed(offsets)
