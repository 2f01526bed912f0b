"""Request/reply over Kafka: send a request, await the reply matched by correlation id.

Routers, the SDK and benchmarks use :class:`Requester` for selection requests (and any
other :class:`~mulambda.wire.events.RequestModel` whose answer carries ``correlation_id``).

Design: one shared reply topic, one partition per requester
    All requesters share one reply topic (``Topic.SELECTION_REPLIES``, 12 partitions in
    ``topics/catalog.yaml``) instead of a topic per instance, so nothing has to be created
    or cleaned up per process. Each requester reads exactly one partition of it, assigned
    manually: there is no consumer group, so no rebalance can ever move the partition
    away while requests are in flight. The partition is the caller's choice
    (``reply_partition``) or derived deterministically from ``instance_id`` (CRC-32 modulo
    the partition count), so a restarted instance keeps its partition.

    Two instances may land on the same partition (more instances than partitions, or a
    hash collision). That costs bandwidth, never correctness: each reply is matched by its
    correlation id against this instance's pending requests; replies that match none are
    dropped and counted as ``stats.foreign``, or as ``stats.late`` when they answer one of
    this instance's requests that already timed out.

No reply is lost to the start-up race
    ``start()`` assigns the partition, seeks to its end and *awaits* the resulting position
    before returning. Kafka consumers otherwise resolve "end" lazily at their first fetch,
    so a reply written between the first send and that fetch would be skipped. Every
    request is sent after ``start()`` returned, so its reply lies at or after the fixed
    position.

Addressing
    Every request carries ``reply_topic``, ``reply_partition``, ``correlation_id`` and
    ``deadline`` (now + timeout) in its body, and the first three also as the headers
    :data:`~mulambda.kafka.reply.HEADER_REPLY_TOPIC`, ``HEADER_REPLY_PARTITION`` and
    ``HEADER_CORRELATION_ID`` (:mod:`mulambda.kafka.reply`, shared with the responders).
    Responders answer with :func:`~mulambda.kafka.reply.send_reply`, which
    writes the reply to that topic and partition, keyed by correlation id, with the
    correlation id header; the requester then skips foreign replies without decoding them.

Concurrency
    One reader task dispatches replies to futures through a dict lookup (the
    :class:`~mulambda.routing.correlation.CorrelationTable`), so thousands of requests
    can be in flight at once; each caller awaits only its own future.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from mulambda.errors import (
    ConfigurationError,
    DecodeError,
    KafkaUnavailable,
    MulambdaError,
    RequestTimeout,
)
from mulambda.kafka import (
    KafkaConfig,
    KafkaConsumer,
    Producer,
    RawRecord,
    TopicPartition,
    assign_at_end,
    await_delivery,
    close_consumer,
    fetch_retrying,
    partitions_of,
    start_consumer,
)
from mulambda.kafka.reply import (
    HEADER_CORRELATION_ID,
    header_value,
    partition_for,
    request_headers,
)
from mulambda.routing.correlation import CorrelationTable, RequesterStats
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES, ReplyAddress, decode
from mulambda.wire.events import RequestModel, WireModel, utcnow

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=RequestModel)
Rep = TypeVar("Rep", bound=WireModel)


class RequesterClosed(MulambdaError):
    """The requester stopped (or its reader failed) while the request was pending."""

    retriable = True


class Requester(Generic[Req, Rep], Lifecycle):
    """Sends requests to ``request_topic`` and awaits replies on one reply partition.

    ``reply_model`` is the message type replies decode into; it must have a
    ``correlation_id`` field (e.g. ``Requester[SelectionRequest, SelectionReply]`` with
    ``reply_model=SelectionReply``). ``reply_partition`` pins the partition; otherwise
    it is :func:`~mulambda.kafka.reply.partition_for` of ``instance_id`` (a random id
    when None). ``producer`` is shared and left running on stop; without one the
    requester owns a producer.
    ``unclaimed`` receives every decoded reply that no pending request awaits (after it
    was counted late or foreign); with it, such replies are decoded even when their
    correlation-id header already says they match nothing (the SDK yields them).
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        request_topic: str,
        reply_topic: str,
        reply_model: type[Rep],
        reply_partition: int | None = None,
        producer: Producer | None = None,
        instance_id: str | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        unclaimed: Callable[[Rep], None] | None = None,
    ) -> None:
        if reply_partition is not None and reply_partition < 0:
            raise ConfigurationError(f"reply partition must be >= 0, got {reply_partition}")
        if "correlation_id" not in reply_model.model_fields:
            raise ConfigurationError(f"{reply_model.__name__} has no correlation_id field")
        self._config = config
        self.request_topic = request_topic
        """Full name of the topic requests go to."""
        self.reply_topic = reply_topic
        """Full name of the shared reply topic."""
        self._reply_model = reply_model
        self._requested_partition = reply_partition
        self.instance_id = instance_id or f"{config.client_id}-{uuid.uuid4().hex[:12]}"
        """Identity of this requester; decides the reply partition when none is given."""
        self._shared_producer = producer
        self._producer: Producer | None = None
        self._owns_producer = producer is None
        self._max_record_bytes = max_record_bytes
        self._unclaimed = unclaimed
        self._consumer: KafkaConsumer | None = None
        self._partition: int | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._pending: CorrelationTable[Rep] = CorrelationTable()
        self._closed_reason: str | None = None
        self.stats: RequesterStats = self._pending.stats
        """Counts of requests and replies (the same object for the requester's life)."""

    # --- lifecycle -------------------------------------------------------------------

    @property
    def reply_partition(self) -> int:
        """The partition this requester reads; known once started."""
        if self._partition is None:
            raise MulambdaError("requester is not started")
        return self._partition

    @property
    def started(self) -> bool:
        """Whether ``start`` succeeded and ``stop`` was not called since."""
        return self._consumer is not None

    @property
    def in_flight(self) -> int:
        """Requests awaiting their reply now."""
        return len(self._pending)

    @property
    def consumer(self) -> KafkaConsumer | None:
        """The reply consumer (for lag metrics and tests), once started."""
        return self._consumer

    async def start(self) -> None:
        """Start the producer, assign the reply partition and fix its starting offset.

        Raises KafkaUnavailable when Kafka is unreachable within the config's timeout,
        ConfigurationError when the reply topic does not exist or has no such partition.
        """
        if self._consumer is not None:
            return
        producer = self._shared_producer or Producer(self._config)
        if self._owns_producer:
            await producer.start()
        elif not producer.started:
            raise ConfigurationError("the shared producer must be started before the requester")
        try:
            consumer = await start_consumer(
                self._config, "requester", max_record_bytes=self._max_record_bytes
            )
            try:
                partition = await self._assign(consumer)
            except BaseException:
                await close_consumer(consumer)
                raise
        except BaseException:
            if self._owns_producer:
                await producer.stop()
            raise
        self._producer, self._consumer, self._partition = producer, consumer, partition
        self._closed_reason = None
        self._reader = asyncio.create_task(self._read(consumer, partition), name="mulambda-replies")
        self._sender = asyncio.create_task(self._send(producer), name="mulambda-requests")
        log.info("requester %s reads %s[%d]", self.instance_id, self.reply_topic, partition)

    async def _assign(self, consumer: KafkaConsumer) -> int:
        timeout = self._config.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                parts = {tp.partition for tp in await partitions_of(self._config, self.reply_topic)}
                count = len(parts)
                partition = self._requested_partition
                if partition is None:
                    partition = partition_for(self.instance_id, count)
                elif partition not in parts:
                    raise ConfigurationError(
                        f"reply topic {self.reply_topic} has {count} partitions; "
                        f"no partition {partition}"
                    )
                # Resolve "end" now: every reply to a request sent after this lies beyond.
                await assign_at_end(consumer, [TopicPartition(self.reply_topic, partition)])
        except (TimeoutError, KafkaUnavailable) as exc:
            raise KafkaUnavailable(
                f"requester: cannot assign {self.reply_topic} within {timeout:g}s "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return partition

    async def stop(self) -> None:
        """Stop reading, fail pending requests with RequesterClosed, close; idempotent."""
        consumer, reader, producer = self._consumer, self._reader, self._producer
        sender = self._sender
        self._consumer, self._reader, self._producer, self._sender = None, None, None, None
        if consumer is None:
            return
        self._fail_pending("requester stopped")
        for task in (sender, reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        while not self._outbox.empty():
            handoff = self._outbox.get_nowait().handoff
            if not handoff.done():
                handoff.set_exception(RequesterClosed("requester stopped before sending"))
        await close_consumer(consumer)
        if producer is not None and self._owns_producer:
            await producer.stop()

    def _fail_pending(self, reason: str) -> None:
        self._closed_reason = reason
        self._pending.fail_all(lambda request: RequesterClosed(f"{reason} (request {request})"))

    # --- requests --------------------------------------------------------------------

    def reply_fields(self, timeout_s: float) -> dict[str, Any]:
        """``reply_topic``, ``reply_partition`` and ``deadline`` for building a request.

        :meth:`request` overwrites these fields anyway; this only saves inventing
        placeholders for the required ones: ``SelectionRequest(**r.reply_fields(5), ...)``.
        """
        return {
            "reply_topic": self.reply_topic,
            "reply_partition": self._partition,
            "deadline": utcnow() + timedelta(seconds=timeout_s),
        }

    async def request(
        self,
        message: Req,
        *,
        key: str | bytes | None = None,
        timeout_s: float = 5.0,
    ) -> Rep:
        """Send ``message`` and return its reply.

        The message is sent with this requester's reply topic and partition and
        ``deadline = now + timeout_s``; its ``correlation_id`` is kept (a fresh one by
        default). ``key`` defaults to the message's ``client_id`` when it has one (the
        catalog keys selection and inference requests by client id).

        Raises RequestTimeout when no reply arrives within ``timeout_s`` (delivery
        included), RequesterClosed when the requester stops meanwhile, DecodeError when
        the reply for this request is undecodable, KafkaUnavailable when the request
        cannot be delivered, and MulambdaError when not started or the correlation id
        is already in flight.
        """
        producer, partition = self._producer, self._partition
        if producer is None or partition is None or self._consumer is None:
            raise MulambdaError(self._closed_reason or "requester is not started")
        if self._reader is not None and self._reader.done():
            raise RequesterClosed(self._closed_reason or "reply reader stopped")
        if not timeout_s > 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout_s}")
        correlation_id = message.correlation_id
        outgoing = message.model_copy(
            update={
                "reply_topic": self.reply_topic,
                "reply_partition": partition,
                "deadline": utcnow() + timedelta(seconds=timeout_s),
            }
        )
        if key is None:
            client_id = getattr(message, "client_id", None)
            key = client_id if isinstance(client_id, str) else None
        address = ReplyAddress(self.reply_topic, partition, correlation_id)
        handoff: asyncio.Future[asyncio.Future[Any]] = asyncio.get_running_loop().create_future()
        # Registered before sending: the reply may be read before the send returns.
        # Refused (MulambdaError) while a request with this id is in flight.
        future = self._pending.register(correlation_id)
        self._outbox.put_nowait(_Outgoing(outgoing, key, request_headers(address), handoff))
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                delivery = await handoff
                await await_delivery(delivery, f"request to {self.request_topic} not delivered")
                return await future
        except TimeoutError:
            self._pending.timed_out(correlation_id)
            raise RequestTimeout(
                f"no reply to {correlation_id} on {self.reply_topic}[{partition}] "
                f"within {timeout_s:g}s (waited {time.monotonic() - started:.3f}s)"
            ) from None
        finally:
            self._pending.release(correlation_id, future)
            if not handoff.done():
                handoff.cancel()
            elif not handoff.cancelled():
                handoff.exception()  # failed by stop() while we were elsewhere: seen here

    async def _send(self, producer: Producer) -> None:
        # One task enqueues every request: with thousands of callers each awaiting
        # producer.send, aiokafka wakes all of them whenever a partition's full batch
        # drains (a thundering herd, ~10x slower on a hot key than sending in turn).
        while True:
            item = await self._outbox.get()
            if item.handoff.done():
                continue  # the caller gave up while queued
            try:
                delivery = await producer.send(
                    self.request_topic, item.message, key=item.key, headers=item.headers
                )
            except asyncio.CancelledError:
                if not item.handoff.done():
                    item.handoff.set_exception(RequesterClosed("requester stopped while sending"))
                raise
            except Exception as exc:
                if not item.handoff.done():
                    item.handoff.set_exception(exc)
                continue
            self.stats.sent += 1
            delivery.add_done_callback(_observe)
            if not item.handoff.done():
                item.handoff.set_result(delivery)

    # --- reader ----------------------------------------------------------------------

    async def _read(self, consumer: KafkaConsumer, partition: int) -> None:
        tp = TopicPartition(self.reply_topic, partition)
        try:
            while True:
                batches = await fetch_retrying(
                    consumer,
                    tp,
                    timeout_ms=500,
                    max_records=2000,
                    retry_backoff_s=0.2,
                    what="reply fetch",
                )
                for records in batches.values():
                    for record in records:
                        self._dispatch(record)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug here must not leave callers hanging until their timeouts.
            log.exception("reply reader of %s failed", self.instance_id)
            self._fail_pending("reply reader failed")

    def _dispatch(self, record: RawRecord) -> None:
        correlation_id = header_value(record, HEADER_CORRELATION_ID)
        if (
            correlation_id is not None
            and correlation_id not in self._pending
            and self._unclaimed is None
        ):
            self._pending.count_unmatched(correlation_id)
            return
        try:
            reply = decode(self._reply_model, record.value, max_bytes=self._max_record_bytes)
        except DecodeError as exc:
            log.warning(
                "undecodable reply %s[%d]@%d dropped: %s",
                record.topic,
                record.partition,
                record.offset,
                exc.reason,
            )
            self._pending.reject(correlation_id, DecodeError(f"undecodable reply: {exc.reason}"))
            return
        reply_id = getattr(reply, "correlation_id", None)
        if correlation_id is not None and reply_id != correlation_id:
            log.warning(
                "reply %s[%d]@%d: header correlation id %s differs from body's %s; using body",
                record.topic,
                record.partition,
                record.offset,
                correlation_id,
                reply_id,
            )
        # A body without a string id matches no request: counted as foreign.
        matched = self._pending.resolve(reply_id if isinstance(reply_id, str) else "", reply)
        if not matched and self._unclaimed is not None:
            self._unclaimed(reply)


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A request waiting for the sender task; ``handoff`` receives the delivery future."""

    message: WireModel
    key: str | bytes | None
    headers: list[tuple[str, bytes]]
    handoff: asyncio.Future[asyncio.Future[Any]]


def _observe(delivery: asyncio.Future[Any]) -> None:
    # The caller may be gone (timed out) when a delivery fails; mark it seen so asyncio
    # does not log "exception was never retrieved". Callers still awaiting it get it.
    if not delivery.cancelled():
        delivery.exception()


__all__ = ["Requester", "RequesterClosed", "RequesterStats"]
