"""Kafka plumbing every worker shares: config, producer, consumer loop, replay, admin.

The consumer loop is at-least-once: offsets are committed only after every record of a
batch was handled, dead-lettered, or answered with an error. A record that cannot be
decoded goes to the dead-letter topic with the reason and the original bytes, and the
loop goes on. aiokafka errors are translated to :mod:`mulambda.errors` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from mulambda.errors import (
    ConfigurationError,
    DecodeError,
    KafkaUnavailable,
    MulambdaError,
    RequestTimeout,
)
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.runtime.settings import Settings
from mulambda.wire.catalog import Catalog
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES, decode, encode, encode_key
from mulambda.wire.events import DeadLetter, WireModel

log = logging.getLogger(__name__)

M = TypeVar("M", bound=WireModel)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """How to reach the cluster; built from Settings by runners, explicit everywhere else."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    request_timeout_s: float = 10.0
    client_id: str = "mulambda"

    @classmethod
    def from_settings(cls, settings: Settings, client_id: str = "mulambda") -> KafkaConfig:
        """Read the Kafka fields of the process settings."""
        pwd = settings.kafka_sasl_password
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=pwd.get_secret_value() if pwd else None,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
            request_timeout_s=settings.kafka_request_timeout_s,
            client_id=client_id,
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to aiokafka producers, consumers and admin clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
            "request_timeout_ms": int(self.request_timeout_s * 1000),
        }
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ConfigurationError("SASL needs mechanism, username and password")
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        if self.security_protocol.endswith("SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            kwargs["ssl_context"] = context
        return kwargs


async def start_bounded(client: Any, what: str, timeout_s: float) -> None:
    """Start an aiokafka client, failing within ``timeout_s`` with a one-line reason."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.start()
    except (TimeoutError, KafkaError, OSError) as exc:
        with contextlib.suppress(Exception):
            await client.close() if hasattr(client, "close") else await client.stop()
        raise KafkaUnavailable(
            f"{what}: Kafka unreachable within {timeout_s:g}s ({type(exc).__name__}: {exc})"
        ) from exc


# --- producer ------------------------------------------------------------------------


class Producer(Lifecycle):
    """Idempotent producer (acks=all) of MuLambda messages.

    ``send`` only enqueues and returns a future of the delivery; ``send_and_wait`` awaits
    it. Pass ``None`` as the message to write a tombstone.
    """

    def __init__(self, config: KafkaConfig, *, linger_ms: int = 2) -> None:
        self._config = config
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect; raises KafkaUnavailable within the config's timeout."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            **self._config.client_kwargs(),
            acks="all",
            enable_idempotence=True,
            linger_ms=self._linger_ms,
            max_request_size=DEFAULT_MAX_RECORD_BYTES + 65536,
        )
        await start_bounded(producer, "producer", self._config.request_timeout_s)
        self._producer = producer

    async def stop(self) -> None:
        """Flush what is pending and close; safe to call twice."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    @property
    def started(self) -> bool:
        """Whether ``start`` succeeded and ``stop`` was not called since."""
        return self._producer is not None

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise MulambdaError("producer is not started")
        return self._producer

    async def send(
        self,
        topic: str,
        message: WireModel | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Enqueue one record; await the returned future for the broker's ack."""
        value = None if message is None else encode(message)
        return await self.send_raw(topic, value, key=key, partition=partition, headers=headers)

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Enqueue pre-encoded bytes."""
        try:
            fut: asyncio.Future[Any] = await self._require().send(
                topic,
                value=value,
                key=encode_key(key),
                partition=partition,
                headers=list(headers) if headers else None,
            )
        except KafkaError as exc:
            raise KafkaUnavailable(f"send to {topic} failed: {exc}") from exc
        return fut

    async def send_and_wait(
        self,
        topic: str,
        message: WireModel | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Any:
        """Send one record and wait until the broker acknowledged it."""
        fut = await self.send(topic, message, key=key, partition=partition, headers=headers)
        try:
            return await fut
        except KafkaError as exc:
            raise KafkaUnavailable(f"delivery to {topic} failed: {exc}") from exc

    async def flush(self) -> None:
        """Wait until every enqueued record is acknowledged."""
        if self._producer is not None:
            await self._producer.flush()


# --- consumer loop -------------------------------------------------------------------


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

InvalidHandler = Callable[[ConsumerRecord, DecodeError], Awaitable[bool]]
"""Called for an undecodable record; return True if it was answered (no dead letter)."""


@dataclass(slots=True)
class ConsumerStats:
    """Counters a worker exposes on /metrics."""

    handled: int = 0
    dead_lettered: int = 0
    retries: int = 0
    batches: int = 0
    left: int = 0
    """Records left uncommitted for redelivery (stopping, or dead-lettering failed)."""


async def _undelivered(
    records: Sequence[ConsumerRecord], pending: Sequence[Awaitable[Any] | None]
) -> list[tuple[ConsumerRecord, BaseException]]:
    """Await every delivery; the records whose answer failed, with the error."""
    waiting = [(raw, fut) for raw, fut in zip(records, pending, strict=True) if fut is not None]
    results = await asyncio.gather(*(fut for _, fut in waiting), return_exceptions=True)
    return [
        (raw, result)
        for (raw, _), result in zip(waiting, results, strict=True)
        if isinstance(result, BaseException)
    ]


class DeadLetterer:
    """Writes records nobody could handle to the dead-letter topic, with the reason."""

    def __init__(self, producer: Producer, topic: str, group: str | None) -> None:
        self._producer = producer
        self._topic = topic
        self._group = group

    async def dead_letter(self, record: ConsumerRecord, error: BaseException) -> None:
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


Outcome = tuple[bool, "Awaitable[Any] | None"]
"""What became of one record: (finished, delivery). Not finished means: do not commit
past it, it will be read again. ``delivery`` is the answer's pending delivery, if any."""


class RecordProcessor:
    """One record's fate: decode, handle with retries, else answer or dead-letter.

    Shared by :class:`ConsumerLoop` and :class:`PipelinedConsumer`, so both treat bad
    input the same way: an undecodable record goes to ``on_invalid`` (which may answer
    it, e.g. with an error reply) or to the dead-letter topic; retriable handler errors
    are retried with backoff up to ``max_retries``; other errors, and a handler crash,
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

    async def process(self, raw: ConsumerRecord) -> Outcome:
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
        record: Record[Any] = Record(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            key=raw.key,
            value=value,
            headers=dict(raw.headers or ()),
            timestamp_ms=raw.timestamp,
            raw=raw.value,
        )
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

    async def dead_letter(self, raw: ConsumerRecord, error: BaseException) -> bool:
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


class ConsumerLoop(Lifecycle):
    """Consumes ``topics`` (name → message model) a batch at a time, in order.

    For consumers whose records must be applied in order (materialisation) or are quick
    to answer (the selector); :class:`PipelinedConsumer` suits slow handlers. Records are
    handled one after another; answers a handler returns as delivery futures are awaited
    together before the batch's offsets are committed (at least once). A batch whose
    answers failed is read again, up to ``max_retries`` times, then the records whose
    answers could not be delivered are dead-lettered. Bad input: see RecordProcessor.
    """

    def __init__(
        self,
        config: KafkaConfig,
        topics: Mapping[str, type[WireModel]],
        handler: Handler,
        *,
        group_id: str | None,
        dead_letters: DeadLetterer,
        on_invalid: InvalidHandler | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_retries: int = 3,
        retry_backoff_s: float = 0.2,
        auto_offset_reset: str = "earliest",
        max_batch: int = 500,
        partitions: Sequence[TopicPartition] | None = None,
    ) -> None:
        self._config = config
        self._topics = list(topics)
        # Given partitions are assigned (no group rebalancing), else the topics subscribed.
        self._partitions = list(partitions) if partitions else None
        self._group_id = group_id
        self._max_record_bytes = max_record_bytes
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        self._auto_offset_reset = auto_offset_reset
        self._max_batch = max_batch
        self._consumer: AIOKafkaConsumer | None = None
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
    def consumer(self) -> AIOKafkaConsumer | None:
        """The underlying consumer (for lag metrics), once started."""
        return self._consumer

    async def start(self) -> None:
        """Connect, subscribe and begin consuming in a background task."""
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            **self._config.client_kwargs(),
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset=self._auto_offset_reset,
            max_partition_fetch_bytes=self._max_record_bytes + 65536,
            fetch_max_wait_ms=100,
        )
        await start_bounded(consumer, "consumer", self._config.request_timeout_s)
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

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        redeliveries = 0
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=self._max_batch)
            except KafkaError as exc:
                log.warning("fetch failed, retrying: %s", exc)
                await asyncio.sleep(self._retry_backoff_s)
                continue
            if not batches:
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
                    for tp, records in batches.items():
                        if records:
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
            if self._group_id is not None:
                await _commit(consumer, offsets)


async def _commit(consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int]) -> bool:
    try:
        await consumer.commit(dict(offsets))
    except KafkaError as exc:
        # A rebalance took the partition; the new owner re-reads from the last commit.
        log.warning("commit failed (records will be redelivered): %s", exc)
        return False
    return True


class PipelinedConsumer(ConsumerRebalanceListener, Lifecycle):  # type: ignore[misc]
    """A group consumer that keeps up to ``concurrency`` records in flight, across fetches.

    :class:`ConsumerLoop` fetches the next batch only once the current one is handled, so
    a record fetched alongside a slow one waits for it. For a router, whose handling
    takes as long as the executors do, that doubled round trips under steady load. Here a
    record starts as soon as it is read; order within a partition is not kept.

    At least once: per partition, the committed offset is the lowest offset still in
    flight (or past the last fetched record when none is), so nothing is committed
    before it was answered or dead-lettered. Bad input and retries: see RecordProcessor;
    a delivery future a handler returns is awaited, and its failure dead-letters the
    record. On a rebalance the records of revoked partitions are finished (within
    ``grace_s``) and committed first.
    """

    def __init__(
        self,
        config: KafkaConfig,
        topics: Mapping[str, type[WireModel]],
        handler: Handler,
        *,
        group_id: str,
        dead_letters: DeadLetterer,
        on_invalid: InvalidHandler | None = None,
        concurrency: int = 64,
        grace_s: float = 10.0,
        max_retries: int = 3,
        retry_backoff_s: float = 0.2,
        commit_interval_s: float = 0.2,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self._config = config
        self._topics = list(topics)
        self._group_id = group_id
        self._concurrency = max(1, concurrency)
        self._grace_s = grace_s
        self._retry_backoff_s = retry_backoff_s
        self._commit_interval_s = commit_interval_s
        self._max_record_bytes = max_record_bytes
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._freed = asyncio.Event()
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
        self._pending: dict[TopicPartition, set[int]] = {}
        """Offsets being handled, or whose handling failed (never committed past)."""
        self._fetched: dict[TopicPartition, int] = {}
        """Offset after the last record taken into work, per partition."""
        self._committed: dict[TopicPartition, int] = {}
        self._last_commit = 0.0

    @property
    def done(self) -> asyncio.Task[None] | None:
        """The fetch task; it ends only on stop or failure."""
        return self._task

    @property
    def in_flight(self) -> int:
        """Records being handled now."""
        return len(self._tasks)

    def lag(self) -> int:
        """Records between what was taken into work and the high watermarks."""
        return lag_of(self._consumer, self._fetched) if self._consumer is not None else 0

    async def start(self) -> None:
        """Connect, subscribe and begin fetching in a background task."""
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            **self._config.client_kwargs(),
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self._max_record_bytes + 65536,
            fetch_max_wait_ms=100,
        )
        await start_bounded(consumer, "consumer", self._config.request_timeout_s)
        consumer.subscribe(self._topics, listener=self)
        self._stopping.clear()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="mulambda-pipelined")

    async def stop(self) -> None:
        """Stop fetching, let in-flight records finish within the grace, commit, close."""
        consumer, task = self._consumer, self._task
        self._consumer, self._task = None, None
        if consumer is None:
            return
        self._stopping.set()
        if task is not None:
            try:
                await task  # leaves its loop within one fetch timeout
            except Exception:
                log.exception("consumer loop failed")
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=self._grace_s)
            if late:
                # Their offsets stay pending, hence uncommitted: the next owner redoes them.
                log.warning("%d record(s) unfinished after %.1fs grace", len(late), self._grace_s)
                for straggler in late:
                    straggler.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        await self._commit(consumer, force=True)
        with contextlib.suppress(KafkaError, OSError):
            await consumer.stop()

    # rebalance listener

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Finish and commit the revoked partitions' records before the new owner starts."""
        gone = set(revoked)
        tasks = [t for t, tp in self._tasks.items() if tp in gone]
        if tasks:
            await asyncio.wait(tasks, timeout=self._grace_s)
        consumer = self._consumer
        if consumer is not None:
            await self._commit(consumer, force=True, only=gone)
        for tp in gone:
            self._pending.pop(tp, None)
            self._fetched.pop(tp, None)
            self._committed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Nothing to load: positions come from the group's committed offsets."""

    # fetching

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            self._freed.clear()  # before counting, so no completion is missed
            free = self._concurrency - len(self._tasks)
            if free <= 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), self._commit_interval_s)
                await self._commit(consumer)
                continue
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=free)
            except KafkaError as exc:
                log.warning("fetch failed, retrying: %s", exc)
                await asyncio.sleep(self._retry_backoff_s)
                continue
            if self._stopping.is_set():
                break  # not taken into work, so not committed: redelivered
            for tp, records in batches.items():
                for raw in records:
                    self._spawn(tp, raw)
            await self._commit(consumer)

    def _spawn(self, tp: TopicPartition, raw: ConsumerRecord) -> None:
        pending = self._pending.setdefault(tp, set())
        pending.add(raw.offset)
        self._fetched[tp] = raw.offset + 1
        task = asyncio.create_task(self._process(pending, raw))
        self._tasks[task] = tp
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("record task failed", exc_info=task.exception())

    async def _process(self, pending: set[int], raw: ConsumerRecord) -> None:
        finished, delivery = await self._processor.process(raw)
        if delivery is not None:
            try:
                await delivery
            except Exception as exc:
                finished = await self._processor.dead_letter(raw, exc)
        if finished:
            pending.discard(raw.offset)

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        *,
        force: bool = False,
        only: set[TopicPartition] | None = None,
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self._commit_interval_s:
            return
        self._last_commit = now
        assigned = consumer.assignment()
        offsets: dict[TopicPartition, int] = {}
        for tp, fetched in self._fetched.items():
            if tp not in assigned or (only is not None and tp not in only):
                continue
            pending = self._pending.get(tp)
            safe = min(pending) if pending else fetched
            if safe > self._committed.get(tp, -1):
                offsets[tp] = safe
        if offsets and await _commit(consumer, offsets):
            self._committed.update(offsets)


def lag_of(consumer: AIOKafkaConsumer, positions: Mapping[TopicPartition, int]) -> int:
    """Sum over assigned partitions of high watermark minus the caller's position."""
    total = 0
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None and tp in positions:
            total += max(0, high - positions[tp])
    return total


# --- replay --------------------------------------------------------------------------


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``; ConfigurationError when it does not exist."""
    parts = consumer.partitions_for_topic(topic)
    if parts is None:
        # A fresh consumer knows no topics until it fetched metadata for them.
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise ConfigurationError(f"topic {topic} does not exist; run `mulambda topics apply`")
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def replay(
    config: KafkaConfig,
    topics: Mapping[str, type[WireModel]],
    on_record: Callable[[Record[Any]], None],
    *,
    on_invalid: Callable[[ConsumerRecord, DecodeError], None] | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> dict[TopicPartition, int]:
    """Read ``topics`` from the beginning up to their current end, without a group.

    Used to rebuild state from compacted topics before a worker reports ready, and by
    ``executors list``. Returns the end offsets reached, so a live consumer can resume
    exactly there.
    """
    consumer = AIOKafkaConsumer(
        **config.client_kwargs(), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await start_bounded(consumer, "replay", config.request_timeout_s)
    try:
        partitions = [tp for topic in topics for tp in await partitions_of(consumer, topic)]
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                model = topics[tp.topic]
                for raw in records:
                    if raw.offset >= end[tp]:
                        break
                    try:
                        value = (
                            None
                            if raw.value is None
                            else decode(model, raw.value, max_bytes=max_record_bytes)
                        )
                    except DecodeError as exc:
                        if on_invalid is not None:
                            on_invalid(raw, exc)
                        continue
                    on_record(
                        Record(
                            raw.topic,
                            raw.partition,
                            raw.offset,
                            raw.key,
                            value,
                            dict(raw.headers or ()),
                            raw.timestamp,
                            raw.value,
                        )
                    )
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return dict(end)
    except KafkaError as exc:
        raise KafkaUnavailable(f"replay failed: {exc}") from exc
    finally:
        await consumer.stop()


class KeyWaiter(Generic[M]):
    """Reads a topic from a fixed position until a record with the wanted key arrives."""

    def __init__(self, consumer: AIOKafkaConsumer, key: bytes, model: type[M]) -> None:
        self._consumer = consumer
        self._key = key
        self._model = model

    async def result(self, timeout_s: float) -> M:
        """The decoded value of the first record with the key; RequestTimeout after that."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    batches = await self._consumer.getmany(timeout_ms=200)
                    for records in batches.values():
                        for raw in records:
                            if raw.key == self._key:
                                return decode(self._model, raw.value)
        except TimeoutError as exc:
            raise RequestTimeout(
                f"no {self._model.type_name} for {self._key.decode()} within {timeout_s:g}s"
            ) from exc
        except KafkaError as exc:
            raise KafkaUnavailable(f"reading results failed: {exc}") from exc


@contextlib.asynccontextmanager
async def read_until_key(
    config: KafkaConfig, topic: str, key: str, model: type[M]
) -> AsyncIterator[KeyWaiter[M]]:
    """Position a group-less reader at the end of ``topic`` before the caller publishes.

    For command-line and test clients that wait for one answer; services use a Requester.
    """
    consumer = AIOKafkaConsumer(**config.client_kwargs(), group_id=None, enable_auto_commit=False)
    await start_bounded(consumer, "reader", config.request_timeout_s)
    try:
        partitions = await partitions_of(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:  # fixes the start offsets now, not at the first fetch
            await consumer.position(tp)
        yield KeyWaiter(consumer, key.encode(), model)
    finally:
        await consumer.stop()


# --- admin ---


def _is_override(source: bool | int) -> bool:
    # DescribeConfigs v0 says "is_default" (a bool); v1+ give config_source, where
    # 1 is DYNAMIC_TOPIC_CONFIG: a value set on the topic rather than inherited.
    return (not source) if isinstance(source, bool) else source == 1


@dataclass(frozen=True, slots=True)
class TopicChange:
    """What ``apply_topics`` did to one topic."""

    name: str
    action: str  # "created", "updated", "unchanged"
    detail: str = ""


class Admin(Lifecycle):
    """Topic administration through aiokafka's admin client, bounded in time."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._admin: AIOKafkaAdminClient | None = None

    async def start(self) -> None:
        """Connect; KafkaUnavailable within the config's timeout."""
        if self._admin is not None:
            return
        admin = AIOKafkaAdminClient(**self._config.client_kwargs())
        await start_bounded(admin, "admin", self._config.request_timeout_s)
        self._admin = admin

    async def stop(self) -> None:
        """Close; safe to call twice."""
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

    def _require(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise MulambdaError("admin client is not started")
        return self._admin

    async def describe(self, names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Existing topics (all, or ``names``) → partitions and configs."""
        admin = self._require()
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                existing = set(await admin.list_topics())
                wanted = sorted(existing if names is None else existing & set(names))
                if not wanted:
                    return {}
                meta = await admin.describe_topics(wanted)
                resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in wanted]
                described = await admin.describe_configs(resources)
        except (TimeoutError, KafkaError) as exc:
            raise KafkaUnavailable(f"describe topics failed: {exc!r}") from exc
        out: dict[str, dict[str, Any]] = {
            t["topic"]: {"partitions": len(t["partitions"]), "config": {}, "overrides": {}}
            for t in meta
        }
        for response in described:
            for resource in response.resources:
                name, entries = resource[3], resource[4]
                if name in out:
                    out[name]["config"] = {e[0]: e[1] for e in entries}
                    out[name]["overrides"] = {e[0]: e[1] for e in entries if _is_override(e[3])}
        return out

    async def apply(self, catalog: Catalog, *, replication: int | None = None) -> list[TopicChange]:
        """Create missing topics, raise partition counts and set configs to the catalog's.

        Idempotent: a second run reports every topic unchanged. Partition counts are never
        lowered (Kafka cannot); a catalog asking for fewer is reported, not applied.
        """
        admin = self._require()
        specs = list(catalog.specs.values())
        names = {s.full_name(catalog.prefix): s for s in specs}
        current = await self.describe(list(names))
        changes: list[TopicChange] = []
        try:
            async with asyncio.timeout(self._config.request_timeout_s * 3):
                missing = [n for n in names if n not in current]
                if missing:
                    response = await admin.create_topics(
                        [
                            NewTopic(
                                name=n,
                                num_partitions=names[n].partitions,
                                replication_factor=replication or names[n].replication,
                                topic_configs=dict(names[n].config),
                            )
                            for n in missing
                        ]
                    )
                    for err in response.topic_errors:
                        name, code = err[0], err[1]
                        if code not in (0, 36):  # 36: already exists (a concurrent apply)
                            raise ConfigurationError(f"create {name} failed: error code {code}")
                    await self._wait_visible(missing)
                    changes += [TopicChange(n, "created") for n in missing]
                for name, spec in names.items():
                    if name in missing:
                        continue
                    have = current[name]
                    notes = []
                    if have["partitions"] < spec.partitions:
                        await admin.create_partitions({name: NewPartitions(spec.partitions)})
                        notes.append(f"partitions {have['partitions']}→{spec.partitions}")
                    elif have["partitions"] > spec.partitions:
                        notes.append(f"has {have['partitions']} partitions (catalog: fewer)")
                    drift = {k: v for k, v in spec.config.items() if have["config"].get(k) != v}
                    if drift:
                        await admin.alter_configs(
                            [ConfigResource(ConfigResourceType.TOPIC, name, dict(spec.config))]
                        )
                        notes.append("config " + ", ".join(f"{k}={v}" for k, v in drift.items()))
                    action = (
                        "updated"
                        if any("→" in n or "config" in n for n in notes)
                        else ("unchanged")
                    )
                    changes.append(TopicChange(name, action, "; ".join(notes)))
        except (TimeoutError, KafkaError) as exc:
            raise KafkaUnavailable(f"apply topics failed: {exc!r}") from exc
        return changes

    async def _wait_visible(self, names: Sequence[str]) -> None:
        # Created topics reach every broker's metadata cache a little later; callers
        # that produce right after `apply` must not see UnknownTopicOrPartition.
        admin = self._require()
        while not set(names) <= set(await admin.list_topics()):  # noqa: ASYNC110 - polling the broker
            await asyncio.sleep(0.05)

    async def delete(self, names: Sequence[str]) -> None:
        """Delete topics (tests clean up their prefixed topics with this)."""
        if not names:
            return
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                await self._require().delete_topics(list(names))
        except (TimeoutError, KafkaError) as exc:
            raise KafkaUnavailable(f"delete topics failed: {exc!r}") from exc


__all__ = [
    "Admin",
    "ConsumerLoop",
    "DeadLetterer",
    "KafkaConfig",
    "KeyWaiter",
    "PipelinedConsumer",
    "Producer",
    "Record",
    "RecordProcessor",
    "TopicChange",
    "lag_of",
    "partitions_of",
    "read_until_key",
    "replay",
    "start_bounded",
]
