"""Group-less reading: replay topics up to their end, or wait for one record by key."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Generic, TypeVar

from aiokafka.errors import KafkaError

from mulambda.errors import DecodeError, RequestTimeout
from mulambda.kafka.admin import partitions_of
from mulambda.kafka.config import KafkaConfig, KafkaConsumer, kafka_error, start_consumer
from mulambda.kafka.fetching import assign_at_end, fetch
from mulambda.kafka.records import RawRecord, Record, TopicPartition
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES, decode
from mulambda.wire.events import WireModel

M = TypeVar("M", bound=WireModel)


async def replay(
    config: KafkaConfig,
    topics: Mapping[str, type[WireModel]],
    on_record: Callable[[Record[Any]], None],
    *,
    on_invalid: Callable[[RawRecord, DecodeError], None] | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> dict[TopicPartition, int]:
    """Read ``topics`` from the beginning up to their current end, without a group.

    Used to rebuild state from compacted topics before a worker reports ready, and by
    ``executors list``. Returns the end offsets reached, so a live consumer can resume
    exactly there.
    """
    # "earliest", as the seek below: aiokafka starts a reset to the consumer's default
    # as soon as partitions are assigned, and when that answer comes back after
    # seek_to_beginning (a TLS round trip is enough) it overrides the seek. With
    # "latest" the replay then started at the end and read nothing.
    consumer = await start_consumer(
        config,
        "replay",
        auto_offset_reset="earliest",
        max_record_bytes=max_record_bytes,
        fetch_max_wait_ms=50,
    )
    try:
        partitions = await partitions_of(config, *topics)
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            batches = await fetch(
                consumer, *remaining, timeout_ms=500, max_records=5000, what="replay"
            )
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
                    on_record(Record.of(raw, value))
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return dict(end)
    except KafkaError as exc:
        raise kafka_error(exc, "replay failed") from exc
    finally:
        await consumer.stop()


class KeyWaiter(Generic[M]):
    """Reads a topic from a fixed position until a record with the wanted key arrives."""

    def __init__(self, consumer: KafkaConsumer, key: bytes, model: type[M]) -> None:
        self._consumer = consumer
        self._key = key
        self._model = model

    async def result(self, timeout_s: float) -> M:
        """The decoded value of the first record with the key; RequestTimeout after that."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    batches = await fetch(self._consumer, timeout_ms=200, what="reading results")
                    for records in batches.values():
                        for raw in records:
                            if raw.key == self._key:
                                return decode(self._model, raw.value)
        except TimeoutError as exc:
            raise RequestTimeout(
                f"no {self._model.type_name} for {self._key.decode()} within {timeout_s:g}s"
            ) from exc


@contextlib.asynccontextmanager
async def read_until_key(
    config: KafkaConfig, topic: str, key: str, model: type[M]
) -> AsyncIterator[KeyWaiter[M]]:
    """Position a group-less reader at the end of ``topic`` before the caller publishes.

    For command-line and test clients that wait for one answer; services use a Requester.
    """
    consumer = await start_consumer(config, "reader", fetch_max_wait_ms=500)
    try:
        await assign_at_end(consumer, await partitions_of(config, topic))
        yield KeyWaiter(consumer, key.encode(), model)
    finally:
        await consumer.stop()
