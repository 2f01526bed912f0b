"""No secret leaves a worker: selector and router run as the real CLI processes with
every secret setting set (their SCRAM passwords, the Redis password, the MinIO secret,
and a canary in every other SecretStr setting), are fed records that end in dead
letters and error results, and then every byte they put out — logs at DEBUG,
/metrics, /readyz, dead letters, error results, a CLI's failure message — is searched
for each secret's value."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from mulambda.harness.infra import PrivateInfra, free_ports
from mulambda.kafka import Producer, Record, await_delivery, replay
from mulambda.runtime.settings import SECRET_SETTINGS
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import DeadLetter, InferenceResult, deadline_in
from tests.factories import TRAITS
from tests.integration.routing.support import inference_request
from tests.integration.security.conftest import SecuredRedis, cli_env, mulambda

pytestmark = pytest.mark.integration

REDIS_KEY_PREFIX = "mulambda-sec:leaks:"


def worker_env(
    secured: PrivateInfra, redis: SecuredRedis, role: str, canaries: dict[str, str], port: int
) -> dict[str, str]:
    # Every secret setting carries a value nobody else has, the real ones where they
    # must work; the Kafka password file wins over the canary in the variable.
    return canaried(cli_env(secured, role), canaries) | {
        "MULAMBDA_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "MULAMBDA_REDIS_USERNAME": redis.username,
        "MULAMBDA_REDIS_PASSWORD": redis.password,
        "MULAMBDA_REDIS_KEY_PREFIX": REDIS_KEY_PREFIX,
        "MULAMBDA_LOG_LEVEL": "DEBUG",
        "MULAMBDA_METRICS_PORT": str(port),
        "MULAMBDA_SHUTDOWN_GRACE_S": "2",
    }


def canaried(env: dict[str, str], canaries: dict[str, str]) -> dict[str, str]:
    """``env`` plus a canary in every secret setting it does not set itself."""
    return {f"MULAMBDA_{name.upper()}": value for name, value in canaries.items()} | env


class Worker:
    """A ``mulambda`` CLI worker process with its output in a file."""

    def __init__(self, command: str, env: dict[str, str], log: Path, port: int) -> None:
        self.command, self.env, self.log, self.port = command, env, log, port
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mulambda",
            self.command,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self.log.open("wb"),
            stderr=asyncio.subprocess.STDOUT,
        )

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}{path}") as response,
        ):
            return response.status, await response.text()

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            assert self.process is not None
            if self.process.returncode is not None:
                pytest.fail(f"{self.command} exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                if (await self.get("/readyz"))[0] == 200:
                    return
            await asyncio.sleep(0.3)
        pytest.fail(f"{self.command} not ready: {self.log.read_text()[-3000:]}")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@pytest_asyncio.fixture(loop_scope="session")
async def canaries() -> AsyncIterator[dict[str, str]]:
    # Hex, so a canary passes whatever format a key setting checks.
    yield {name: secrets.token_hex(24) for name in sorted(SECRET_SETTINGS)}


async def test_no_secret_reaches_logs_metrics_results_or_dead_letters(
    secured: PrivateInfra,
    secured_catalog: Catalog,
    secured_redis: SecuredRedis,
    canaries: dict[str, str],
    tmp_path: Path,
) -> None:
    assert {"kafka_sasl_password", "redis_password", "minio_secret_key"} <= set(canaries)
    ports = free_ports(2)
    workers = [
        Worker(
            role,
            worker_env(secured, secured_redis, role, canaries, port),
            tmp_path / f"{role}.log",
            port,
        )
        for role, port in zip(("selector", "router"), ports, strict=True)
    ]
    marker = f"leak-{uuid.uuid4().hex[:8]}"
    try:
        for worker in workers:
            await worker.start()
        for worker in workers:
            await worker.wait_ready()
        # An answerable request without a candidate (an error result) and garbage for
        # both consumed topics (dead letters).
        request = inference_request(
            secured_catalog, TRAITS, client_id=marker, deadline=deadline_in(10)
        )
        async with Producer(secured.kafka_as("producer")) as app:
            await app.send_and_wait(
                secured_catalog.name(Topic.INFERENCE_REQUESTS), request, key=marker
            )
            await await_delivery(
                await app.send_raw(
                    secured_catalog.name(Topic.INFERENCE_REQUESTS), marker.encode(), key=marker
                ),
                "garbage request",
            )
        async with Producer(secured.kafka_as("router")) as router_user:
            await await_delivery(
                await router_user.send_raw(
                    secured_catalog.name(Topic.SELECTION_REQUESTS), marker.encode(), key=marker
                ),
                "garbage selection request",
            )
        results: list[InferenceResult] = []
        letters: list[DeadLetter] = []
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            results, letters = await answers(secured, secured_catalog, request.correlation_id)
            mine = [d for d in letters if marker.encode() in (d.original_value or b"")]
            if results and len(mine) >= 2:
                break
            await asyncio.sleep(0.5)
        assert [r.status.value for r in results] == ["error"], results
        assert {d.topic for d in letters if marker.encode() in (d.original_value or b"")} == {
            secured_catalog.name(Topic.INFERENCE_REQUESTS),
            secured_catalog.name(Topic.SELECTION_REQUESTS),
        }
        served = [await w.get(path) for w in workers for path in ("/metrics", "/readyz")]
    finally:
        for worker in workers:
            await worker.stop()
    bad_cli = failing_cli(secured, canaries)
    outputs = {
        **{f"{w.command} log": w.log.read_text() for w in workers},
        **{f"served {i}": text for i, (_, text) in enumerate(served)},
        "error results": "\n".join(r.model_dump_json() for r in results),
        "dead letters": "\n".join(d.model_dump_json() for d in letters)
        + "\n".join((d.original_value or b"").decode(errors="replace") for d in letters),
        "failing CLI": bad_cli,
        "broker log": (secured.require_home() / "kafka" / "kafka.log").read_text(),
    }
    assert all(outputs.values()), {k: len(v) for k, v in outputs.items()}
    assert "DEBUG" in outputs["router log"]  # the most talkative level ran
    values = {
        **{f"{role} SCRAM password": password(secured, role) for role in ("selector", "router")},
        "producer SCRAM password": password(secured, "producer"),
        "Redis password": secured_redis.password,
        "Redis default-user password": secured_redis.default_password,
        **{f"{name} canary": value for name, value in canaries.items()},
    }
    leaks = [
        (secret, where)
        for secret, value in values.items()
        for where, text in outputs.items()
        if value in text
    ]
    print(
        f"\nsearched {sum(map(len, outputs.values()))} characters of {len(outputs)} outputs "
        f"for {len(values)} secrets: {len(leaks)} found"
    )
    assert leaks == []


def password(secured: PrivateInfra, user: str) -> str:
    return secured.kafka_user_password_file(user).read_text(encoding="utf-8").strip()


async def answers(
    secured: PrivateInfra, catalog: Catalog, correlation_id: str
) -> tuple[list[InferenceResult], list[DeadLetter]]:
    results: list[InferenceResult] = []
    letters: list[DeadLetter] = []

    def keep(record: Record[InferenceResult | DeadLetter]) -> None:
        value = record.value
        if isinstance(value, InferenceResult) and value.correlation_id == correlation_id:
            results.append(value)
        elif isinstance(value, DeadLetter):
            letters.append(value)

    await replay(
        secured.kafka_as("administrator"),
        {
            catalog.name(Topic.INFERENCE_RESULTS): InferenceResult,
            catalog.name(Topic.DEAD_LETTERS): DeadLetter,
        },
        keep,
    )
    return results, letters


def failing_cli(secured: PrivateInfra, canaries: dict[str, str]) -> str:
    """A CLI run whose Kafka password (a canary) the broker refuses: its message."""
    env = canaried(cli_env(secured, "administrator"), canaries)
    env.pop("MULAMBDA_KAFKA_SASL_PASSWORD_FILE")
    done = mulambda(env, "executors", "list")
    assert done.returncode != 0
    return done.stdout + done.stderr
