"""Exactly-once answers: a record's answers and its offset commit in one Kafka transaction.

A worker in exactly-once mode does not send its answers (results, error results, dead
letters) when it makes them: :class:`TransactionalProducer` holds them under the
position of the record being handled (the :data:`current_position` a
:class:`~mulambda.kafka.pipelined.PipelinedConsumer` sets for each record's task).
When the consumer commits, the answers of every record below each partition's commit
point are sent in one transaction together with those commit points
(``send_offsets_to_transaction``), and committed or aborted together. Answers of
records above a commit point (a slower record still in flight before them) wait for the
next transaction, so a committed answer always has a committed offset: after a crash the
records that are read again are exactly those whose answers were never committed, and a
reader with ``isolation.level=read_committed`` sees one answer per record.

Which answers a transaction may carry is decided by the pure :class:`AnswerBuffer`.

A transaction whose outcome is unknown (it failed or timed out once its commit may
have reached the coordinator) is resolved before the next one carries its answers again:
the client that replaces the failed one fences it and finishes its transaction, after
which the group's committed offsets tell whether it committed (:func:`committed_anyway`);
without that check, answers committed by the failed transaction would be sent twice.
Every transaction is bounded by ``transaction_timeout_s`` (the broker aborts a longer one
anyway), and any failure of the client, including aiokafka's transaction manager left
in its fatal state (it then raises AssertionError on the next transition), replaces it:
a stuck or broken client never holds the answers back for good.

Fencing: the transactional id names the worker instance, so a restarted instance
fences its predecessor's open transaction at once. An instance that dies for good
leaves its open transaction to the broker's transaction timeout (``transaction_timeout_s``),
during which ``read_committed`` readers of the partitions it wrote wait. A *zombie*, an
instance frozen past its session timeout whose partitions moved to another member, is
fenced by its group generation (:mod:`mulambda.kafka.fencing`): a commit given the
consumer's :class:`~mulambda.kafka.fencing.Generation` sends its offsets with it, and
when the group refuses that generation the transaction is aborted and the answers of its
partitions are dropped for good (the new owner redoes those records): they are never
sent again, and answers made for those partitions until they are revoked are discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from mulambda.errors import KafkaUnavailable, MulambdaError, StaleGeneration
from mulambda.kafka.config import KafkaConfig, start_bounded
from mulambda.kafka.fencing import FencedOffsets, Generation
from mulambda.kafka.health import LinkHealth
from mulambda.kafka.producer import AnswerSink, OutgoingRecord, idempotent_client
from mulambda.kafka.records import TopicPartition
from mulambda.runtime.lifecycle import Lifecycle

log = logging.getLogger(__name__)

P = TypeVar("P")
A = TypeVar("A")

current_position: ContextVar[tuple[TopicPartition, int] | None] = ContextVar(
    "mulambda_current_position", default=None
)
"""The (partition, offset) of the record whose handling is running in this task."""


@dataclass(slots=True)
class AnswerBuffer(Generic[P, A]):
    """Answers per partition and offset, released once their offset may be committed.

    A partition whose commit the group refused (fenced: its generation is over) holds
    nothing more until it is revoked: its records are redone by their new owner.
    """

    _held: dict[P, dict[int, list[A]]] = field(default_factory=dict)
    _fenced: set[P] = field(default_factory=set)

    def add(self, partition: P, offset: int, answer: A) -> bool:
        """Hold ``answer`` of the record at ``offset`` of ``partition``; False (discarded)
        when the partition is fenced."""
        if partition in self._fenced:
            return False
        self._held.setdefault(partition, {}).setdefault(offset, []).append(answer)
        return True

    def releasable(self, points: Mapping[P, int]) -> list[A]:
        """Answers of records below each partition's commit point, in offset order."""
        out: list[A] = []
        for partition, point in points.items():
            held = self._held.get(partition)
            if not held:
                continue
            for offset in sorted(o for o in held if o < point):
                out.extend(held[offset])
        return out

    def released(self, points: Mapping[P, int]) -> None:
        """The answers :meth:`releasable` gave for ``points`` were committed: forget them."""
        for partition, point in points.items():
            held = self._held.get(partition)
            if not held:
                continue
            for offset in [o for o in held if o < point]:
                del held[offset]
            if not held:
                del self._held[partition]

    def drop(self, partitions: Iterable[P]) -> int:
        """Forget what ``partitions`` hold (revoked: the next owner redoes those records);
        a fenced partition that comes back later is a new assignment, held again."""
        dropped = 0
        for partition in partitions:
            self._fenced.discard(partition)
            held = self._held.pop(partition, None)
            if held:
                dropped += sum(len(answers) for answers in held.values())
        return dropped

    def fence(self, partitions: Iterable[P]) -> int:
        """The group refused ``partitions``' commit: drop what they hold and discard what
        they are given until :meth:`drop` (their revocation). How many were dropped."""
        partitions = list(partitions)
        dropped = self.drop(partitions)
        self._fenced.update(partitions)
        return dropped

    def fenced(self, partitions: Iterable[P]) -> set[P]:
        """Those of ``partitions`` that are fenced."""
        return self._fenced.intersection(partitions)

    def __len__(self) -> int:
        return sum(len(a) for held in self._held.values() for a in held.values())


def committed_anyway(points: Mapping[P, int], committed: Mapping[P, int | None]) -> dict[P, int]:
    """Of a failed transaction's commit ``points``, those the group's ``committed`` offsets
    reached: the transaction committed after all (atomic, so all or none of its own; a
    partition committed past its point by a later owner has no answers held here)."""
    return {
        tp: point
        for tp, point in points.items()
        if (done := committed.get(tp)) is not None and done >= point
    }


CommittedOffsets = Callable[[list[TopicPartition]], Awaitable[Mapping[TopicPartition, int | None]]]
"""Reads the group's committed offsets of some partitions (the consumer's coordinator)."""


class TransactionalProducer(AnswerSink, Lifecycle):
    """Holds a record's answers and sends them with its offset commit in one transaction.

    An :class:`~mulambda.kafka.producer.AnswerSink` like the plain producer, so a
    worker's answering code and the :class:`~mulambda.kafka.records.DeadLetterer` work
    unchanged: sends return at once (their delivery futures already done), the answer
    being held for :meth:`commit`, which the consumer calls.
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        transactional_id: str,
        group_id: str,
        transaction_timeout_s: float = 3.0,
        linger_ms: int = 2,
    ) -> None:
        self._config = config
        self._transactional_id = transactional_id
        self._group_id = group_id
        self._transaction_timeout_s = transaction_timeout_s
        self._linger_ms = linger_ms
        self._client: AIOKafkaProducer | None = None
        self._buffer: AnswerBuffer[TopicPartition, OutgoingRecord] = AnswerBuffer()
        self._lock = asyncio.Lock()
        self.health = LinkHealth()
        """Failing from a transaction that did not commit until the next one that did."""
        self.transactions = 0
        """Transactions committed."""
        self.aborted = 0
        """Transactions that failed (their answers are sent again in the next one)."""
        self.committed_after_all = 0
        """Failed transactions that the group's committed offsets showed committed."""
        self._unsure: dict[TopicPartition, int] | None = None
        """Commit points of the last failed transaction, until its outcome is known."""
        self._committed_offsets: CommittedOffsets | None = None
        self._fencing = FencedOffsets(group_id)
        self.fenced = 0
        """Commits refused because the group's generation they were made in is over."""

    def resolve_with(self, committed_offsets: CommittedOffsets) -> None:
        """How to read the group's committed offsets (the consumer's): needed to tell
        whether a failed transaction committed after all. Without it a failure is taken
        as an abort."""
        self._committed_offsets = committed_offsets

    def _new_client(self) -> AIOKafkaProducer:
        return idempotent_client(
            self._config,
            linger_ms=self._linger_ms,
            transactional_id=self._transactional_id,
            transaction_timeout_ms=int(self._transaction_timeout_s * 1000),
        )

    async def start(self) -> None:
        """Connect and fence any earlier instance with the same transactional id."""
        if self._client is not None:
            return
        client = self._new_client()
        await start_bounded(client, "transactional producer", self._config.request_timeout_s)
        self._client = client

    async def stop(self) -> None:
        """Close; what is still held was never committed and is redone by the next owner."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(KafkaError, OSError):
                await client.stop()

    @property
    def started(self) -> bool:
        """Whether ``start`` succeeded and ``stop`` was not called since."""
        return self._client is not None

    @property
    def held(self) -> int:
        """Answers waiting for their transaction."""
        return len(self._buffer)

    # --- the Producer-like side: called while a record is handled ---------------------

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Hold pre-encoded bytes; MulambdaError outside a record's handling."""
        position = current_position.get()
        if position is None:
            raise MulambdaError("a transactional answer needs the record it answers")
        answer = OutgoingRecord.of(topic, value, key, partition, headers)
        self._buffer.add(position[0], position[1], answer)
        held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        held.set_result(None)
        return held

    # --- the consumer's side ----------------------------------------------------------

    async def commit(
        self, offsets: Mapping[TopicPartition, int], generation: Generation | None = None
    ) -> bool:
        """Send the answers below ``offsets`` and commit ``offsets``, in one transaction.

        ``generation``: the group membership the offsets were chosen under; the group
        refuses them when it is over (a zombie). None sends them as aiokafka does,
        unfenced (pre-KIP-447). True when committed. On failure the transaction is
        aborted (or the client replaced), the answers stay held, and False tells the
        consumer to try again; when the generation was refused (or a partition was
        fenced before) the answers of those partitions are dropped instead.
        """
        if not offsets:
            return True
        async with self._lock:
            client = self._client
            if client is None or not await self._resolve_unsure():
                return False
            if self._buffer.fenced(offsets):
                return False  # not ours since the group refused them; revoked soon
            if generation is not None and not generation.known:
                # Not a member now (the group dropped it): nothing can be committed as
                # this member any more, and its partitions are redone by their next owner.
                self._fence(offsets, f"not a member of group {self._group_id} now")
                return False
            answers = self._buffer.releasable(offsets)
            try:
                async with asyncio.timeout(self._transaction_timeout_s):
                    await client.begin_transaction()
                    deliveries = [await a.queue_on(client) for a in answers]
                    if generation is None:
                        await client.send_offsets_to_transaction(dict(offsets), self._group_id)
                    else:
                        # The answers reach their partitions before the offsets are added,
                        # so a failed send aborts before any offset, and the two do not
                        # race at the transaction coordinator.
                        for delivery in deliveries:
                            await delivery
                        await self._fencing.send(client, offsets, generation)
                    await client.commit_transaction()
                for delivery in deliveries:
                    delivery.result()  # committed: every send succeeded
            except StaleGeneration as exc:
                self._fence(offsets, exc.reason)
                await self._recover(client)
                return False
            except Exception as exc:  # aiokafka raises AssertionError from its fatal state
                self.aborted += 1
                reason = "timed out" if isinstance(exc, TimeoutError) else "failed"
                self.health.failed(f"transaction {reason}: {exc!r}")
                log.warning("transaction of %d answer(s) %s: %r", len(answers), reason, exc)
                self._unsure = dict(offsets)
                await self._recover(client)
                return False
            self._buffer.released(offsets)
            self.transactions += 1
            self.health.succeeded()
            return True

    async def _resolve_unsure(self) -> bool:
        """Whether the last failed transaction's outcome is known (releasing its answers
        when it committed after all); False while the committed offsets cannot be read."""
        unsure = self._unsure
        if unsure is None:
            return True
        if self._committed_offsets is None:
            self._unsure = None
            return True
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                committed = await self._committed_offsets(list(unsure))
        except Exception as exc:
            log.warning("cannot read the committed offsets yet: %r", exc)
            return False
        done = committed_anyway(unsure, committed)
        if done:
            self.committed_after_all += 1
            log.warning(
                "the failed transaction committed after all (%d partition(s)): its answers "
                "are not sent again",
                len(done),
            )
            self._buffer.released(done)
        self._unsure = None
        return True

    def _fence(self, offsets: Mapping[TopicPartition, int], reason: str) -> None:
        """The group refused these partitions' commit: their answers are never sent."""
        self.fenced += 1
        dropped = self._buffer.fence(offsets)
        log.warning(
            "fenced (%s): %d answer(s) of %d partition(s) dropped, redone by their new owner",
            reason,
            dropped,
            len(offsets),
        )

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget the answers of revoked partitions (their records are redone elsewhere)."""
        dropped = self._buffer.drop(partitions)
        if dropped:
            log.info("dropped %d uncommitted answer(s) of revoked partitions", dropped)

    async def _recover(self, client: AIOKafkaProducer) -> None:
        """Abort the failed transaction; when even that fails, start a new client."""
        try:
            await asyncio.wait_for(client.abort_transaction(), self._config.request_timeout_s)
            return
        except Exception as exc:
            log.warning("abort failed (%r): replacing the transactional producer", exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.stop(), self._config.request_timeout_s)
        new = self._new_client()
        try:
            await start_bounded(new, "transactional producer", self._config.request_timeout_s)
        except KafkaUnavailable as exc:
            log.warning("transactional producer not back yet: %s", exc.reason)
            self._client = None
            await self._restart_later()
            return
        self._client = new

    async def _restart_later(self) -> None:
        """Keep trying to start a client (the broker is away); commits fail meanwhile."""
        while self._client is None:
            await asyncio.sleep(1.0)
            new = self._new_client()
            try:
                await start_bounded(new, "transactional producer", self._config.request_timeout_s)
            except KafkaUnavailable:
                continue
            self._client = new
