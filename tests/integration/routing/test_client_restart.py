"""The SDK across a broker restart, on a PRIVATE Kafka (mulambda.harness.infra): the shared
broker other sessions use is never restarted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mulambda.errors import MulambdaError
from mulambda.harness.infra import PrivateInfra
from mulambda.kafka import Admin, KafkaConfig
from mulambda.routing.client import Client
from mulambda.wire.catalog import Catalog, load_catalog
from mulambda.wire.events import InferenceResult, InferenceStatus
from tests.integration.routing.client_responder import Responder

pytestmark = pytest.mark.integration

TRAITS = {"model_type": "sdk", "input_format": "feature", "output_format": "confidence"}


@pytest_asyncio.fixture(loop_scope="session")
async def private() -> AsyncIterator[PrivateInfra]:
    async with PrivateInfra(("kafka",)) as infra:
        yield infra


def _config(infra: PrivateInfra, client_id: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=infra.bootstrap_servers, request_timeout_s=15.0, client_id=client_id
    )


async def test_calls_survive_a_broker_restart(private: PrivateInfra) -> None:
    cat: Catalog = load_catalog("sdk-restart.")
    async with Admin(_config(private, "admin")) as admin:
        await admin.apply(cat)
    marker = f"sdk-{uuid.uuid4().hex[:8]}"
    deadline_s = 40.0
    async with (
        Responder(_config(private, "responder"), cat, marker) as responder,
        Client(_config(private, f"{marker}-app"), catalog=cat) as client,
    ):
        warm = await client.infer(traits=TRAITS, instances=[0], deadline=30)
        assert warm.status is InferenceStatus.OK

        async def call(i: int) -> InferenceResult | MulambdaError:
            try:
                return await client.infer(
                    traits=TRAITS, instances=[i], policy="slow:1", deadline=deadline_s
                )
            except MulambdaError as exc:  # typed: the only acceptable failure
                return exc

        before = [asyncio.create_task(call(i)) for i in range(1, 201)]
        async with asyncio.timeout(30):
            while responder.seen < 201:  # every request reached the responder
                await asyncio.sleep(0.05)
        started = time.monotonic()
        restart = asyncio.create_task(private.restart("kafka"))
        await asyncio.sleep(0.5)
        during = [asyncio.create_task(call(i)) for i in range(201, 301)]
        await restart
        async with asyncio.timeout(deadline_s + 15):  # nothing hangs past its deadline
            outcomes = await asyncio.gather(*before, *during)
        assert time.monotonic() - started < deadline_s + 15
        ok = [o for o in outcomes if isinstance(o, InferenceResult)]
        assert all(o.status is InferenceStatus.OK for o in ok)
        for i, outcome in enumerate(outcomes, start=1):
            if isinstance(outcome, InferenceResult):
                assert outcome.output == {"echo": {"instances": [i]}}
        assert len(ok) > 0, outcomes[:5]

        after = await asyncio.gather(
            *(client.infer(traits=TRAITS, instances=[i], deadline=60) for i in range(50))
        )
        assert [r.output for r in after] == [{"echo": {"instances": [i]}} for i in range(50)]
