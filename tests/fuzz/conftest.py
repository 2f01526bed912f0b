"""The hostile input suite's platform: real workers on their own topics, and the tally.

One platform per session, on the session's real Kafka and Redis under topics and keys
of its own: a selector (with a registration secret and an endpoint allow-list), a
router (requests above :data:`ROUTER_LIMIT` refused), a companion registering the one
served executor (a synthetic TF Serving model), each with its ``/readyz`` server. The
counts of every run go to :data:`tests.fuzz.summary.TALLY`, printed at the end of the
session (``pytest -s`` not needed; see :mod:`tests.fuzz.summary`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest_asyncio

from mulambda.emulator import ExecutorServer, SyntheticModel
from mulambda.emulator.profiles import profile_by_name
from mulambda.executors.companion import Companion
from mulambda.executors.tfserving import TFServingClient
from mulambda.kafka import Admin, Producer
from mulambda.kafka.reply import partition_for
from mulambda.routing.router import Router
from mulambda.runtime.observability import HealthServer
from mulambda.selection.admission import EndpointAllowList, RegistrationGate
from mulambda.selection.selector import MAX_REQUEST_BYTES, Selector
from mulambda.selection.store import ViewStore
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from mulambda.wire.codec import MAX_STATE_RECORD_BYTES
from mulambda.wire.events import ExecutorRegistration
from mulambda.wire.signatures import executor_key
from tests.conftest import Infra
from tests.fuzz.hostile import SERVED_TRAITS, STATE_TOPICS, Context

SECRET = b"fuzz registration secret"
ROUTER_LIMIT = 256 * 1024
"""The routers' request bound in this suite (below the broker's, so oversize is testable)."""
SERVED = "fz-served"
"""The executor the companion registers and valid requests are served by."""


@dataclass
class Platform:
    """The running workers and where the suite's records go."""

    catalog: Catalog
    ctx: Context
    producer: Producer
    selector: Selector
    router: Router
    companion: Companion
    health: dict[str, int]
    """Port of each worker's /readyz server."""


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def platform(infra: Infra) -> AsyncIterator[Platform]:
    run = uuid.uuid4().hex[:8]
    catalog = load_catalog(f"fz-{run}.")
    model = profile_by_name("FastGood")
    async with Admin(infra.kafka("fz-admin")) as admin:
        await admin.apply(catalog)
        try:
            async with ExecutorServer(
                "127.0.0.1", 0, {model.name: SyntheticModel(model, time_scale=0.05, seed=1)}
            ) as executor:
                assert await executor.wait_loaded(5)
                selector = Selector(
                    infra.kafka("fz-selector"),
                    catalog,
                    ViewStore(infra.redis_url, key_prefix=f"fz-{run}:"),
                    selector_id=f"fz-selector-{run}",
                    group_id=f"fz-selector-{run}",
                    registrations=RegistrationGate(SECRET, EndpointAllowList(["127.0.0.1/32"])),
                    grace_s=2.0,
                )
                router_id = f"fz-router-{run}"
                router = Router(
                    infra.kafka("fz-router"),
                    catalog,
                    router_id=router_id,
                    group_id=f"fz-router-{run}",
                    selection_timeout_s=5.0,
                    call_timeout_s=5.0,
                    grace_s=2.0,
                    max_request_bytes=ROUTER_LIMIT,
                )
                companion = Companion(
                    infra.kafka("fz-companion"),
                    catalog,
                    ExecutorRegistration(
                        executor_id=SERVED,
                        model_name=model.name,
                        traits=SERVED_TRAITS,
                        accuracy=0.9,
                        endpoint=executor.url,
                        heartbeat_interval_s=2.0,
                    ),
                    executor_id=SERVED,
                    tfserving=TFServingClient(executor.url),
                    probe_interval_s=600,  # one round at start: thousands of fake clients
                    probe_timeout_s=0.2,
                    health_port=0,
                    signing_key=executor_key(SECRET, SERVED),
                )
                servers = {
                    "selector": HealthServer(
                        selector.registry,
                        ready=lambda: selector.ready,
                        not_ready_reason=selector.not_ready_reason,
                    ),
                    "router": HealthServer(
                        router.registry,
                        ready=lambda: router.ready,
                        not_ready_reason=router.not_ready_reason,
                    ),
                }
                async with Producer(infra.kafka("fz-producer")) as producer:
                    for server in servers.values():
                        await server.start()
                    try:
                        async with selector, companion, router:
                            health = {name: s.port for name, s in servers.items()}
                            assert companion.health_port is not None
                            health["companion"] = companion.health_port
                            replies = catalog.spec(Topic.SELECTION_REPLIES).partitions
                            router_partition = partition_for(router_id, replies)
                            limits = dict.fromkeys(STATE_TOPICS, MAX_STATE_RECORD_BYTES)
                            limits[Topic.SELECTION_REQUESTS] = MAX_REQUEST_BYTES
                            limits[Topic.INFERENCE_REQUESTS] = ROUTER_LIMIT
                            limits[Topic.SELECTION_REPLIES] = ROUTER_LIMIT
                            ctx = Context(
                                catalog=catalog,
                                secret=SECRET,
                                selection_reply_partition=(router_partition + 1) % replies,
                                router_reply_partition=router_partition,
                                limits=limits,
                            )
                            yield Platform(
                                catalog, ctx, producer, selector, router, companion, health
                            )
                    finally:
                        for server in servers.values():
                            await server.stop()
                        async with ViewStore(infra.redis_url, key_prefix=f"fz-{run}:") as store:
                            await store.clear()
        finally:
            await admin.delete([catalog.name(t) for t in Topic])
