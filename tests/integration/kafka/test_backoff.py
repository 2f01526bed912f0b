"""aiokafka clients without a broker: their metadata refreshes are paused, not spun.

A broker of its own (stopping it must not touch the session's), one consumer and one
producer started through :func:`~mulambda.kafka.config.start_bounded`, then the broker
stopped: the refreshes the clients try in the next seconds are counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mulambda.harness.infra import PrivateInfra
from mulambda.kafka import KafkaConfig
from mulambda.kafka.backoff import DEFAULT_PAUSE_S, inner_client
from mulambda.kafka.config import close_consumer, start_bounded, start_consumer
from mulambda.kafka.producer import idempotent_client

pytestmark = pytest.mark.integration

WATCH_S = 3.0


def _count_refreshes(client: Any, counts: list[int]) -> None:
    inner = inner_client(client)
    assert inner is not None, f"no aiokafka client inside {client!r}"
    update = inner._metadata_update

    async def counted(*args: Any, **kwargs: Any) -> bool:
        counts.append(1)
        return bool(await update(*args, **kwargs))

    inner._metadata_update = counted


async def test_clients_pause_between_failed_metadata_refreshes_while_the_broker_is_away() -> None:
    async with PrivateInfra(("kafka",)) as infra:
        config = KafkaConfig(bootstrap_servers=infra.bootstrap_servers, request_timeout_s=5.0)
        consumer = await start_consumer(config, "test consumer", group_id="backoff-test")
        consumer.subscribe(["mulambda.inference-requests"])
        producer = idempotent_client(config, linger_ms=0)
        await start_bounded(producer, "test producer", 5.0)
        counts: list[int] = []
        _count_refreshes(consumer, counts)
        _count_refreshes(producer, counts)
        try:
            await infra.run("stop", "kafka")
            counts.clear()
            # The producer wants a leader, the consumer its coordinator: both refresh.
            sending = asyncio.create_task(producer.send("mulambda.inference-requests", b"x"))
            await asyncio.sleep(WATCH_S)
            refreshes = len(counts)
            sending.cancel()
        finally:
            await close_consumer(consumer)
            await producer.stop()
    # Two clients, each at most one failed refresh per pause (plus the one under way).
    bound = 2 * (WATCH_S / DEFAULT_PAUSE_S + 1)
    assert 0 < refreshes <= bound, f"{refreshes} metadata refreshes in {WATCH_S:g} s"
