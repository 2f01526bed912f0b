"""The companions a replicated launch starts are separate executors on real Kafka: stopping
one replica tombstones its own id only."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mulambda.emulator import ExecutorServer, SyntheticModel
from mulambda.emulator.profiles import SyntheticProfile
from mulambda.executors.registration import read_executors
from mulambda.launching.manifests import LaunchOptions, executor_deployment
from mulambda.wire.catalog import Catalog
from tests.conftest import Infra
from tests.factories import registration
from tests.unit.deploy.kubelet import container_args
from tests.unit.deploy.test_replica_ids import _companion, _fields

pytestmark = pytest.mark.integration

MODEL = "FastGood"
REPLICAS = 3


@pytest_asyncio.fixture(loop_scope="session")
async def executor() -> AsyncIterator[ExecutorServer]:
    profile = SyntheticProfile(name=MODEL, D=1, alpha=0, beta=0, J=0, confidences=(0.9,), gamma=0)
    async with ExecutorServer("127.0.0.1", 0, {MODEL: SyntheticModel(profile, seed=1)}) as server:
        assert await server.wait_loaded(5)
        yield server


async def _live(infra: Infra, catalog: Catalog) -> set[str]:
    return set(await read_executors(infra.kafka(), catalog))


async def _until(infra: Infra, catalog: Catalog, want: set[str], absent: set[str]) -> None:
    deadline = time.monotonic() + 45
    while True:
        live = await _live(infra, catalog)
        if want <= live and not absent & live:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"live executors {live}: wanted {want}, not {absent}")
        await asyncio.sleep(0.2)


async def test_stopping_one_replica_leaves_the_others_registered(
    infra: Infra, own_catalog: Catalog, executor: ExecutorServer, tmp_path: Path
) -> None:
    base = f"ex-rep-{uuid.uuid4().hex[:8]}"
    reg = registration(base, model_name=MODEL, model_version=None, heartbeat_interval_s=0.5)
    manifest = executor_deployment(reg, LaunchOptions(replicas=REPLICAS))
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    env = {
        **os.environ, **infra.env(),
        "MULAMBDA_TOPIC_PREFIX": own_catalog.prefix,
        "MULAMBDA_METRICS_PORT": "0",  # one host here, not one pod each
    }  # fmt: skip
    processes: list[asyncio.subprocess.Process] = []
    ids: list[str] = []
    try:
        for ordinal in range(REPLICAS):
            args = container_args(_companion(manifest), _fields(ordinal, labels))
            # Kubelet would give TF Serving on the pod IP; here the emulator stands in.
            for flag in ("--endpoint", "--status-endpoint"):
                args[args.index(flag) + 1] = executor.url
            ids.append(args[args.index("--executor-id") + 1])
            log = (tmp_path / f"companion-{ordinal}.log").open("w")
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "mulambda.cli", *args, env=env, stdout=log, stderr=log
                )
            )
        assert ids == [f"{base}-{n}" for n in range(REPLICAS)]
        await _until(infra, own_catalog, set(ids), set())
        processes[0].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(processes[0].wait(), 30) == 0
        await _until(infra, own_catalog, set(ids[1:]), {ids[0]})
        # Still there a moment later: nothing else tombstoned them.
        await asyncio.sleep(1.0)
        assert set(ids[1:]) <= await _live(infra, own_catalog)
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            await asyncio.wait_for(process.wait(), 30)
    assert all(p.returncode == 0 for p in processes)
    assert not set(ids) & await _live(infra, own_catalog)
