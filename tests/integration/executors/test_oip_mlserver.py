"""OIPClient and the companion against a REAL MLServer serving a scikit-learn wine model
trained now and pulled from MinIO (see :mod:`tests.integration.executors.mlserver`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mulambda.errors import ConfigurationError
from mulambda.executors.companion import Companion
from mulambda.executors.oip import OIPClient
from mulambda.executors.tfserving import TFServingClient
from mulambda.harness.infra import free_port
from mulambda.kafka import Admin, replay
from mulambda.protocols.oip import UnsupportedByProtocol
from mulambda.protocols.tfserving import ExecutorInternalError, ExecutorUnavailable, ModelNotFound
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from mulambda.wire.events import ExecutorProtocol, ExecutorStatus, ModelState
from tests.conftest import Infra
from tests.factories import registration
from tests.integration.executors.mlserver import MLServer, wine_served_from_minio

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[MLServer, dict[str, Any]]]:
    async with wine_served_from_minio(infra, tmp_path_factory.mktemp("oip")) as found:
        yield found


@pytest_asyncio.fixture(loop_scope="session")
async def client(served: tuple[MLServer, dict[str, Any]]) -> AsyncIterator[OIPClient]:
    async with OIPClient(served[0].url, timeout_s=10.0) as started:
        yield started


async def test_tf_serving_rows_and_columns_are_answered_in_their_own_dialect(
    served: tuple[MLServer, dict[str, Any]], client: OIPClient
) -> None:
    _, facts = served
    labels = facts["labels"]
    rows = await client.infer("predict", "wine", {"instances": facts["rows"]}, version=1)
    assert rows == {"predictions": [[label] for label in labels]}
    columns = await client.infer("predict", "wine", {"inputs": facts["rows"]})
    assert columns == {"outputs": [[label] for label in labels]}
    assert facts["accuracy"] > 0.8  # a real model, really trained


async def test_an_oip_body_goes_as_is_and_the_answer_is_oip(
    served: tuple[MLServer, dict[str, Any]], client: OIPClient
) -> None:
    _, facts = served
    flat = [v for row in facts["rows"] for v in row]
    body = {
        "inputs": [
            {"name": "x", "shape": [len(facts["rows"]), 13], "datatype": "FP64", "data": flat}
        ]
    }
    answer = await client.infer("predict", "wine", body)
    assert answer["model_name"] == "wine"
    (output,) = answer["outputs"]
    assert output["datatype"] == "INT64"
    assert output["shape"] == [len(facts["rows"]), 1]
    assert output["data"] == facts["labels"]


async def test_readiness_metadata_and_status(client: OIPClient) -> None:
    assert await client.server_ready()
    assert await client.model_ready("wine")
    assert await client.model_ready("wine", 1)
    assert (await client.metadata("wine"))["name"] == "wine"
    (status,) = await client.status("wine", 1)
    assert (status.version, status.state) == (1, ModelState.AVAILABLE)
    with pytest.raises(ModelNotFound) as missing:
        await client.status("no-such-model")
    assert missing.value.retriable
    with pytest.raises(ConfigurationError):
        await client.status("wine", label="stable")


async def test_errors_map_onto_the_typed_executor_errors(client: OIPClient) -> None:
    with pytest.raises(ModelNotFound) as unknown_version:
        await client.infer("predict", "wine", {"instances": [[0.0] * 13]}, version=7)
    assert unknown_version.value.status == 404
    assert unknown_version.value.retriable
    # MLServer answers a model's own ValueError (3 features, 13 expected) with a 500.
    with pytest.raises(ExecutorInternalError) as bad_shape:
        await client.infer("predict", "wine", {"instances": [[1.0, 2.0, 3.0]]})
    assert bad_shape.value.status == 500
    assert bad_shape.value.retriable
    with pytest.raises(UnsupportedByProtocol) as classify:
        await client.infer("classify", "wine", {"examples": [{"x": 1.0}]})
    assert classify.value.retriable
    assert classify.value.status is None


async def test_a_closed_port_is_unavailable() -> None:
    async with OIPClient(f"http://127.0.0.1:{free_port()}", timeout_s=2.0) as client:
        with pytest.raises(ExecutorUnavailable) as down:
            await client.infer("predict", "wine", {"instances": [[0.0] * 13]})
        assert down.value.status is None
        assert down.value.retriable


# --- the companion -------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def own_catalog(infra: Infra) -> AsyncIterator[Catalog]:
    catalog = load_catalog(f"oip-companion-{uuid.uuid4().hex[:6]}.")
    async with Admin(infra.kafka("mulambda-test-admin")) as admin:
        await admin.apply(catalog)
        yield catalog
        await admin.delete([catalog.name(t) for t in Topic])


async def _statuses(infra: Infra, catalog: Catalog, executor_id: str) -> list[ExecutorStatus]:
    found: list[ExecutorStatus] = []

    def keep(record: Any) -> None:
        if record.key_str == executor_id and isinstance(record.value, ExecutorStatus):
            found.append(record.value)

    await replay(infra.kafka(), {catalog.name(Topic.EXECUTOR_STATUS): ExecutorStatus}, keep)
    return found


async def _until_state(
    infra: Infra, catalog: Catalog, executor_id: str, state: ModelState
) -> ExecutorStatus:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for status in await _statuses(infra, catalog, executor_id):
            if status.model_state is state:
                return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {state} status for {executor_id} within 20 s")


async def test_companion_reads_readiness_from_the_oip_endpoints(
    infra: Infra, own_catalog: Catalog, tmp_path: Path
) -> None:
    # A server of its own: this test stops it.
    async with wine_served_from_minio(infra, tmp_path, name="wine-c") as (server, _):
        executor_id = f"oip-{uuid.uuid4().hex[:8]}"
        reg = registration(
            executor_id,
            model_name="wine-c",
            model_version=1,
            endpoint=server.url,
            protocol=ExecutorProtocol.OIP_V2,
            heartbeat_interval_s=0.3,
        )
        companion = Companion(
            infra.kafka(),
            own_catalog,
            reg,
            executor_id=executor_id,
            tfserving=OIPClient(server.url, timeout_s=2.0),
        )
        async with companion:
            await _until_state(infra, own_catalog, executor_id, ModelState.AVAILABLE)
            server.stop()
            down = await _until_state(infra, own_catalog, executor_id, ModelState.UNKNOWN)
            assert down.detail is not None
            assert server.url.removeprefix("http://") in down.detail


def test_companion_refuses_a_client_of_another_protocol(infra: Infra) -> None:
    reg = registration("oip-x", protocol=ExecutorProtocol.OIP_V2)
    with pytest.raises(ConfigurationError, match="speaks oip-v2"):
        Companion(
            infra.kafka(),
            load_catalog("unused."),
            reg,
            executor_id="oip-x",
            tfserving=TFServingClient("http://127.0.0.1:9"),
        )
