"""The executors' state stream as a router needs it: which leases a change ends.

A router holding selection leases (:mod:`mulambda.routing.leases`) reads the executor
registration and status topics from their ends: a registration or deregistration ends
the leases naming that executor or ranking its traits, and a status saying an executor
is not available (or available again) ends the leases it concerns. Heartbeats that
change nothing end nothing. Records the router cannot decode are skipped: the selector,
which reads the same topics, dead-letters them with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from mulambda.errors import DecodeError
from mulambda.kafka.admin import partitions_of
from mulambda.kafka.config import KafkaConfig, KafkaConsumer, close_consumer, start_consumer
from mulambda.kafka.fetching import assign_at_end, fetch_retrying
from mulambda.routing.leases import LeaseBook
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import MAX_STATE_RECORD_BYTES, decode
from mulambda.wire.events import ExecutorRegistration, ExecutorStatus, ModelState

log = logging.getLogger(__name__)


class ExecutorChanges(Lifecycle):
    """Ends a router's leases when the executors they name change (module doc)."""

    def __init__(
        self,
        kafka: KafkaConfig,
        catalog: Catalog,
        leases: LeaseBook,
        *,
        on_ended: Callable[[int], None] = lambda count: None,
    ) -> None:
        self._kafka = kafka
        self._registrations = catalog.name(Topic.EXECUTOR_REGISTRATIONS)
        self._status = catalog.name(Topic.EXECUTOR_STATUS)
        self._leases = leases
        self._on_ended = on_ended
        self._consumer: KafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def consumer(self) -> KafkaConsumer | None:
        """The state consumer, once started."""
        return self._consumer

    async def start(self) -> None:
        """Read both topics from their current ends."""
        if self._consumer is not None:
            return
        consumer = await start_consumer(
            self._kafka,
            "executor change consumer",
            max_record_bytes=MAX_STATE_RECORD_BYTES,
            fetch_max_wait_ms=500,
        )
        try:
            partitions = await partitions_of(self._kafka, self._registrations, self._status)
            await assign_at_end(consumer, partitions)
        except BaseException:
            await close_consumer(consumer)
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._read(consumer), name="executor-changes")

    async def stop(self) -> None:
        """Stop reading; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_consumer(consumer)

    async def _read(self, consumer: KafkaConsumer) -> None:
        while True:
            batches = await fetch_retrying(
                consumer,
                timeout_ms=500,
                max_records=1000,
                retry_backoff_s=0.5,
                what="executor change fetch",
            )
            for tp, records in batches.items():
                for record in records:
                    ended = self.apply(tp.topic, record.key, record.value)
                    if ended:
                        self._on_ended(ended)

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> int:
        """The leases one state record ends; undecodable records end none."""
        leases = self._leases
        try:
            if topic == self._registrations:
                if value is None:  # a tombstone: the executor named by the key is gone
                    if key is None:
                        return 0
                    return leases.executor_registered(key.decode(errors="replace"), None)
                registration = decode(ExecutorRegistration, value, max_bytes=MAX_STATE_RECORD_BYTES)
                if registration.launch is not None:
                    return 0  # a launch request, not an executor
                return leases.executor_registered(
                    registration.executor_id, registration.traits.key()
                )
            status = decode(ExecutorStatus, value, max_bytes=MAX_STATE_RECORD_BYTES)
        except DecodeError as exc:
            log.debug("state record on %s skipped: %s", topic, exc.reason)
            return 0
        if status.launch_action is not None:
            return 0  # the launcher's report on a launch request
        return leases.executor_status(
            status.executor_id, status.model_state is ModelState.AVAILABLE
        )


__all__ = ["ExecutorChanges"]
