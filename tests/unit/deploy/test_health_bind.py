"""The health server binds where MULAMBDA_METRICS_HOST says: kubelet dials the pod IP."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from mulambda.runtime.observability import HealthServer
from mulambda.runtime.settings import Settings
from tests.unit.deploy.addresses import non_loopback_ipv4

pytestmark = pytest.mark.unit

ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what containers bind, on purpose


def _address() -> str:
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to dial")
    return address


def test_metrics_host_defaults_to_loopback_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MULAMBDA_METRICS_HOST", raising=False)
    assert Settings().metrics_host == "127.0.0.1"
    monkeypatch.setenv("MULAMBDA_METRICS_HOST", ALL_INTERFACES)
    assert Settings().metrics_host == ALL_INTERFACES


async def test_all_interfaces_answer_probes_on_a_non_loopback_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = _address()
    monkeypatch.setenv("MULAMBDA_METRICS_HOST", ALL_INTERFACES)
    settings = Settings()
    async with (
        HealthServer(CollectorRegistry(), ready=lambda: True, host=settings.metrics_host) as server,
        aiohttp.ClientSession() as session,
    ):
        for path in ("/healthz", "/readyz", "/metrics"):
            async with session.get(f"http://{address}:{server.port}{path}") as resp:
                assert resp.status == 200, path


async def test_loopback_default_is_unreachable_from_a_non_loopback_address() -> None:
    address = _address()
    async with (
        HealthServer(CollectorRegistry(), ready=lambda: True) as server,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(f"http://{address}:{server.port}/healthz")
