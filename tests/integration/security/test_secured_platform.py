"""The platform end to end on the secured broker, every worker as its own role: a
companion's registration reaches the selector (which rebuilt its view by replay), the
router routes a producer application's request to the executor, in both delivery modes
(exactly-once also needs the routers' transactional ids and group offsets)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mulambda.emulator import ExecutorServer, SyntheticModel
from mulambda.harness.infra import PrivateInfra
from mulambda.kafka import Producer, read_until_key
from mulambda.routing.router import Router
from mulambda.security.acls import DEFAULT_ROUTER_GROUP, DEFAULT_SELECTOR_GROUP
from mulambda.selection.selector import Selector
from mulambda.selection.store import ViewStore
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import InferenceResult, InferenceStatus
from tests.integration.routing.support import (
    FAST,
    TIME_SCALE,
    inference_request,
    new_traits,
    register,
)
from tests.integration.security.conftest import SecuredRedis

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fast() -> AsyncIterator[ExecutorServer]:
    model = SyntheticModel(FAST, time_scale=TIME_SCALE, seed=1)
    async with ExecutorServer("127.0.0.1", 0, {FAST.name: model}) as server:
        assert await server.wait_loaded(5)
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def selector(
    secured: PrivateInfra, secured_catalog: Catalog, secured_redis: SecuredRedis
) -> AsyncIterator[Selector]:
    prefix = f"{secured_redis.key_prefix}platform-{uuid.uuid4().hex[:6]}:"
    worker = Selector(
        secured.kafka_as("selector"),
        secured_catalog,
        ViewStore(secured_redis.config(), key_prefix=prefix),
        selector_id=f"s-{uuid.uuid4().hex[:6]}",
        group_id=f"{DEFAULT_SELECTOR_GROUP}-platform-{uuid.uuid4().hex[:6]}",
    )
    async with worker:
        yield worker


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
async def test_a_request_is_served_with_every_worker_in_its_role(
    secured: PrivateInfra,
    secured_catalog: Catalog,
    selector: Selector,
    fast: ExecutorServer,
    exactly_once: bool,
) -> None:
    traits = new_traits()
    async with Producer(secured.kafka_as("companion")) as companion:
        executor_id = await register(companion, secured_catalog, selector, traits, fast.url)
    router = Router(
        secured.kafka_as("router"),
        secured_catalog,
        router_id=f"r-{uuid.uuid4().hex[:6]}",
        group_id=f"{DEFAULT_ROUTER_GROUP}-platform-{uuid.uuid4().hex[:6]}",
        selection_timeout_s=5.0,
        grace_s=2.0,
        exactly_once=exactly_once,
    )
    request = inference_request(secured_catalog, traits, body={"instances": [0, 1]})
    async with (
        router,
        Producer(secured.kafka_as("producer")) as app,
        read_until_key(
            secured.kafka_as("producer"),
            request.reply_topic,
            request.correlation_id,
            InferenceResult,
        ) as waiter,
    ):
        await app.send_and_wait(
            secured_catalog.name(Topic.INFERENCE_REQUESTS), request, key=request.client_id
        )
        result = await waiter.result(30)
        assert router.not_ready_reason() is None
    assert result.status is InferenceStatus.OK, result.error
    assert result.executor_id == executor_id
