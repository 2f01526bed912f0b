"""Latency probes: the endpoint clients serve, and the round trip companions time against it.

Every client (an application instance or a router) runs a :class:`ProbeServer` and
registers its URL on the client-registrations topic (:func:`register_client`); each
executor's companion then GETs that URL periodically (:func:`measure_latency`) and
publishes the round trip as a ``probe`` latency measurement. The endpoint does no work
at all, so the figure is the network round trip plus HTTP overhead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from mulambda.errors import ConfigurationError, RequestTimeout, TransportError
from mulambda.kafka import KafkaConfig, Producer, Record, replay
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import ClientRegistration

__all__ = [
    "PROBE_PATH",
    "ProbeServer",
    "apply_client_record",
    "deregister_client",
    "measure_latency",
    "read_clients",
    "register_client",
]

log = logging.getLogger(__name__)

PROBE_PATH = "/probe"
"""Path the probe server answers on."""

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - recognised, not bound


class ProbeServer(Lifecycle):
    """A tiny aiohttp server answering ``GET /probe`` at once with ``{"ok": true, ...}``.

    ``port`` 0 binds a free port (see :attr:`port` / :attr:`url` after ``start``).
    ``advertise_host`` is the host put in :attr:`url` (what companions should dial); it
    defaults to ``host``, or ``127.0.0.1`` when ``host`` is a wildcard address. It is also
    a runner service: ``wait()`` returns once ``stop()`` was called.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        client_id: str | None = None,
        advertise_host: str | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"probe port must be in 0..65535, not {port}")
        self._host = host
        self._port = port
        self.client_id = client_id
        self._advertise = advertise_host or ("127.0.0.1" if host in _WILDCARD_HOSTS else host)
        # Pre-encoded: the handler must be as cheap as possible, it is what gets timed.
        self._body = web.json_response({"ok": True, "client_id": client_id}).body
        self.requests = 0
        """Probes answered so far."""
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._stopped = asyncio.Event()

    async def _probe(self, _: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(body=self._body, content_type="application/json")

    @property
    def port(self) -> int:
        """The port actually bound."""
        if self._bound_port is None:
            raise ConfigurationError("probe server is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """The URL to register as the client's ``probe_url``."""
        host = f"[{self._advertise}]" if ":" in self._advertise else self._advertise
        return f"http://{host}:{self.port}{PROBE_PATH}"

    async def start(self) -> None:
        """Bind and serve; TransportError when the address cannot be bound."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get(PROBE_PATH, self._probe)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise TransportError(
                f"probe server cannot bind {self._host}:{self._port}: {exc.strerror or exc}",
                retriable=False,
            ) from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
        self._runner = runner
        self._stopped.clear()

    async def stop(self) -> None:
        """Stop serving; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._stopped.set()

    async def wait(self) -> None:
        """Return once the server was stopped (it never ends on its own)."""
        await self._stopped.wait()


async def measure_latency(session: aiohttp.ClientSession, url: str, timeout_s: float) -> float:
    """Time one ``GET url`` round trip (request sent to body read), in milliseconds.

    Raises :class:`RequestTimeout` when no complete answer arrives within ``timeout_s``,
    and :class:`TransportError` when the connection fails or the answer is not a 2xx.
    The session's connection pool is reused, so after the first probe the figure
    excludes the TCP handshake.
    """
    if timeout_s <= 0:
        raise ConfigurationError(f"probe timeout must be positive, not {timeout_s!r}")
    started = time.perf_counter()
    try:
        # asyncio.timeout rather than ClientTimeout alone: it also bounds a server that
        # accepts the connection and then never sends a byte.
        async with (
            asyncio.timeout(timeout_s),
            session.get(url, allow_redirects=False) as response,
        ):
            await response.read()
            status = response.status
    except TimeoutError:
        raise RequestTimeout(f"probe {url}: no answer within {timeout_s:g}s") from None
    except aiohttp.InvalidURL as exc:
        raise TransportError(f"probe {url}: invalid URL", retriable=False) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(f"probe {url}: {type(exc).__name__}: {exc}") from exc
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    if not 200 <= status < 300:
        raise TransportError(f"probe {url}: answered HTTP {status}")
    return elapsed_ms


# --- client registrations on Kafka ---------------------------------------------------


async def register_client(
    producer: Producer, catalog: Catalog, registration: ClientRegistration
) -> None:
    """Publish ``registration`` (key: client id) and wait for the broker's ack."""
    await producer.send_and_wait(
        catalog.name(Topic.CLIENT_REGISTRATIONS), registration, key=registration.client_id
    )


async def deregister_client(producer: Producer, catalog: Catalog, client_id: str) -> None:
    """Publish a tombstone for ``client_id`` and wait for the ack; companions stop probing it."""
    if not client_id:
        raise ConfigurationError("client id must not be empty")
    await producer.send_and_wait(catalog.name(Topic.CLIENT_REGISTRATIONS), None, key=client_id)


def apply_client_record(clients: dict[str, ClientRegistration], record: Record[Any]) -> None:
    """Fold one client-registrations record into ``clients`` (latest wins; tombstone removes).

    A registration's own ``client_id`` is authoritative; a tombstone can only name the key.
    """
    value = record.value
    if isinstance(value, ClientRegistration):
        if record.key_str is not None and record.key_str != value.client_id:
            # A stray record under another key must not shadow nor delete that client.
            log.warning(
                "client registration for %s under key %s; using the body's id",
                value.client_id,
                record.key_str,
            )
        clients[value.client_id] = value
    elif value is None and record.key_str is not None:
        clients.pop(record.key_str, None)


async def read_clients(config: KafkaConfig, catalog: Catalog) -> dict[str, ClientRegistration]:
    """Every live client on the compacted client-registrations topic (tombstones omitted)."""
    clients: dict[str, ClientRegistration] = {}
    topic = catalog.name(Topic.CLIENT_REGISTRATIONS)
    await replay(
        config,
        {topic: ClientRegistration},
        lambda record: apply_client_record(clients, record),
        on_invalid=lambda raw, exc: log.warning(
            "skipping undecodable %s@%d: %s", topic, raw.offset, exc.reason
        ),
    )
    return clients
