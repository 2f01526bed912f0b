"""The router with OIP v2 executors: a REAL MLServer (wine model trained now, pulled from
MinIO) beside a TF-Serving-protocol executor (the emulator), through real Kafka and Redis.

Covered: a TF Serving body answered by MLServer (converted to tensors and back), an OIP
body answered by the TF Serving executor (the other direction), selection between the
two by traits and by weights, and failover to the TF Serving executor when MLServer
stops mid-run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mulambda.emulator import ExecutorServer
from mulambda.kafka import Producer
from mulambda.routing.router import Router
from mulambda.selection.selector import Selector
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import (
    ExecutorProtocol,
    ExecutorRegistration,
    InferenceStatus,
    SoftWeights,
    Traits,
)
from tests.conftest import Infra
from tests.integration.executors.mlserver import MLServer, wine_served_from_minio
from tests.integration.routing.support import FAST, infer, inference_request, uid, until

pytestmark = pytest.mark.integration

WINE = "wine"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mlserver(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[MLServer, dict[str, Any]]]:
    async with wine_served_from_minio(infra, tmp_path_factory.mktemp("oip-routing")) as found:
        yield found


def _wine_traits() -> Traits:
    return Traits(model_type=uid("wine"), input_format="wine-13", output_format="class")


async def _register(
    producer: Producer,
    cat: Catalog,
    selector: Selector,
    traits: Traits,
    endpoint: str,
    *,
    model: str,
    protocol: ExecutorProtocol,
    accuracy: float,
    delay_ms_per_element: float = 0.0,
) -> str:
    executor_id = uid(protocol.value)
    registration = ExecutorRegistration(
        executor_id=executor_id,
        model_name=model,
        model_version=1 if protocol is ExecutorProtocol.OIP_V2 else None,
        traits=traits,
        accuracy=accuracy,
        endpoint=endpoint,
        protocol=protocol,
        model_data_delay_ms_per_element=delay_ms_per_element,
        heartbeat_interval_s=300,  # no heartbeats here: stay live meanwhile
    )
    await producer.send_and_wait(
        cat.name(Topic.EXECUTOR_REGISTRATIONS), registration, key=executor_id
    )
    view = selector.view
    await until(lambda: view.get(executor_id) is not None, f"{executor_id} in view")
    return executor_id


async def test_a_tf_serving_body_is_answered_by_mlserver(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    router: Router,
    mlserver: tuple[MLServer, dict[str, Any]],
) -> None:
    server, facts = mlserver
    traits = _wine_traits()
    oip = await _register(
        producer,
        cat,
        selector,
        traits,
        server.url,
        model=WINE,
        protocol=ExecutorProtocol.OIP_V2,
        accuracy=facts["accuracy"],
    )
    entry = selector.view.get(oip)
    assert entry is not None
    assert entry.protocol is ExecutorProtocol.OIP_V2
    request = inference_request(cat, traits, body={"instances": facts["rows"]})
    result = await infer(infra, cat, producer, request)
    assert result.status is InferenceStatus.OK, result.error
    assert result.executor_id == oip
    assert result.output == {"predictions": [[label] for label in facts["labels"]]}


async def test_an_oip_body_is_answered_by_a_tf_serving_executor(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    router: Router,
    fast: ExecutorServer,
) -> None:
    traits = _wine_traits()
    tfs = await _register(
        producer,
        cat,
        selector,
        traits,
        fast.url,
        model=FAST.name,
        protocol=ExecutorProtocol.TFSERVING_REST,
        accuracy=0.5,
    )
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [0.0] * 6}]}
    result = await infer(infra, cat, producer, inference_request(cat, traits, body=body))
    assert result.status is InferenceStatus.OK, result.error
    assert result.executor_id == tfs
    assert result.output is not None
    # The emulator's columnar outputs (confidence, model name per row) as OIP tensors.
    outputs = {t["name"]: t for t in result.output["outputs"]}
    assert outputs["confidence"]["shape"] == [2]
    assert outputs["confidence"]["datatype"] == "FP64"
    assert outputs["model"] == {
        "name": "model",
        "shape": [2],
        "datatype": "BYTES",
        "data": [FAST.name, FAST.name],
    }


async def test_selection_between_protocols_by_traits_and_weights(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    router: Router,
    fast: ExecutorServer,
    mlserver: tuple[MLServer, dict[str, Any]],
) -> None:
    server, facts = mlserver
    traits, other_traits = _wine_traits(), _wine_traits()
    # MLServer: accurate, but its model costs 50 ms per input row.
    oip = await _register(
        producer,
        cat,
        selector,
        traits,
        server.url,
        model=WINE,
        protocol=ExecutorProtocol.OIP_V2,
        accuracy=0.97,
        delay_ms_per_element=50.0,
    )
    tfs = await _register(
        producer,
        cat,
        selector,
        traits,
        fast.url,
        model=FAST.name,
        protocol=ExecutorProtocol.TFSERVING_REST,
        accuracy=0.6,
    )
    # Under other traits only the TF Serving executor is registered.
    tfs_other = await _register(
        producer,
        cat,
        selector,
        other_traits,
        fast.url,
        model=FAST.name,
        protocol=ExecutorProtocol.TFSERVING_REST,
        accuracy=0.6,
    )
    body = {"instances": facts["rows"]}
    accurate = await infer(
        infra,
        cat,
        producer,
        inference_request(cat, traits, body=body, weights=SoftWeights(latency=0, accuracy=1)),
    )
    assert accurate.status is InferenceStatus.OK, accurate.error
    assert accurate.executor_id == oip
    assert accurate.output == {"predictions": [[label] for label in facts["labels"]]}
    quick = await infer(
        infra,
        cat,
        producer,
        inference_request(cat, traits, body=body, weights=SoftWeights(latency=1, accuracy=0)),
    )
    assert quick.status is InferenceStatus.OK, quick.error
    assert quick.executor_id == tfs
    assert quick.output is not None
    assert len(quick.output["predictions"]) == len(facts["rows"])
    by_traits = await infer(
        infra,
        cat,
        producer,
        inference_request(cat, other_traits, body=body, weights=SoftWeights(accuracy=1)),
    )
    assert by_traits.status is InferenceStatus.OK, by_traits.error
    assert by_traits.executor_id == tfs_other


async def test_mlserver_stopped_mid_run_fails_over_to_the_tf_serving_executor(
    infra: Infra,
    cat: Catalog,
    selector: Selector,
    producer: Producer,
    router: Router,
    fast: ExecutorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    work = tmp_path_factory.mktemp("oip-failover")
    async with wine_served_from_minio(infra, work, name="wine-f") as (server, facts):
        traits = _wine_traits()
        oip = await _register(
            producer,
            cat,
            selector,
            traits,
            server.url,
            model="wine-f",
            protocol=ExecutorProtocol.OIP_V2,
            accuracy=0.97,
        )
        tfs = await _register(
            producer,
            cat,
            selector,
            traits,
            fast.url,
            model=FAST.name,
            protocol=ExecutorProtocol.TFSERVING_REST,
            accuracy=0.6,
        )
        body = {"instances": facts["rows"]}

        def request() -> Any:
            return inference_request(cat, traits, body=body)

        before = await infer(infra, cat, producer, request())
        assert before.status is InferenceStatus.OK, before.error
        assert (before.executor_id, before.attempts) == (oip, 1)
        server.stop()
        results = [await infer(infra, cat, producer, request()) for _ in range(3)]
        for after in results:
            assert after.status is InferenceStatus.OK, after.error
            assert after.executor_id == tfs
            assert after.output is not None
            assert len(after.output["predictions"]) == len(facts["rows"])
        # The first call after the stop found MLServer's port closed and failed over; the
        # endpoint is suspect since, so later requests may go to the emulator at once.
        assert results[0].attempts == 2
        assert all(r.attempts in (1, 2) for r in results[1:])
