"""The SDK end to end: a real router, selector and emulated TF-Serving executor."""

from __future__ import annotations

import asyncio
import time

import pytest

from mulambda.emulator import ExecutorServer
from mulambda.kafka import Producer
from mulambda.routing.client import Client
from mulambda.routing.results import InferenceFailed
from mulambda.routing.router import Router
from mulambda.selection.selector import Selector
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import InferenceResult, InferenceStatus, SoftWeights
from tests.conftest import Infra
from tests.integration.routing.support import (
    FAST,
    infer_cli,
    new_traits,
    register,
    results_of,
    uid,
)

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


async def test_infer_cli_no_wait_prints_the_request_id_its_result_carries(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    fast: ExecutorServer,
    router: Router,
) -> None:
    traits = new_traits()
    await register(producer, cat, selector, traits, fast.url)
    args = [
        "--client-id",
        uid("sdk-cli"),
        "--model-type",
        traits.model_type,
        "--input-format",
        traits.input_format,
        "--output-format",
        traits.output_format,
        "--body",
        '{"instances": [1]}',
        "--no-wait",
    ]
    async with results_of(infra, cat.name(Topic.INFERENCE_RESULTS)) as reader:
        code, out, err = await infer_cli(infra, cat, *args)
        assert code == 0, err
        request_id = out.strip()
        assert request_id
        deadline = time.monotonic() + 30
        found: list[InferenceResult] = []
        while not found and time.monotonic() < deadline:
            await reader.read_for(0.5)
            found = [r for rs in reader.results.values() for r in rs if r.request_id == request_id]
    assert len(found) == 1
    assert found[0].status is InferenceStatus.OK
