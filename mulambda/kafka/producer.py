"""The producer of MuLambda messages, and awaiting a delivery with errors translated."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from mulambda.errors import KafkaUnavailable, MulambdaError
from mulambda.kafka.config import FRAMING_HEADROOM_BYTES, KafkaConfig, start_bounded
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES, encode, encode_key
from mulambda.wire.events import WireModel


async def await_delivery(delivery: Awaitable[Any], what: str) -> Any:
    """Await a delivery future of :meth:`Producer.send`; KafkaUnavailable(``what``) on failure."""
    try:
        return await delivery
    except KafkaError as exc:
        raise KafkaUnavailable(f"{what}: {exc}") from exc


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
            max_request_size=DEFAULT_MAX_RECORD_BYTES + FRAMING_HEADROOM_BYTES,
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
        """Enqueue one record; await the returned future for the broker's ack.

        The future fails with aiokafka's error; :func:`await_delivery` translates it.
        """
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
        return await await_delivery(fut, f"delivery to {topic} failed")

    async def flush(self) -> None:
        """Wait until every enqueued record is acknowledged."""
        if self._producer is not None:
            await self._producer.flush()
