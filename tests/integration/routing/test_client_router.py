"""The SDK end to end: a real router, selector and emulated TF-Serving executor."""

from __future__ import annotations

import asyncio

import pytest

from mulambda.emulator import ExecutorServer
from mulambda.kafka import Producer
from mulambda.routing.client import Client
from mulambda.routing.results import InferenceFailed
from mulambda.routing.router import Router
from mulambda.selection.selector import Selector
from mulambda.wire.catalog import Catalog
from mulambda.wire.events import InferenceStatus, SoftWeights
from tests.conftest import Infra
from tests.integration.routing.support import FAST, new_traits, register, uid

pytestmark = pytest.mark.integration


async def test_concurrent_calls_through_the_router_and_a_typed_error(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    router: Router,
) -> None:
    traits = new_traits()
    executor_id = await register(producer, cat, selector, traits, fast.url)
    weights = SoftWeights(latency=0.0, accuracy=1.0)
    async with Client(infra.kafka(uid("sdk-app")), catalog=cat) as client:
        results = await asyncio.gather(
            *(
                client.infer(
                    traits=traits, weights=weights, policy="weighted", instances=[i], deadline=60
                )
                for i in range(200)
            )
        )
        assert all(r.status is InferenceStatus.OK for r in results)
        assert {r.executor_id for r in results} == {executor_id}
        assert [r.output for r in results] == [
            {"predictions": [{"confidence": FAST.confidence(i), "model": FAST.name}]}
            for i in range(200)
        ]
        unknown = traits.model_copy(update={"model_type": uid("unknown-kind")})
        with pytest.raises(InferenceFailed, match="eliminated by traits") as failed:
            await client.infer(traits=unknown, instances=[1], deadline=30)
        assert failed.value.result.status is InferenceStatus.ERROR
        assert not failed.value.retriable
