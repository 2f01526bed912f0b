"""Real selector and router processes, configured as deploy/k8s configures them, answer
kubelet-style probes on a non-loopback address of the machine."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import aiohttp
import pytest

from mulambda.wire.catalog import Catalog
from tests.conftest import Infra
from tests.unit.deploy.addresses import non_loopback_ipv4
from tests.unit.deploy.manifests import K8S, documents

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))  # noqa: S104
        return int(s.getsockname()[1])


@pytest.mark.parametrize("worker", ["selector", "router"])
async def test_worker_health_is_reachable_through_the_pod_address(
    infra: Infra, own_catalog: Catalog, worker: str
) -> None:
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to dial")
    port = _free_port()
    # The bind address the manifests give every worker (the port is free'd here: the
    # shared machine is not a pod of its own).
    (config,) = [d for d in documents(K8S / "base" / "config.yaml") if d["kind"] == "ConfigMap"]
    host = config["data"]["MULAMBDA_METRICS_HOST"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mulambda.cli", worker,
        env={
            **os.environ, **infra.env(),
            "MULAMBDA_TOPIC_PREFIX": own_catalog.prefix,
            "MULAMBDA_METRICS_HOST": host,
            "MULAMBDA_METRICS_PORT": str(port),
        },
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        statuses: dict[str, int] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            for _ in range(120):
                try:
                    for path in ("/healthz", "/readyz"):
                        async with session.get(f"http://{address}:{port}{path}") as resp:
                            statuses[path] = resp.status
                except aiohttp.ClientError:
                    pass
                if statuses.get("/readyz") == 200:
                    break
                assert process.returncode is None, "worker exited early"
                await asyncio.sleep(0.25)
        assert statuses == {"/healthz": 200, "/readyz": 200}
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-2000:]
