"""Executor registrations on Kafka: publish, retract (tombstone) and read them back.

Records on the compacted executor-registrations topic, keyed by executor id and signed
when a key is given (:mod:`mulambda.wire.signatures`). Used by the companion, the
``mulambda executors`` commands, the launcher and the harness.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mulambda.errors import ConfigurationError
from mulambda.kafka import KafkaConfig, Producer, Record, await_delivery, replay
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import MAX_STATE_RECORD_BYTES, encode
from mulambda.wire.events import ExecutorRegistration
from mulambda.wire.signatures import sign

__all__ = ["apply_executor_record", "deregister_executor", "read_executors", "register_executor"]

log = logging.getLogger(__name__)


def apply_executor_record(executors: dict[str, ExecutorRegistration], record: Record[Any]) -> None:
    """Fold one executor-registrations record into ``executors`` (tombstone removes)."""
    value = record.value
    if isinstance(value, ExecutorRegistration):
        executors[value.executor_id] = value
    elif value is None and record.key_str is not None:
        executors.pop(record.key_str, None)


async def _publish_registration_record(
    producer: Producer,
    catalog: Catalog,
    executor_id: str,
    value: bytes | None,
    signing_key: bytes | None,
) -> None:
    """One record on executor-registrations, signed when there is a key; await the ack."""
    headers = None
    if signing_key is not None:
        signature = sign(signing_key, executor_id.encode(), value, int(time.time() * 1000))
        headers = [signature.header()]
    topic = catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    delivery = await producer.send_raw(topic, value, key=executor_id, headers=headers)
    await await_delivery(delivery, f"delivery to {topic} failed")


async def register_executor(
    producer: Producer,
    catalog: Catalog,
    registration: ExecutorRegistration,
    *,
    signing_key: bytes | None = None,
) -> None:
    """Publish ``registration`` (key: executor id), signed with ``signing_key`` if given
    (:mod:`mulambda.wire.signatures`), and wait for the broker's ack."""
    await _publish_registration_record(
        producer, catalog, registration.executor_id, encode(registration), signing_key
    )


async def deregister_executor(
    producer: Producer, catalog: Catalog, executor_id: str, *, signing_key: bytes | None = None
) -> None:
    """Publish a tombstone for ``executor_id`` (signed, given a key) and wait for the ack."""
    if not executor_id:
        raise ConfigurationError("executor id must not be empty")
    await _publish_registration_record(producer, catalog, executor_id, None, signing_key)


async def read_executors(config: KafkaConfig, catalog: Catalog) -> dict[str, ExecutorRegistration]:
    """Every live executor on the compacted executor-registrations topic, by id."""
    executors: dict[str, ExecutorRegistration] = {}
    topic = catalog.name(Topic.EXECUTOR_REGISTRATIONS)
    await replay(
        config,
        {topic: ExecutorRegistration},
        lambda record: apply_executor_record(executors, record),
        on_invalid=lambda raw, exc: log.warning(
            "skipping undecodable %s@%d: %s", topic, raw.offset, exc.reason
        ),
        max_record_bytes=MAX_STATE_RECORD_BYTES,
    )
    return executors
