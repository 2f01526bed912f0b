"""The producer of MuLambda messages: idempotent, and recovering from what aiokafka cannot.

aiokafka's idempotent producer has one failure it never leaves by itself: once a batch
fails with ``OutOfOrderSequenceNumber`` (or the broker forgets the producer id, or fences
its epoch), every later batch fails the same way until the process restarts
(aio-libs/aiokafka#1017). A broker restart under load is enough to get there: sends that
failed while the leader was away leave a gap in the sequence. :class:`Producer` replaces
the client with a new one (a new producer id, so the broker starts a new sequence) and
sends the failed records again on it. A record that failed that way was not written, so
sending it again duplicates nothing.

Errors raised before a record is even queued (no leader, metadata timeout, broker away)
are retried with backoff until ``delivery_timeout_s``; only then does the delivery fail.
aiokafka itself retries batches that were queued. Whether the producer currently gets
through is in :attr:`Producer.health`, which workers put into ``/readyz``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.partitioner import murmur2

from mulambda.errors import KafkaUnavailable, MulambdaError
from mulambda.kafka.config import FRAMING_HEADROOM_BYTES, KafkaConfig, kafka_error, start_bounded
from mulambda.kafka.health import LinkHealth
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES, encode, encode_key
from mulambda.wire.events import WireModel

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = DEFAULT_MAX_RECORD_BYTES + FRAMING_HEADROOM_BYTES
"""The largest produce request: one record of the largest size plus its batch framing."""

FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)
"""Errors after which this producer id is of no more use: the client is replaced."""

NOT_WRITTEN_ERRORS: tuple[type[BaseException], ...] = (
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    KafkaTimeoutError,
)
"""Delivery failures that mean the broker never wrote the batch (no leader took it, or it
expired unsent): sending the record again cannot duplicate it. An ambiguous failure (a
request that timed out after it was sent) is not among them and fails the delivery."""

MAX_RECOVERIES_PER_RECORD = 5
"""A record whose sends keep failing fatally on new producers fails after this many."""


async def await_delivery(delivery: Awaitable[Any], what: str) -> Any:
    """Await a delivery future of :meth:`Producer.send`; KafkaUnavailable(``what``) on failure."""
    try:
        return await delivery
    except KafkaError as exc:
        raise kafka_error(exc, what) from exc


def is_fatal(error: BaseException) -> bool:
    """Whether ``error`` means the producer id is dead (replace the client, send again)."""
    return isinstance(error, FATAL_PRODUCER_ERRORS)


def is_retriable_before_queueing(error: BaseException) -> bool:
    """Whether a failed ``send`` (the record was never queued) may simply be tried again.

    Nothing was written, so any transient cause qualifies: aiokafka's retriable errors,
    and a timeout waiting for metadata or a connection while the broker is away.
    """
    if isinstance(error, KafkaTimeoutError | KafkaConnectionError):
        return True
    return isinstance(error, KafkaError) and bool(getattr(error, "retriable", False))


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """One record on its way, as given to :meth:`AnswerSink.send_raw`: what both
    producers hand to the client (the plain one at once, the transactional one in the
    record's transaction)."""

    topic: str
    value: bytes | None
    key: bytes | None
    partition: int | None
    headers: list[tuple[str, bytes]] | None

    @classmethod
    def of(
        cls,
        topic: str,
        value: bytes | None,
        key: str | bytes | None,
        partition: int | None,
        headers: Sequence[tuple[str, bytes]] | None,
    ) -> OutgoingRecord:
        """The record for :meth:`AnswerSink.send_raw`'s arguments."""
        return cls(topic, value, encode_key(key), partition, list(headers) if headers else None)

    async def queue_on(self, client: AIOKafkaProducer) -> asyncio.Future[Any]:
        """Queue this record on ``client``; the future settles with its delivery."""
        queued: asyncio.Future[Any] = await client.send(
            self.topic,
            value=self.value,
            key=self.key,
            partition=self.partition,
            headers=self.headers,
        )
        return queued


ClientFactory = Callable[[], AIOKafkaProducer]


def idempotent_client(config: KafkaConfig, *, linger_ms: int, **extra: Any) -> AIOKafkaProducer:
    """An unstarted acks=all idempotent aiokafka producer taking the largest records;
    ``extra`` adds client arguments (the transactional id)."""
    return AIOKafkaProducer(
        **config.client_kwargs(),
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_request_size=MAX_REQUEST_BYTES,
        **extra,
    )


PlainProducer: TypeAlias = AIOKafkaProducer
"""aiokafka's producer, for tools that must not share MuLambda's recovery (load generators
that stand in for foreign clients)."""


def plain_producer(
    bootstrap_servers: str, *, client_id: str, request_timeout_s: float
) -> PlainProducer:
    """An unstarted acks=all producer without idempotence or MuLambda's resends, as a
    plain client application would run one; start it with :func:`start_bounded`."""
    producer: PlainProducer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        request_timeout_ms=int(request_timeout_s * 1000),
        retry_backoff_ms=100,
    )
    return producer


def default_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as in Java)."""
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


class AnswerSink(abc.ABC):
    """Where a worker sends messages: a :class:`Producer` (delivered when acknowledged),
    or a :class:`~mulambda.kafka.transactions.TransactionalProducer` (held for the
    record's transaction). Subclasses implement :meth:`send_raw`."""

    @abc.abstractmethod
    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue pre-encoded bytes; the future settles when they are safe."""

    async def send(
        self,
        topic: str,
        message: WireModel | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one message (None: a tombstone); await the future for its delivery.

        The future fails with aiokafka's error; :func:`await_delivery` translates it.
        """
        value = None if message is None else encode(message)
        return await self.send_raw(topic, value, key=key, partition=partition, headers=headers)

    async def send_and_wait(
        self,
        topic: str,
        message: WireModel | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Any:
        """Send one message and wait until it is safe; KafkaUnavailable on failure."""
        fut = await self.send(topic, message, key=key, partition=partition, headers=headers)
        return await await_delivery(fut, f"delivery to {topic} failed")


class Producer(AnswerSink, Lifecycle):
    """Idempotent producer (acks=all) of MuLambda messages that survives broker restarts.

    ``send`` queues a record and returns a future of its delivery (aiokafka's record
    metadata, or the error); ``send_and_wait`` awaits it. Pass ``None`` as the message
    to write a tombstone. See the module docstring for what is retried and how.
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        linger_ms: int = 2,
        delivery_timeout_s: float = 120.0,
        retry_backoff_s: float = 0.1,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self._config = config
        self._linger_ms = linger_ms
        self._delivery_timeout_s = delivery_timeout_s
        self._retry_backoff_s = retry_backoff_s
        self._client_factory = client_factory or self._new_client
        self._producer: AIOKafkaProducer | None = None
        self._generation = 0
        self._replacing = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self.health = LinkHealth()
        """Failing from a send that could not get through until the next delivery."""
        self.recoveries = 0
        """Clients replaced after a fatal idempotence error."""

    def _new_client(self) -> AIOKafkaProducer:
        return idempotent_client(self._config, linger_ms=self._linger_ms)

    async def start(self) -> None:
        """Connect; raises KafkaUnavailable within the config's timeout."""
        if self._producer is not None:
            return
        producer = self._client_factory()
        await start_bounded(producer, "producer", self._config.request_timeout_s)
        self._producer = producer

    async def stop(self) -> None:
        """Flush what is pending and close; safe to call twice."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    @property
    def started(self) -> bool:
        """Whether ``start`` succeeded and ``stop`` was not called since."""
        return self._producer is not None

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise MulambdaError("producer is not started")
        return self._producer

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue pre-encoded bytes; KafkaUnavailable when not even queueing succeeds in time."""
        outgoing = OutgoingRecord.of(topic, value, key, partition, headers)
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        give_up = time.monotonic() + self._delivery_timeout_s
        await self._queue(outgoing, delivery, 0, give_up)
        return delivery

    async def _queue(
        self,
        outgoing: OutgoingRecord,
        delivery: asyncio.Future[Any],
        recoveries: int,
        give_up: float,
    ) -> None:
        """Hand ``outgoing`` to the current client; its ack settles ``delivery``.

        ``give_up`` (monotonic) ends the retries of transient failures.
        """
        while True:
            producer, generation = self._require(), self._generation
            try:
                queued = await outgoing.queue_on(producer)
            except KafkaError as exc:
                self.health.failed(f"send to {outgoing.topic}: {exc}")
                if is_fatal(exc) and recoveries < MAX_RECOVERIES_PER_RECORD:
                    await self._replace(generation, exc)
                    recoveries += 1
                    continue
                if is_retriable_before_queueing(exc) and time.monotonic() < give_up:
                    await asyncio.sleep(self._retry_backoff_s)
                    continue
                raise kafka_error(exc, f"send to {outgoing.topic} failed") from exc
            queued.add_done_callback(
                functools.partial(
                    self._settle,
                    outgoing=outgoing,
                    delivery=delivery,
                    generation=generation,
                    recoveries=recoveries,
                    give_up=give_up,
                )
            )
            return

    def _settle(
        self,
        queued: asyncio.Future[Any],
        *,
        outgoing: OutgoingRecord,
        delivery: asyncio.Future[Any],
        generation: int,
        recoveries: int,
        give_up: float,
    ) -> None:
        if delivery.done():
            return
        if queued.cancelled():
            delivery.cancel()
            return
        error = queued.exception()
        if error is None:
            self.health.succeeded()
            delivery.set_result(queued.result())
            return
        self.health.failed(f"delivery to {outgoing.topic}: {error!r}")
        fatal = is_fatal(error) and recoveries < MAX_RECOVERIES_PER_RECORD
        unwritten = isinstance(error, NOT_WRITTEN_ERRORS) and time.monotonic() < give_up
        if (fatal or unwritten) and self.started:
            task = asyncio.create_task(
                self._resend(outgoing, delivery, generation if fatal else None, recoveries, give_up)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        delivery.set_exception(error)

    async def _resend(
        self,
        outgoing: OutgoingRecord,
        delivery: asyncio.Future[Any],
        generation: int | None,
        recoveries: int,
        give_up: float,
    ) -> None:
        """Send ``outgoing`` again: on a new client when ``generation``'s died, else after
        a backoff on the current one."""
        try:
            if generation is not None:
                await self._replace(generation, None)
                recoveries += 1
            else:
                await asyncio.sleep(self._retry_backoff_s)
            await self._queue(outgoing, delivery, recoveries, give_up)
        except asyncio.CancelledError:
            if not delivery.done():
                delivery.set_exception(KafkaUnavailable("producer stopped before redelivery"))
            raise
        except Exception as exc:
            if not delivery.done():
                delivery.set_exception(exc)

    async def _replace(self, generation: int, error: BaseException | None) -> None:
        """Swap in a new client unless one already replaced the client of ``generation``."""
        async with self._replacing:
            if generation != self._generation or self._producer is None:
                return
            old = self._producer
            log.warning(
                "producer id unusable (%s): replacing the Kafka producer",
                error or "fatal idempotence error",
            )
            new = self._client_factory()
            await start_bounded(new, "producer", self._config.request_timeout_s)
            self._producer = new
            self._generation += 1
            self.recoveries += 1
        # The old client may hold batches that will fail the same way (and be sent again
        # on the new one); closing it must not hold up the caller.
        task = asyncio.create_task(self._close_quietly(old))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_quietly(self, client: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.stop(), self._config.request_timeout_s)

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged."""
        if self._producer is not None:
            await self._producer.flush()
