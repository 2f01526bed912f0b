"""A tiny inference responder for the SDK's tests: a real Kafka consumer and producer.

It stands in for the router where the tests need results on demand: it consumes the
inference requests of clients whose id starts with its ``marker`` and answers on each
request's reply address the way the router does (keyed by correlation id, to the named
partition, ``request_id`` = the request's ``message_id``). The request's ``policy`` says
how: ``None`` answers ok with ``output={"echo": body}``, ``"fail"`` answers an error with
``error_code`` 503, ``"twice"`` answers ok twice (a duplicate), ``"ignore"`` never answers,
``"slow:S"`` answers ok after S seconds.
"""

from __future__ import annotations

import asyncio
import uuid
from types import TracebackType
from typing import Any, Self

from mulambda.kafka import ConsumerLoop, DeadLetterer, KafkaConfig, Producer, Record
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import InferenceRequest, InferenceResult, InferenceStatus

FAILURE = "the executor said no"


def answer(request: InferenceRequest) -> InferenceResult:
    """The result the responder publishes for ``request`` (ok unless policy "fail")."""
    if request.policy == "fail":
        return InferenceResult(
            correlation_id=request.correlation_id,
            request_id=request.message_id,
            status=InferenceStatus.ERROR,
            executor_id="responder",
            error=FAILURE,
            error_code=503,
        )
    return InferenceResult(
        correlation_id=request.correlation_id,
        request_id=request.message_id,
        status=InferenceStatus.OK,
        executor_id="responder",
        output={"echo": request.body},
    )


class Responder:
    """Answers inference requests of clients whose id starts with ``marker``."""

    def __init__(self, config: KafkaConfig, catalog: Catalog, marker: str) -> None:
        self.marker = marker
        self.seen = 0
        """Requests of ours handled (answered or not)."""
        self.producer = Producer(config)
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop = ConsumerLoop(
            config,
            {catalog.name(Topic.INFERENCE_REQUESTS): InferenceRequest},
            self._handle,
            group_id=f"sdk-responder-{uuid.uuid4().hex[:8]}",
            dead_letters=DeadLetterer(self.producer, catalog.name(Topic.DEAD_LETTERS), None),
        )

    async def _handle(self, record: Record[Any]) -> None:
        request = record.value
        if not isinstance(request, InferenceRequest) or not request.client_id.startswith(
            self.marker
        ):
            return
        self.seen += 1
        policy = request.policy or ""
        if policy == "ignore":
            return
        if policy.startswith("slow:"):
            task = asyncio.create_task(self._later(float(policy.removeprefix("slow:")), request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        await self._send(request)
        if policy == "twice":
            await self._send(request)

    async def _later(self, delay_s: float, request: InferenceRequest) -> None:
        await asyncio.sleep(delay_s)
        await self._send(request)

    async def _send(self, request: InferenceRequest) -> None:
        await self.producer.send(
            request.reply_topic,
            answer(request),
            key=request.correlation_id,
            partition=request.reply_partition,
        )

    async def __aenter__(self) -> Self:
        await self.producer.start()
        await self.loop.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.loop.stop(grace_s=1.0)
        await self.producer.stop()
