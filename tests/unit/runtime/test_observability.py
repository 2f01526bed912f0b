from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from mulambda.runtime.observability import HealthServer, JsonFormatter, correlation_id

pytestmark = pytest.mark.unit


async def test_health_server_endpoints_follow_readiness() -> None:
    registry = CollectorRegistry()
    Counter("mulambda_test_things", "things", registry=registry).inc(3)
    ready = False
    async with (
        HealthServer(registry, ready=lambda: ready) as server,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{server.port}"
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{base}/readyz") as resp:
            assert resp.status == 503
        ready = True
        async with session.get(f"{base}/readyz") as resp:
            assert resp.status == 200
        async with session.get(f"{base}/metrics") as resp:
            text = await resp.text()
            assert "mulambda_test_things_total 3.0" in text


async def test_not_ready_answers_say_why() -> None:
    async with (
        HealthServer(
            CollectorRegistry(),
            ready=lambda: False,
            not_ready_reason=lambda: "producer failing for 2.0s: no leader",
        ) as server,
        aiohttp.ClientSession() as session,
    ):
        resp = await session.get(f"http://127.0.0.1:{server.port}/readyz")
        assert resp.status == 503
        assert await resp.json() == {
            "status": "not ready",
            "reason": "producer failing for 2.0s: no leader",
        }


async def test_stop_is_idempotent() -> None:
    server = HealthServer(CollectorRegistry(), ready=lambda: True)
    await server.start()
    await server.stop()
    await server.stop()


def test_json_log_lines_carry_correlation_id_and_extras() -> None:
    record = logging.LogRecord("mulambda.x", logging.INFO, __file__, 1, "hi %s", ("there",), None)
    record.executor_id = "ex-9"
    token = correlation_id.set("corr-1")
    try:
        line = JsonFormatter().format(record)
    finally:
        correlation_id.reset(token)
    entry = json.loads(line)
    assert entry["msg"] == "hi there"
    assert entry["correlation_id"] == "corr-1"
    assert entry["executor_id"] == "ex-9"
    assert entry["level"] == "INFO"
    assert "correlation_id" not in json.loads(JsonFormatter().format(record))
