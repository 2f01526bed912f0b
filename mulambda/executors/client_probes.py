"""Client probing: follow the registered clients and measure the latency to each.

:class:`ClientProber` replays the compacted client-registrations topic at start, then
follows it (tombstones remove clients), and publishes a ``probe``
:class:`~mulambda.wire.events.LatencyMeasurement` per client that answered. A round
probes at most ``concurrency`` clients at a time, each bounded by ``timeout_s``, so a
thousand clients or a URL that never answers cannot hold anything else back; a failed
probe publishes nothing and is counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from mulambda.errors import MulambdaError, RequestTimeout
from mulambda.executors.companion_stats import CompanionStats
from mulambda.executors.probe import apply_client_record, measure_latency
from mulambda.kafka import (
    ConsumerLoop,
    DeadLetterer,
    KafkaConfig,
    Producer,
    Record,
    TopicPartition,
    replay,
)
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import MAX_STATE_RECORD_BYTES
from mulambda.wire.events import ClientRegistration, LatencyMeasurement, LatencySource

__all__ = ["ClientProber"]

log = logging.getLogger(__name__)


class ClientProber:
    """The clients executor ``executor_id`` knows, and the probes it sends them.

    ``producer`` (shared, started by the owner) publishes the measurements; ``stats``
    counts probes, publications and undecodable registrations.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        catalog: Catalog,
        executor_id: str,
        producer: Producer,
        stats: CompanionStats,
        *,
        concurrency: int,
        timeout_s: float,
    ) -> None:
        self.executor_id = executor_id
        self._kafka = kafka
        self._catalog = catalog
        self._producer = producer
        self.stats = stats
        self._probe_concurrency = concurrency
        self._probe_timeout_s = timeout_s
        self.clients: dict[str, ClientRegistration] = {}
        """The clients known now, by id (live)."""
        self._client_ends: dict[TopicPartition, int] = {}
        self.loop: ConsumerLoop | None = None
        """The loop following the topic, once :meth:`follow` started it."""

    async def stop(self) -> None:
        """Stop following the topic (idempotent)."""
        loop, self.loop = self.loop, None
        if loop is not None:
            await loop.stop(grace_s=2.0)

    async def replay(self) -> None:
        """Read every client registered now (the compacted topic up to its end)."""
        topic = self._catalog.name(Topic.CLIENT_REGISTRATIONS)

        def invalid(raw: Any, exc: MulambdaError) -> None:
            self.stats.invalid_client_records += 1
            log.warning("skipping undecodable %s@%d: %s", topic, raw.offset, exc.reason)

        self._client_ends = await replay(
            self._kafka,
            {topic: ClientRegistration},
            lambda record: apply_client_record(self.clients, record),
            on_invalid=invalid,
            max_record_bytes=MAX_STATE_RECORD_BYTES,
        )
        self.stats.clients = len(self.clients)

    async def follow(self) -> None:
        """Follow the topic from where :meth:`replay` stopped (tombstones remove clients)."""
        topic = self._catalog.name(Topic.CLIENT_REGISTRATIONS)
        ends = self._client_ends

        async def handle(record: Record[Any]) -> None:
            # The replay already applied everything before these offsets.
            if record.offset < ends.get(TopicPartition(record.topic, record.partition), 0):
                return
            apply_client_record(self.clients, record)
            self.stats.clients = len(self.clients)

        async def invalid(raw: Any, exc: MulambdaError) -> bool:
            # Every companion reads this topic without a group; dead-lettering here would
            # file one letter per companion. The selector's group consumer files the one.
            if raw.offset >= ends.get(TopicPartition(raw.topic, raw.partition), 0):
                self.stats.invalid_client_records += 1
                log.warning("skipping undecodable %s@%d: %s", topic, raw.offset, exc.reason)
            return True

        self.loop = ConsumerLoop(
            self._kafka,
            {topic: ClientRegistration},
            handle,
            group_id=None,
            dead_letters=DeadLetterer(self._producer, self._catalog.name(Topic.DEAD_LETTERS), None),
            on_invalid=invalid,
            partitions=sorted(ends, key=lambda tp: tp.partition),
            auto_offset_reset="earliest",
            max_record_bytes=MAX_STATE_RECORD_BYTES,
        )
        await self.loop.start()

    async def probe_round(self, session: aiohttp.ClientSession | None) -> None:
        """Probe every known client once over ``session`` and publish what answered."""
        if session is None:
            return
        started = time.monotonic()
        clients = list(self.clients.values())
        limit = asyncio.Semaphore(self._probe_concurrency)
        deliveries: list[asyncio.Future[Any]] = []
        topic = self._catalog.name(Topic.LATENCY_MEASUREMENTS)

        def delivered(future: asyncio.Future[Any]) -> None:
            # Counted as acks arrive, not at the end of a round that may take minutes.
            if future.cancelled() or future.exception() is not None:
                self.stats.publish_failures += 1
                log.warning("latency measurement not delivered: %r", future)
            else:
                self.stats.latencies_published += 1

        async def probe(client: ClientRegistration) -> None:
            async with limit:
                try:
                    latency_ms = await measure_latency(
                        session, client.probe_url, self._probe_timeout_s
                    )
                except RequestTimeout as exc:
                    self.stats.probes_timed_out += 1
                    log.debug("probe of %s timed out: %s", client.client_id, exc.reason)
                    return
                except MulambdaError as exc:
                    self.stats.probes_failed += 1
                    log.debug("probe of %s failed: %s", client.client_id, exc.reason)
                    return
            self.stats.probes_ok += 1
            current = self.clients.get(client.client_id)
            if current is None or current.probe_url != client.probe_url:
                return  # deregistered (or moved) while we measured
            measurement = LatencyMeasurement(
                executor_id=self.executor_id,
                client_id=client.client_id,
                latency_ms=min(latency_ms, 3_600_000.0),
                source=LatencySource.PROBE,
            )
            try:
                delivery = await self._producer.send(topic, measurement, key=self.executor_id)
            except MulambdaError as exc:
                self.stats.publish_failures += 1
                log.warning("latency to %s not published: %s", client.client_id, exc.reason)
                return
            delivery.add_done_callback(delivered)
            deliveries.append(delivery)

        await asyncio.gather(*(probe(c) for c in clients))
        # The round ends when the broker acknowledged (or refused) every measurement.
        await asyncio.gather(*deliveries, return_exceptions=True)
        self.stats.probe_rounds += 1
        self.stats.last_round_s = time.monotonic() - started
