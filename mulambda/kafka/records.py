"""What becomes of one consumed record: decode, handle with retries, answer or dead-letter.

:class:`RecordProcessor` is shared by both consumers, so they treat bad input the same
way; :class:`DeadLetterer` keeps what nobody could handle; :func:`answer_invalid_requests`
builds the hook that answers an undecodable request with an error reply instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

from aiokafka import ConsumerRecord, TopicPartition

from mulambda.errors import DecodeError, MulambdaError
from mulambda.kafka.producer import AnswerSink
from mulambda.wire.codec import ReplyAddress, decode, peek_reply_address
from mulambda.wire.events import DeadLetter, WireModel

log = logging.getLogger(__name__)

M = TypeVar("M", bound=WireModel)

RawRecord: TypeAlias = ConsumerRecord
"""A record as the consumer fetched it: bytes, not yet decoded."""


@dataclass(frozen=True, slots=True)
class Record(Generic[M]):
    """A decoded record; ``value`` is None for a tombstone."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: M | None
    headers: Mapping[str, bytes] = field(default_factory=dict)
    timestamp_ms: int = 0
    raw: bytes | None = None

    @classmethod
    def of(cls, raw: RawRecord, value: M | None) -> Record[M]:
        """``raw`` with its decoded ``value``."""
        return cls(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            key=raw.key,
            value=value,
            headers=dict(raw.headers or ()),
            timestamp_ms=raw.timestamp,
            raw=raw.value,
        )

    @property
    def key_str(self) -> str | None:
        """The key as text."""
        return None if self.key is None else self.key.decode(errors="replace")


Handler = Callable[[Record[Any]], Awaitable["Awaitable[Any] | None"]]
"""Handles one record. Raise MulambdaError: retriable ones are retried, others dead-lettered.

A handler that produced an answer may return its delivery future instead of awaiting it:
the loop awaits every such future of a batch before committing, so answers are pipelined
yet nothing is committed unanswered.
"""

InvalidHandler = Callable[[RawRecord, DecodeError], Awaitable[bool]]
"""Called for an undecodable record; return True if it was answered (no dead letter)."""

ErrorReply = Callable[[ReplyAddress, DecodeError], WireModel]
"""Builds the error answer to an undecodable request (an InferenceResult, a SelectionReply)."""


@dataclass(slots=True)
class ConsumerStats:
    """Counters a worker exposes on /metrics."""

    handled: int = 0
    dead_lettered: int = 0
    retries: int = 0
    batches: int = 0
    left: int = 0
    """Records left uncommitted for redelivery (stopping, or dead-lettering failed)."""


class DeadLetterer:
    """Writes records nobody could handle to the dead-letter topic, with the reason."""

    def __init__(self, producer: AnswerSink, topic: str, group: str | None) -> None:
        self._producer = producer
        self._topic = topic
        self._group = group

    async def dead_letter(self, record: RawRecord, error: BaseException) -> None:
        """Publish and wait for the ack, so the record is safe before its offset commits."""
        reason = error.reason if isinstance(error, MulambdaError) else f"{error!r}"
        letter = DeadLetter(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            original_key=record.key,
            original_value=record.value,
            reason=reason[:4000] or type(error).__name__,
            error_type=type(error).__name__,
            consumer_group=self._group,
        )
        log.warning(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )
        await self._producer.send_and_wait(self._topic, letter, key=record.key)


def answer_invalid_requests(
    producer: AnswerSink,
    error_reply: ErrorReply,
    *,
    correlation_header: str | None = None,
    vet_address: Callable[[ReplyAddress], Awaitable[str | None]] | None = None,
    on_answered: Callable[[], None] | None = None,
) -> InvalidHandler:
    """The ``on_invalid`` hook of a request consumer: tell the requester what was wrong.

    The reply address is peeked from the undecodable body; when none is readable the
    hook returns False and the record is dead-lettered. Otherwise ``error_reply`` builds
    the answer, which is sent to the address (keyed by correlation id, with the
    ``correlation_header`` when given) and awaited. ``vet_address`` may name a reason the
    address is unusable (the record is then dead-lettered instead); so does a failed
    send. ``on_answered`` runs after each delivered answer (metrics).
    """

    async def answer(raw: RawRecord, error: DecodeError) -> bool:
        address = peek_reply_address(raw.value)
        if address is None:
            return False
        try:
            if vet_address is not None:
                problem = await vet_address(address)
                if problem is not None:
                    log.warning("invalid request with an unusable reply address: %s", problem)
                    return False
            headers = (
                [(correlation_header, address.correlation_id.encode())]
                if correlation_header is not None
                else None
            )
            await producer.send_and_wait(
                address.topic,
                error_reply(address, error),
                key=address.correlation_id,
                partition=address.partition,
                headers=headers,
            )
        except MulambdaError as failure:
            log.warning("error reply to an invalid request failed: %s", failure.reason)
            return False
        if on_answered is not None:
            on_answered()
        return True

    return answer


Outcome = tuple[bool, "Awaitable[Any] | None"]
"""What became of one record: (finished, delivery). Not finished means: do not commit
past it, it will be read again. ``delivery`` is the answer's pending delivery, if any."""


class RecordProcessor:
    """One record's fate: decode, handle with retries, else answer or dead-letter.

    Shared by :class:`~mulambda.kafka.consumer.ConsumerLoop` and
    :class:`~mulambda.kafka.pipelined.PipelinedConsumer`, so both treat bad input the
    same way: an undecodable record goes to ``on_invalid`` (which may answer it, e.g.
    with an error reply) or to the dead-letter topic; retriable handler errors are
    retried with backoff up to ``max_retries``; other errors, and a handler crash,
    dead-letter the record. While stopping, a retriable failure is left for the next
    owner instead; so is a record whose dead letter could not be written.
    """

    def __init__(
        self,
        models: Mapping[str, type[WireModel]],
        handler: Handler,
        *,
        dead_letters: DeadLetterer,
        on_invalid: InvalidHandler | None,
        max_record_bytes: int,
        max_retries: int,
        retry_backoff_s: float,
        stopping: asyncio.Event,
        stats: ConsumerStats,
    ) -> None:
        self._models = dict(models)
        self._handler = handler
        self._letters = dead_letters
        self._on_invalid = on_invalid
        self._max_record_bytes = max_record_bytes
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        self._stopping = stopping
        self.stats = stats

    async def process(self, raw: RawRecord) -> Outcome:
        """Handle ``raw``; see the class docstring for what happens on failure."""
        model = self._models.get(raw.topic)
        try:
            if model is None:
                raise DecodeError(f"no model registered for topic {raw.topic}")
            value = (
                None
                if raw.value is None
                else decode(model, raw.value, max_bytes=self._max_record_bytes)
            )
        except DecodeError as exc:
            if self._on_invalid is not None:
                try:
                    if await self._on_invalid(raw, exc):
                        self.stats.handled += 1
                        return True, None
                except Exception as reply_exc:  # an unusable reply address: dead-letter
                    log.warning("error reply to an invalid record failed: %r", reply_exc)
            return await self.dead_letter(raw, exc), None
        record: Record[Any] = Record.of(raw, value)
        attempt = 0
        while True:
            try:
                delivery = await self._handler(record)
            except MulambdaError as exc:
                if exc.retriable and self._stopping.is_set():
                    log.warning("left for redelivery while stopping: %s", exc.reason)
                    self.stats.left += 1
                    return False, None
                if exc.retriable and attempt < self._max_retries:
                    attempt += 1
                    self.stats.retries += 1
                    await asyncio.sleep(self._retry_backoff_s * 2 ** (attempt - 1))
                    continue
                return await self.dead_letter(raw, exc), None
            except Exception as exc:
                # A bug in a handler must not stop the loop or lose the record.
                log.exception("handler crashed on %s[%d]@%d", raw.topic, raw.partition, raw.offset)
                return await self.dead_letter(raw, exc), None
            self.stats.handled += 1
            return True, delivery

    async def dead_letter(self, raw: RawRecord, error: BaseException) -> bool:
        """Dead-letter ``raw``; False (leave it uncommitted) if even that fails."""
        try:
            await self._letters.dead_letter(raw, error)
        except MulambdaError as exc:
            log.error(
                "could not dead-letter %s[%d]@%d (left uncommitted): %s",
                raw.topic,
                raw.partition,
                raw.offset,
                exc.reason,
            )
            self.stats.left += 1
            return False
        self.stats.dead_lettered += 1
        return True


__all__ = [
    "ConsumerStats",
    "DeadLetterer",
    "ErrorReply",
    "Handler",
    "InvalidHandler",
    "Outcome",
    "RawRecord",
    "Record",
    "RecordProcessor",
    "TopicPartition",
    "answer_invalid_requests",
]
