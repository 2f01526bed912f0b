"""Fixtures of the router's integration tests: topics, a selector, a producer, executors,
a router. Module-scoped ones are made once per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mulambda.emulator import ExecutorServer, SyntheticModel
from mulambda.kafka import Admin, Producer
from mulambda.routing.router import Router
from mulambda.selection.selector import Selector
from mulambda.selection.store import ViewStore
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from tests.conftest import Infra
from tests.integration.routing.support import FAST, TIME_SCALE, uid


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cat(infra: Infra) -> AsyncIterator[Catalog]:
    """This module's topics: its selector answers every selection request on them."""
    catalog = load_catalog(f"{uid('router')}.")
    async with Admin(infra.kafka("mulambda-test-admin")) as admin:
        await admin.apply(catalog)
        yield catalog
        await admin.delete([catalog.name(t) for t in Topic])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def selector(infra: Infra, cat: Catalog) -> AsyncIterator[Selector]:
    prefix = f"{uid('test-router')}:"
    worker = Selector(
        infra.kafka("router-test-selector"),
        cat,
        ViewStore(infra.redis_url, key_prefix=prefix),
        selector_id=uid("selector"),
        group_id=uid("selector-group"),
    )
    await worker.start()  # returns once it owns its request partitions
    try:
        yield worker
    finally:
        await worker.stop()
        async with ViewStore(infra.redis_url, key_prefix=prefix) as store:
            await store.clear()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def producer(infra: Infra) -> AsyncIterator[Producer]:
    async with Producer(infra.kafka()) as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fast() -> AsyncIterator[ExecutorServer]:
    """FastGood, scaled down: the executor that answers."""
    model = SyntheticModel(FAST, time_scale=TIME_SCALE, seed=1)
    async with ExecutorServer("127.0.0.1", 0, {FAST.name: model}) as server:
        assert await server.wait_loaded(5)
        yield server


@pytest.fixture(scope="module")
def router_group() -> str:
    return uid("router-group")


@pytest_asyncio.fixture(loop_scope="session")
async def router(
    infra: Infra, cat: Catalog, selector: Selector, router_group: str
) -> AsyncIterator[Router]:
    worker = Router(
        infra.kafka("router-test"),
        cat,
        router_id=uid("router"),
        group_id=router_group,
        selection_timeout_s=5.0,
        call_timeout_s=5.0,
        grace_s=10.0,
    )
    async with worker:
        yield worker
