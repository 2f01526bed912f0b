"""Fencing zombies by group generation (KIP-447) for exactly-once consumers.

A transactional worker commits its input offsets inside the transaction that carries its
answers. aiokafka sends them with TxnOffsetCommit version 0, which names the group but
not the member: the group coordinator cannot tell the partition's owner from a *zombie*,
a member frozen past its session timeout (a long GC pause, SIGSTOP, a VM stall) whose
partitions were given to another member meanwhile. Continued, the zombie commits one
more transaction: answers the new owner gives too, so a ``read_committed`` reader sees
two. Two halves close the gap:

* **No commit from an old generation.** The offsets go with TxnOffsetCommit version 3,
  which carries the member id, generation and group instance id the offsets were chosen
  under (:class:`Generation`). The coordinator refuses it once that generation is over
  (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID); :class:`FencedOffsets`
  raises :class:`~mulambda.errors.StaleGeneration`, and the transaction is aborted: its
  partitions are someone else's, and what was held for them is redone there.
* **No reading past an open transaction.** A new owner that reads its partitions' committed
  offsets while the previous owner's transaction still carries offsets for them would
  start from the older offset and redo records that transaction is about to commit.
  OffsetFetch version 7 with ``require_stable`` answers UNSTABLE_OFFSET_COMMIT for such a
  partition; a :class:`StableGate` keeps newly assigned partitions unread until their
  offset is stable, then the consumer seeks to it (:func:`fetch_stable_offsets`).

aiokafka 0.12 knows neither request version: they are declared here with its protocol
types. What each broker answer means is decided by pure functions and classes
(:func:`step_for`, :func:`judge_commit`, :class:`StableGate`); the I/O parts only build
requests, send them and read the answers. Needs Kafka 2.5 or later (both versions).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, Final, Generic, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.client import ConnectionGroup, CoordinationType
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.api import Request, Response
from aiokafka.protocol.transaction import AddOffsetsToTxnRequest
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

from mulambda.errors import AuthorizationError, KafkaUnavailable, StaleGeneration
from mulambda.kafka.config import KafkaConsumer
from mulambda.kafka.records import TopicPartition

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Hashable)


class ErrorCode(IntEnum):
    """The Kafka protocol error codes the fencing decisions look at."""

    NONE = 0
    UNKNOWN_TOPIC_OR_PARTITION = 3
    REQUEST_TIMED_OUT = 7
    COORDINATOR_LOAD_IN_PROGRESS = 14
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    ILLEGAL_GENERATION = 22
    UNKNOWN_MEMBER_ID = 25
    REBALANCE_IN_PROGRESS = 27
    GROUP_AUTHORIZATION_FAILED = 30
    CONCURRENT_TRANSACTIONS = 51
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
    FENCED_INSTANCE_ID = 82
    UNSTABLE_OFFSET_COMMIT = 88


def error_name(code: int) -> str:
    """A readable name of a protocol error code."""
    with_name = {c.value: c.name for c in ErrorCode}
    if code in with_name:
        return with_name[code]
    return f"{for_code(code).__name__} ({code})"


# --- the wire: the two request versions aiokafka lacks ---------------------------------
# Both are "flexible" versions: compact strings and arrays, a tag buffer closing every
# structure, and the request header with its own tag buffer (FLEXIBLE_VERSION).

_STR = CompactString("utf-8")


class TxnOffsetCommitResponseV3(Response):  # type: ignore[misc]
    """TxnOffsetCommit v3's answer: an error code per partition."""

    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", _STR),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequestV3(Request):  # type: ignore[misc]
    """TxnOffsetCommit v3 (KIP-447): the offsets, and who commits them."""

    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponseV3
    SCHEMA = Schema(
        ("transactional_id", _STR),
        ("group_id", _STR),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", _STR),
        ("group_instance_id", _STR),
        (
            "topics",
            CompactArray(
                ("name", _STR),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", _STR),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class OffsetFetchResponseV7(Response):  # type: ignore[misc]
    """OffsetFetch v7's answer: the committed offset (or an error) per partition."""

    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", _STR),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", _STR),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequestV7(Request):  # type: ignore[misc]
    """OffsetFetch v7: ``require_stable`` refuses offsets an open transaction changes."""

    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponseV7
    SCHEMA = Schema(
        ("group_id", _STR),
        (
            "topics",
            CompactArray(
                ("name", _STR),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


NO_LEADER_EPOCH: Final = -1
"""The leader epoch sent with committed offsets: unknown (the broker then skips the
epoch check a fetch-from-follower consumer would need)."""


@dataclass(frozen=True, slots=True)
class Generation:
    """Who commits: the consumer's group membership when its offsets were chosen."""

    generation_id: int
    member_id: str
    group_instance_id: str | None = None

    @property
    def known(self) -> bool:
        """Whether this is a membership at all. A consumer the group dropped has none
        (aiokafka resets it to generation -1 and no member id), and the coordinator
        checks neither of those: a commit with them would pass unfenced."""
        return self.generation_id >= 0 and bool(self.member_id)

    def __str__(self) -> str:
        static = f", instance {self.group_instance_id}" if self.group_instance_id else ""
        return f"generation {self.generation_id}, member {self.member_id or '-'}{static}"


def _by_topic(partitions: Iterable[TopicPartition]) -> dict[str, list[int]]:
    topics: dict[str, list[int]] = collections.defaultdict(list)
    for tp in sorted(partitions):
        topics[tp.topic].append(tp.partition)
    return topics


def txn_offset_commit_request(
    *,
    transactional_id: str,
    producer_id: int,
    producer_epoch: int,
    group_id: str,
    generation: Generation,
    offsets: Mapping[TopicPartition, int],
) -> Any:
    """The TxnOffsetCommit v3 request committing ``offsets`` as ``generation``."""
    topics: list[tuple[str, list[tuple[int, int, int, str, dict[int, bytes]]], dict[int, bytes]]]
    topics = [
        (
            topic,
            [(p, offsets[TopicPartition(topic, p)], NO_LEADER_EPOCH, "", {}) for p in parts],
            {},
        )
        for topic, parts in _by_topic(offsets).items()
    ]
    return TxnOffsetCommitRequestV3(
        transactional_id=transactional_id,
        group_id=group_id,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        generation_id=generation.generation_id,
        member_id=generation.member_id,
        group_instance_id=generation.group_instance_id,
        topics=topics,
        tags={},
    )


def commit_errors(response: Any) -> dict[TopicPartition, int]:
    """The error code per partition of a TxnOffsetCommit v3 answer."""
    return {
        TopicPartition(topic, partition): error_code
        for topic, partitions, _tags in response.topics
        for partition, error_code, _ptags in partitions
    }


def offset_fetch_request(group_id: str, partitions: Iterable[TopicPartition]) -> Any:
    """The OffsetFetch v7 request for ``partitions``, stable offsets only."""
    topics: list[tuple[str, list[int], dict[int, bytes]]]
    topics = [(topic, parts, {}) for topic, parts in _by_topic(partitions).items()]
    return OffsetFetchRequestV7(group_id=group_id, topics=topics, require_stable=True, tags={})


@dataclass(frozen=True, slots=True)
class FetchedOffset:
    """One partition of an OffsetFetch answer: the committed offset (-1: none) or an error."""

    offset: int
    error_code: int = ErrorCode.NONE


def fetched_offsets(response: Any) -> dict[TopicPartition, FetchedOffset]:
    """Each partition's committed offset or error from an OffsetFetch v7 answer; a
    group-level error stands for every partition."""
    group_error = response.error_code
    return {
        TopicPartition(topic, partition): FetchedOffset(offset, group_error or error_code)
        for topic, partitions, _tags in response.topics
        for partition, offset, _epoch, _meta, error_code, _ptags in partitions
    }


# --- decisions -------------------------------------------------------------------------


class Step(Enum):
    """What a broker's answer to a transactional request calls for, worst last."""

    DONE = 0
    RETRY = 1
    """Send again after a pause (the coordinator is loading, or busy with this id)."""
    REDISCOVER = 2
    """Look the coordinator up again, then send again."""
    ABORT = 3
    """This transaction cannot carry these offsets now; abort it, keep the answers."""
    FENCED = 4
    """The member's generation is over: abort, and its partitions are not ours."""
    FAILED = 5
    """Something only a new producer can get past (fenced producer, broken state)."""
    DENIED = 6
    """The cluster's ACLs refuse it."""


_STEPS: Final[dict[int, Step]] = {
    ErrorCode.NONE: Step.DONE,
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: Step.RETRY,
    ErrorCode.COORDINATOR_LOAD_IN_PROGRESS: Step.RETRY,
    ErrorCode.CONCURRENT_TRANSACTIONS: Step.RETRY,
    ErrorCode.REQUEST_TIMED_OUT: Step.REDISCOVER,
    ErrorCode.COORDINATOR_NOT_AVAILABLE: Step.REDISCOVER,
    ErrorCode.NOT_COORDINATOR: Step.REDISCOVER,
    ErrorCode.REBALANCE_IN_PROGRESS: Step.ABORT,
    ErrorCode.ILLEGAL_GENERATION: Step.FENCED,
    ErrorCode.UNKNOWN_MEMBER_ID: Step.FENCED,
    ErrorCode.FENCED_INSTANCE_ID: Step.FENCED,
    ErrorCode.GROUP_AUTHORIZATION_FAILED: Step.DENIED,
    ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: Step.DENIED,
}


def step_for(error_code: int) -> Step:
    """What one error code of AddOffsetsToTxn or TxnOffsetCommit calls for; any code not
    named (a fenced producer's INVALID_PRODUCER_EPOCH among them) is FAILED."""
    return _STEPS.get(error_code, Step.FAILED)


@dataclass(frozen=True, slots=True)
class CommitVerdict(Generic[P]):
    """A TxnOffsetCommit answer judged as a whole."""

    step: Step
    """The worst step any partition calls for."""
    again: frozenset[P]
    """Partitions whose offsets are still to be sent (RETRY, REDISCOVER)."""
    error_code: int
    """The code behind ``step`` (0 when DONE)."""


def judge_commit(errors: Mapping[P, int], sent: Collection[P]) -> CommitVerdict[P]:
    """Judge the per-partition ``errors`` of a TxnOffsetCommit that ``sent`` offsets of
    those partitions; a partition the answer leaves out is sent again."""
    worst, worst_code = Step.DONE, int(ErrorCode.NONE)
    again: set[P] = {tp for tp in sent if tp not in errors}
    if again:
        worst = Step.RETRY
        worst_code = int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    for tp, code in errors.items():
        step = step_for(code)
        if step in (Step.RETRY, Step.REDISCOVER):
            again.add(tp)
        if step.value > worst.value:
            worst, worst_code = step, code
    return CommitVerdict(worst, frozenset(again), worst_code)


class StableGate(Generic[P]):
    """Assigned partitions a transactional consumer may not read yet.

    Each newly assigned partition is held (its consumer keeps it paused) until the
    group's committed offset for it is stable, that is no open transaction carries
    offsets for it; then it is let go at that offset. A partition revoked and assigned
    again meanwhile is a new hold: an answer asked for the old one does not let it go.
    """

    def __init__(self) -> None:
        self._held: dict[P, int] = {}
        self._holds = 0

    def hold(self, partitions: Iterable[P]) -> None:
        """Hold newly assigned ``partitions``."""
        for partition in partitions:
            self._holds += 1
            self._held[partition] = self._holds

    def forget(self, partitions: Iterable[P]) -> None:
        """``partitions`` were revoked: nothing to wait for any more."""
        for partition in partitions:
            self._held.pop(partition, None)

    def holds(self, partition: P) -> bool:
        """Whether ``partition`` waits for its stable offset."""
        return partition in self._held

    def ask(self) -> dict[P, int]:
        """The partitions to ask the stable offsets of, with their hold (pass it back to
        :meth:`answered`); empty when nothing waits."""
        return dict(self._held)

    def answered(
        self, asked: Mapping[P, int], answers: Mapping[P, FetchedOffset]
    ) -> dict[P, int | None]:
        """Let go of the asked partitions whose answer is a stable offset, if still held
        by the same hold: each with the offset to read from (None: nothing committed,
        the consumer's reset policy decides). Unstable, failed and unanswered partitions
        stay held, to be asked again."""
        ready: dict[P, int | None] = {}
        for partition, hold in asked.items():
            answer = answers.get(partition)
            if answer is None or answer.error_code != ErrorCode.NONE:
                continue
            if self._held.get(partition) != hold:
                continue  # revoked (and maybe assigned again) since it was asked
            del self._held[partition]
            ready[partition] = answer.offset if answer.offset >= 0 else None
        return ready

    def __len__(self) -> int:
        return len(self._held)


# --- I/O -------------------------------------------------------------------------------


def generation_of(consumer: KafkaConsumer) -> Generation:
    """The group membership ``consumer`` holds now (aiokafka's coordinator knows it;
    a consumer without a group has none)."""
    coordinator = getattr(consumer, "_coordinator", None)
    return Generation(
        generation_id=int(getattr(coordinator, "generation", -1)),
        member_id=str(getattr(coordinator, "member_id", "") or ""),
        group_instance_id=getattr(coordinator, "_group_instance_id", None),
    )


class FencedOffsets:
    """Adds a transaction's consumed offsets as a given group member (KIP-447).

    What aiokafka's ``send_offsets_to_transaction`` does, but with TxnOffsetCommit v3:
    AddOffsetsToTxn to the transaction coordinator (then aiokafka's transaction knows it
    carries offsets, so committing it ends it on the broker), then TxnOffsetCommit to the
    group coordinator, retried while the broker says to. Raises StaleGeneration when the
    group refuses the generation, AuthorizationError when the ACLs do, KafkaUnavailable
    otherwise; bounded by the caller (the transaction's timeout).
    """

    def __init__(self, group_id: str, *, retry_backoff_s: float = 0.05) -> None:
        self._group_id = group_id
        self._retry_backoff_s = retry_backoff_s
        self._coordinators: dict[CoordinationType, int] = {}
        self.refused = 0
        """Commits the group refused as from a generation that is over."""

    async def send(
        self,
        producer: AIOKafkaProducer,
        offsets: Mapping[TopicPartition, int],
        generation: Generation,
    ) -> None:
        """Add ``offsets`` to ``producer``'s open transaction as ``generation``."""
        if not generation.known:
            self.refused += 1
            raise StaleGeneration(f"not a member of group {self._group_id} now ({generation})")
        txn = producer._txn_manager
        if txn is None or not txn.is_in_transaction():
            raise KafkaUnavailable("offsets need an open transaction", retriable=False)
        await self._add_offsets_to_txn(producer, txn)
        # From here the broker's transaction holds the group's offsets partition: aiokafka
        # must end it on commit or abort, not take it for an empty transaction.
        txn.consumer_group_added(self._group_id)
        await self._commit(producer, txn, dict(offsets), generation)

    async def _coordinator(self, producer: AIOKafkaProducer, kind: CoordinationType) -> int:
        node = self._coordinators.get(kind)
        if node is not None:
            return node
        key = producer._txn_manager.transactional_id
        if kind is CoordinationType.GROUP:
            key = self._group_id
        node = int(await producer.client.coordinator_lookup(kind, key))
        self._coordinators[kind] = node
        return node

    async def _send(self, producer: AIOKafkaProducer, kind: CoordinationType, request: Any) -> Any:
        """Send ``request`` to the coordinator of ``kind``; None when it could not be sent
        (the coordinator is looked up again next time)."""
        try:
            node = await self._coordinator(producer, kind)
            return await producer.client.send(node, request, group=ConnectionGroup.COORDINATION)
        except KafkaError as exc:
            log.info("%s not sent (%r): trying again", type(request).__name__, exc)
            self._coordinators.pop(kind, None)
            return None

    async def _add_offsets_to_txn(self, producer: AIOKafkaProducer, txn: Any) -> None:
        while True:
            request = AddOffsetsToTxnRequest[0](
                transactional_id=txn.transactional_id,
                producer_id=txn.producer_id,
                producer_epoch=txn.producer_epoch,
                group_id=self._group_id,
            )
            response = await self._send(producer, CoordinationType.TRANSACTION, request)
            if response is not None:
                step = step_for(response.error_code)
                if step is Step.DONE:
                    return
                self._raise_for(step, response.error_code, "AddOffsetsToTxn")
                if step is Step.REDISCOVER:
                    self._coordinators.pop(CoordinationType.TRANSACTION, None)
            await asyncio.sleep(self._retry_backoff_s)

    async def _commit(
        self,
        producer: AIOKafkaProducer,
        txn: Any,
        offsets: dict[TopicPartition, int],
        generation: Generation,
    ) -> None:
        pending = offsets
        while pending:
            request = txn_offset_commit_request(
                transactional_id=txn.transactional_id,
                producer_id=txn.producer_id,
                producer_epoch=txn.producer_epoch,
                group_id=self._group_id,
                generation=generation,
                offsets=pending,
            )
            response = await self._send(producer, CoordinationType.GROUP, request)
            if response is not None:
                verdict = judge_commit(commit_errors(response), pending)
                if verdict.step is Step.DONE:
                    return
                if verdict.step is Step.FENCED:
                    self.refused += 1
                    raise StaleGeneration(
                        f"group {self._group_id} refused the offsets of {generation}: "
                        f"{error_name(verdict.error_code)}"
                    )
                self._raise_for(verdict.step, verdict.error_code, "TxnOffsetCommit")
                if verdict.step is Step.REDISCOVER:
                    self._coordinators.pop(CoordinationType.GROUP, None)
                pending = {tp: offsets[tp] for tp in verdict.again}
            await asyncio.sleep(self._retry_backoff_s)

    def _raise_for(self, step: Step, error_code: int, what: str) -> None:
        """Raise what ``step`` means when it ends the attempt; return for a retry."""
        reason = f"{what} for group {self._group_id}: {error_name(error_code)}"
        if step is Step.DENIED:
            raise AuthorizationError(f"{reason}: not authorised by the cluster's ACLs")
        if step is Step.FENCED:
            self.refused += 1
            raise StaleGeneration(reason)
        if step is Step.ABORT:
            raise KafkaUnavailable(reason)
        if step is Step.FAILED:
            raise KafkaUnavailable(reason, retriable=False)


async def fetch_stable_offsets(
    consumer: KafkaConsumer, group_id: str, partitions: Collection[TopicPartition]
) -> dict[TopicPartition, FetchedOffset]:
    """The group's committed offsets of ``partitions``, asked with ``require_stable``
    (OffsetFetch v7) of the group coordinator ``consumer`` knows: a partition with
    offsets in an open transaction answers UNSTABLE_OFFSET_COMMIT. KafkaUnavailable when
    the coordinator is unknown or unreachable."""
    coordinator = getattr(consumer, "_coordinator", None)
    node = getattr(coordinator, "coordinator_id", None)
    if node is None:
        raise KafkaUnavailable(f"the coordinator of group {group_id} is not known yet")
    try:
        response = await consumer._client.send(
            node, offset_fetch_request(group_id, partitions), group=ConnectionGroup.COORDINATION
        )
    except KafkaError as exc:
        raise KafkaUnavailable(f"stable offsets of group {group_id}: {exc!r}") from exc
    return fetched_offsets(response)
