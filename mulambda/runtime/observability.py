"""What every worker mounts: /metrics, /healthz, /readyz, and JSON-lines logs.

Each worker owns a ``prometheus_client.CollectorRegistry`` so several workers (and tests)
can live in one process without clashing metric names.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mulambda.runtime.lifecycle import Lifecycle

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mulambda_correlation_id", default=None
)
"""Set while handling a request; every log line in that context carries it."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, correlation id, extras."""

    _skip = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid is not None:
            entry["correlation_id"] = cid
        entry.update(
            (key, value)
            for key, value in record.__dict__.items()
            if key not in self._skip and not key.startswith("_")
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON lines (runners call this once)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))


class HealthServer(Lifecycle):
    """aiohttp server with /metrics, /healthz (alive) and /readyz (``ready()`` is true).

    Workers may add routes through ``app`` before ``start``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ready: Callable[[], bool],
        not_ready_reason: Callable[[], str | None] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.registry = registry
        self._ready = ready
        self._reason = not_ready_reason
        self._host = host
        self._port = port
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._bound_port is None:
            raise RuntimeError("health server not started")
        return self._bound_port

    async def start(self) -> None:
        """Bind and serve."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        body = {"status": "not ready"}
        reason = self._reason() if self._reason is not None else None
        if reason:
            body["reason"] = reason
        return web.json_response(body, status=503)
