"""What the router's integration tests share: ids, registrations, requests, result readers.

Every test registers its executors under traits of its own (:func:`traits`), so one
module's selector and router serve all its tests without them seeing each other's
executors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from mulambda.emulator.profiles import profile_by_name
from mulambda.kafka import (
    KafkaConsumer,
    Producer,
    assign_at_end,
    fetch,
    partitions_of,
    read_until_key,
    start_consumer,
)
from mulambda.selection.selector import Selector
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import decode
from mulambda.wire.events import (
    ExecutorRegistration,
    InferenceRequest,
    InferenceResult,
    SoftWeights,
    Traits,
    deadline_in,
)
from tests.conftest import Infra

TIME_SCALE = 0.05
"""Synthetic delays shrunk 20x: FastGood answers in about 1 ms."""
FAST = profile_by_name("FastGood")
CLIENT = "router-test-client"


def uid(stem: str) -> str:
    """``stem`` with a random suffix."""
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def new_traits() -> Traits:
    """Traits no other test registers executors under."""
    return Traits(model_type=uid("kind"), input_format="synthetic", output_format="confidence")


def closed_port() -> int:
    """A local port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again on leaving the block


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait for ``predicate``; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def register(
    producer: Producer,
    cat: Catalog,
    selector: Selector | None,
    traits: Traits,
    endpoint: str,
    *,
    model: str = FAST.name,
    accuracy: float = 0.5,
) -> str:
    """Publish a registration and wait until ``selector``'s view has it (when given)."""
    executor_id = uid("ex")
    registration = ExecutorRegistration(
        executor_id=executor_id,
        model_name=model,
        traits=traits,
        accuracy=accuracy,
        endpoint=endpoint,
        heartbeat_interval_s=300,  # no heartbeats in these tests: stay live meanwhile
    )
    await producer.send_and_wait(
        cat.name(Topic.EXECUTOR_REGISTRATIONS), registration, key=executor_id
    )
    if selector is not None:
        view = selector.view
        await until(lambda: view.get(executor_id) is not None, f"{executor_id} in view")
    return executor_id


def inference_request(cat: Catalog, traits: Traits, **fields: Any) -> InferenceRequest:
    """A request for ``traits`` that weighs accuracy only, answered on the results topic."""
    values: dict[str, Any] = {
        "reply_topic": cat.name(Topic.INFERENCE_RESULTS),
        "deadline": deadline_in(30),
        "client_id": CLIENT,
        "traits": traits,
        "weights": SoftWeights(latency=0.0, accuracy=1.0),
        "policy": "weighted",
        "body": {"instances": [0]},
    }
    values.update(fields)
    return InferenceRequest(**values)


async def publish(producer: Producer, cat: Catalog, request: InferenceRequest) -> None:
    """Publish ``request`` to the inference requests, keyed as the catalog says."""
    await producer.send_and_wait(cat.name(Topic.INFERENCE_REQUESTS), request, key=request.client_id)


async def infer(
    infra: Infra,
    cat: Catalog,
    producer: Producer,
    request: InferenceRequest,
    timeout_s: float = 15.0,
) -> InferenceResult:
    """Publish ``request`` and return its result from the reply topic."""
    async with read_until_key(
        infra.kafka(), request.reply_topic, request.correlation_id, InferenceResult
    ) as waiter:
        await publish(producer, cat, request)
        return await waiter.result(timeout_s)


class ResultReader:
    """Every result on a topic from the moment it was positioned, by correlation id."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        self.results: dict[str, list[InferenceResult]] = {}
        """Results read so far, by record key (the correlation id)."""
        self.received: dict[str, float] = {}
        """When (``time.monotonic()``) the first result of each key was read."""

    async def collect(
        self, keys: Iterable[str], *, each: int = 1, timeout_s: float = 20.0
    ) -> dict[str, list[InferenceResult]]:
        """Read until every key in ``keys`` has ``each`` results; AssertionError naming
        the missing keys after ``timeout_s``."""
        wanted = set(keys)

        def missing() -> set[str]:
            return {k for k in wanted if len(self.results.get(k, ())) < each}

        deadline = time.monotonic() + timeout_s
        while missing():
            if time.monotonic() > deadline:
                raise AssertionError(f"no result for {sorted(missing())} within {timeout_s}s")
            await self._read_once()
        return {k: self.results[k] for k in wanted}

    async def read_for(self, seconds: float) -> None:
        """Keep reading for ``seconds``: results that should never come show up here."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self._read_once()

    async def _read_once(self) -> None:
        batches = await fetch(self._consumer, timeout_ms=200, what="reading results")
        for records in batches.values():
            for raw in records:
                if raw.key is not None:
                    result = decode(InferenceResult, raw.value)
                    key = raw.key.decode()
                    self.results.setdefault(key, []).append(result)
                    self.received.setdefault(key, time.monotonic())


@contextlib.asynccontextmanager
async def results_of(infra: Infra, topic: str) -> AsyncIterator[ResultReader]:
    """A :class:`ResultReader` of ``topic``, positioned at its end before the caller
    publishes anything."""
    consumer = await start_consumer(infra.kafka(), "results", fetch_max_wait_ms=200)
    try:
        await assign_at_end(consumer, await partitions_of(infra.kafka(), topic))
        yield ResultReader(consumer)
    finally:
        await consumer.stop()


async def infer_cli(infra: Infra, cat: Catalog, *args: str) -> tuple[int, str, str]:
    """Run ``mulambda infer *args`` against ``cat``'s topics: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mulambda.cli",
        "infer",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **infra.env(), "MULAMBDA_TOPIC_PREFIX": cat.prefix},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
