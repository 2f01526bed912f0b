"""Group-less readers of whole topics for the verifier: every record, from "now" on.

A :class:`TopicReader` assigns every partition of one topic, fixes its start at the
current end before returning from ``start()`` (so nothing written after that is
missed), and hands each record's decoded JSON object, with the time it was read, to a
callback, typically a :class:`~mulambda.harness.verify.Ledger` method. It survives broker
restarts: a failed fetch is logged and retried, never fatal. Records that are not JSON
objects are counted and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson

from mulambda.errors import KafkaUnavailable
from mulambda.kafka import (
    KafkaConfig,
    KafkaConsumer,
    assign_at_end,
    close_consumer,
    fetch,
    partitions_of,
    start_consumer,
)
from mulambda.runtime.lifecycle import Lifecycle

log = logging.getLogger(__name__)

IsolationLevel = Literal["read_committed", "read_uncommitted"]

OnRecord = Callable[[Mapping[str, Any], float], None]
"""Called with each record's JSON object and the clock time it was read."""


class TopicReader(Lifecycle):
    """Reads every partition of ``topic`` from its end at start, until stopped."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        on_record: OnRecord,
        *,
        isolation_level: IsolationLevel = "read_uncommitted",
        clock: Callable[[], float] = time.monotonic,
        start_timeout_s: float = 15.0,
    ) -> None:
        self._config = KafkaConfig(
            bootstrap_servers=bootstrap_servers,
            client_id=f"mulambda-bench-{isolation_level}",
            request_timeout_s=start_timeout_s,
        )
        self.topic = topic
        self.isolation_level = isolation_level
        self._on_record = on_record
        self._clock = clock
        self._consumer: KafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.records = 0
        """Records read."""
        self.undecodable = 0
        """Records that were not a JSON object."""
        self.fetch_errors = 0
        """Fetches that failed and were retried (a broker restart makes some)."""

    async def start(self) -> None:
        """Connect, assign every partition and fix the start positions at the end."""
        if self._consumer is not None:
            return
        consumer = await start_consumer(
            self._config,
            f"{self.isolation_level} reader",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            read_committed=self.isolation_level == "read_committed",
        )
        try:
            # Positioned at the end now, not at the first fetch.
            await assign_at_end(consumer, await partitions_of(self._config, self.topic))
        except BaseException:
            await close_consumer(consumer)
            raise
        self._consumer = consumer
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(consumer), name=f"reader-{self.topic}")

    async def stop(self) -> None:
        """Stop reading and close; safe to call twice."""
        consumer, task = self._consumer, self._task
        self._consumer, self._task = None, None
        if consumer is None:
            return
        self._stopping.set()
        if task is not None:
            try:
                await asyncio.wait_for(task, 5.0)
            except TimeoutError:
                log.warning("%s reader did not stop within 5s", self.isolation_level)
        await close_consumer(consumer)

    async def _run(self, consumer: KafkaConsumer) -> None:
        while not self._stopping.is_set():
            try:
                batches = await fetch(
                    consumer, timeout_ms=100, max_records=2000, what=f"{self.isolation_level} read"
                )
            except KafkaUnavailable as exc:
                self.fetch_errors += 1
                log.info("%s, retrying", exc.reason)
                await asyncio.sleep(0.2)
                continue
            now = self._clock()
            for records in batches.values():
                for raw in records:
                    self.records += 1
                    try:
                        payload = orjson.loads(raw.value) if raw.value is not None else None
                    except orjson.JSONDecodeError:
                        payload = None
                    if not isinstance(payload, dict):
                        self.undecodable += 1
                        continue
                    self._on_record(payload, now)
