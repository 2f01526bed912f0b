"""``mulambda launcher`` as a process: settings pick the backend, /readyz answers once it
follows the topic, SIGTERM stops it with exit code 0; unreachable Kafka is exit 1."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from mulambda.harness.infra import clean_environ, free_port
from mulambda.wire.catalog import Catalog
from tests.conftest import REPO, Infra

pytestmark = pytest.mark.integration


async def test_the_launcher_command_runs_until_sigterm(
    infra: Infra, own_catalog: Catalog, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **clean_environ(),
        **infra.env(),
        "MULAMBDA_TOPIC_PREFIX": own_catalog.prefix,
        "MULAMBDA_METRICS_PORT": str(port),
        "MULAMBDA_LAUNCHER_BACKEND": "local",
        "MULAMBDA_LAUNCHER_STATE_DIR": str(tmp_path / "state"),
        "MULAMBDA_LAUNCHER_GROUP_ID": f"test-launcher-cli-{port}",
        "MULAMBDA_SHUTDOWN_GRACE_S": "2",
        "PYTHONPATH": str(REPO),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mulambda", "launcher", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert process.returncode is None, "the launcher exited early"
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "/readyz never answered 200"
                await asyncio.sleep(0.2)
            async with http.get(f"http://127.0.0.1:{port}/metrics") as metrics:
                assert "mulambda_launcher_reports" in await metrics.text()
        assert (tmp_path / "state").is_dir()  # the local backend, as the settings said
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, output.decode()
        assert b"launcher (local backend) follows 0 launch request(s)" in output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_launcher_command_fails_clearly_without_kafka(tmp_path: Path) -> None:
    env = {
        **clean_environ(),
        "MULAMBDA_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "MULAMBDA_KAFKA_REQUEST_TIMEOUT_S": "2",
        "MULAMBDA_LAUNCHER_BACKEND": "local",
        "MULAMBDA_LAUNCHER_STATE_DIR": str(tmp_path / "state"),
        "PYTHONPATH": str(REPO),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mulambda", "launcher", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1, output.decode()
    assert b"cannot start" in output
