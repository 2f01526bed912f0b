"""What every command shares: settings, running a coroutine, one-line failures."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Coroutine
from typing import Any, NoReturn, Protocol, TypeVar

import click
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from mulambda.errors import MulambdaError
from mulambda.runtime.observability import HealthServer
from mulambda.runtime.runner import run_loop, serve
from mulambda.runtime.settings import Settings
from mulambda.selection.admission import EndpointAllowList, RegistrationGate

T = TypeVar("T")


def load_settings() -> Settings:
    """Settings from the environment, or a clean exit naming the bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise click.ClickException(f"MULAMBDA_{field.upper()}: {first['msg']}") from exc


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; MulambdaError becomes a one-line message and exit 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # aiokafka logs every failed connection attempt; the one-line reason below says enough
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(coro)
    except MulambdaError as exc:
        raise click.ClickException(exc.reason) from exc


def registration_gate(settings: Settings) -> RegistrationGate:
    """The registration checks the settings ask for (signatures, endpoint allow-list);
    a bad allow-list entry is a usage error with its reason."""
    secret = settings.registration_secret
    try:
        allow = EndpointAllowList.parse(settings.executor_endpoint_allow)
    except MulambdaError as exc:
        raise click.ClickException(exc.reason) from exc
    return RegistrationGate(None if secret is None else secret.get_secret_value().encode(), allow)


class Worker(Protocol):
    """What :func:`run_worker` runs: a selector or a router."""

    registry: CollectorRegistry

    @property
    def ready(self) -> bool: ...

    def not_ready_reason(self) -> str | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def wait(self) -> None: ...


def default_worker_id(role: str) -> str:
    """``{role}-{host}-{pid}``: unique among the workers running now."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


class _WithHealth:
    """A worker plus its health server, as one runner Service."""

    def __init__(self, worker: Worker, health: HealthServer) -> None:
        self.worker = worker
        self.health = health

    async def start(self) -> None:
        # Health first: /healthz answers during a slow start, /readyz only after it.
        await self.health.start()
        await self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()
        await self.health.stop()

    async def wait(self) -> None:
        await self.worker.wait()


def run_worker(worker: Worker, settings: Settings) -> NoReturn:
    """Serve ``worker`` with /metrics, /healthz and /readyz until SIGTERM, then exit."""
    health = HealthServer(
        worker.registry,
        ready=lambda: worker.ready,
        not_ready_reason=worker.not_ready_reason,
        host=settings.metrics_host,
        port=settings.metrics_port,
    )
    raise SystemExit(
        run_loop(
            serve(_WithHealth(worker, health), grace_s=settings.shutdown_grace_s),
            settings.event_loop,
        )
    )
