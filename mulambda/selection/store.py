"""The selector's durable materialised view in Redis or DragonflyDB (``redis.asyncio``).

The selector applies every registration, status and latency record to its in-memory
:class:`~mulambda.selection.view.ExecutorView` and, in batches, to a :class:`ViewStore` together
with the topic offsets it has consumed. A restarting selector calls :meth:`ViewStore.load`
to rebuild its view in one pass and resumes consuming from the stored offsets instead of
replaying the status topics from their beginning.

Portability rules (Redis 7 and DragonflyDB alike)
    Only plain commands both support: GET/SET (NX, PX), MGET, PEXPIRE, PTTL, DEL, UNLINK,
    SADD/SREM/SSCAN, HSET/HDEL/HGETALL, SCAN, PING, EVAL. DB 0 only (Dragonfly clusters
    support no other). Lua only for reading (``load``), with every key it touches
    declared in KEYS, as Dragonfly requires. One key per TTL: hash-field TTLs are never
    used, which is why liveness has its own key per executor. Keys carry no hash tag; on
    a Redis Cluster put one in the prefix (e.g. ``mulambda:{prod}:``).

Keys (``{p}`` is the deployment's ``key_prefix``; ids are executor or client ids)
    ``{p}execs``
        SET of registered executor ids; :meth:`~ViewStore.load` walks it with SSCAN.
    ``{p}exec:{executor_id}``
        STRING, the ExecutorRegistration JSON. No TTL; deleted by a tombstone.
    ``{p}alive:{executor_id}``
        STRING, the latest ExecutorStatus JSON, or empty while the executor has
        registered but sent no status yet. TTL = ``missed_heartbeats`` x the heartbeat
        interval the message announced, set by each status (and by a registration, which
        counts as a heartbeat); the key's expiry is the executor going stale, so PTTL is
        the time it has left. Deleted by a tombstone.
    ``{p}lat:{executor_id}``
        HASH of latencies involving this executor: ``p:{client_id}`` → latest probe
        latency (ms), ``o:{client_id}`` → EWMA of observed end-to-end latency (ms),
        ``service_ms``, ``service_samples`` and ``service_fit`` → the learned base service
        time, the fit's statistics (five comma-separated numbers) and the
        observations that taught it. No TTL; deleted by a tombstone, and a client's
        fields are deleted by the client's tombstone.
    ``{p}clients``
        SET of registered client ids.
    ``{p}client:{client_id}``
        STRING, the ClientRegistration JSON. No TTL; deleted by a tombstone.
    ``{p}meta:offsets``
        HASH ``{topic}:{partition}`` → the next offset to consume (last materialised + 1).

Writers
    Every value is the latest one written (last writer wins). Write only what the view
    accepted (the view drops statuses and latencies of unknown executors), so no
    ``lat:`` hash outlives its executor.
    Several selectors may share a prefix: they all write the same facts; offsets are
    per writer's progress and a regressed offset only causes records to be re-applied.

What a batch may contain and what a load returns are the plain data of
``mulambda.selection.store_data`` (importable from here too).

Errors from redis are translated to :class:`~mulambda.errors.StoreUnavailable`:
retriable for connection problems and timeouts, not retriable when the server refuses a
command (e.g. a foreign value of another type under one of our keys).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mulambda.errors import ConfigurationError, DecodeError, MulambdaError, StoreUnavailable
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.runtime.redis_connection import RedisConfig, access_error
from mulambda.selection.store_data import (
    ClientRemoved,
    ExecutorRemoved,
    ExecutorSnapshot,
    ObservedLatency,
    Offsets,
    RegistrationAsOf,
    Snapshot,
    StoreEvent,
)
from mulambda.wire.codec import decode, encode
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
)

log = logging.getLogger(__name__)

_CHUNK = 1000
"""Keys per MGET / UNLINK and per SSCAN/SCAN page."""

_LOAD_CHUNK = 500
"""Executors per call of the load script (three keys each)."""

_LOAD_LUA = """
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = redis.pcall('GET', KEYS[i])
  out[#out + 1] = redis.pcall('GET', KEYS[i + 1])
  out[#out + 1] = redis.pcall('PTTL', KEYS[i + 1])
  out[#out + 1] = redis.pcall('HGETALL', KEYS[i + 2])
end
return out
"""
"""Reads executors in one command per chunk instead of two per executor (PTTL and
HGETALL cannot be batched otherwise; redis-py's per-command cost dominated ``load``).
KEYS: ``exec:``, ``alive:`` and ``lat:`` key of each executor, in that order; every key
it touches is declared, as DragonflyDB requires. Returns, per executor, the registration,
the alive value, the alive key's PTTL and the latency hash as a flat list; ``pcall``
turns a key holding another type into an error entry for that key instead of failing the
whole load."""


# --- the store -----------------------------------------------------------------------


class ViewStore(Lifecycle):
    """Reads and writes the materialised view under ``key_prefix`` (see module doc).

    ``redis`` is a URL (the store owns and closes the client) or a ``redis.asyncio.Redis``
    created with ``decode_responses=False`` (left open on stop). ``timeout_s`` bounds
    every call; connecting fails within about ``connect_timeout_s``.
    """

    def __init__(
        self,
        redis: str | RedisConfig | Redis,
        *,
        key_prefix: str,
        missed_heartbeats: float = 3,
        connect_timeout_s: float = 2.0,
        timeout_s: float = 10.0,
    ) -> None:
        if not key_prefix or any(c.isspace() for c in key_prefix):
            raise ConfigurationError(f"key prefix must be non-empty without spaces: {key_prefix!r}")
        if not missed_heartbeats > 0:
            raise ConfigurationError(f"missed_heartbeats must be > 0, got {missed_heartbeats}")
        self.prefix = key_prefix
        """Prefix of every key this store touches."""
        self.missed_heartbeats = float(missed_heartbeats)
        """Heartbeat intervals an executor's alive key outlives its last heartbeat."""
        self._given = redis if isinstance(redis, Redis) else None
        self._config = RedisConfig(redis) if isinstance(redis, str) else redis
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._client: Redis | None = None
        p = key_prefix
        self._k_execs = f"{p}execs"
        self._k_clients = f"{p}clients"
        self._k_offsets = f"{p}meta:offsets"

    # --- keys ------------------------------------------------------------------------

    def key_exec(self, executor_id: str) -> str:
        """Key of an executor's registration."""
        return f"{self.prefix}exec:{executor_id}"

    def key_alive(self, executor_id: str) -> str:
        """Key of an executor's latest status (with the liveness TTL)."""
        return f"{self.prefix}alive:{executor_id}"

    def key_latency(self, executor_id: str) -> str:
        """Key of an executor's latency hash."""
        return f"{self.prefix}lat:{executor_id}"

    def key_client(self, client_id: str) -> str:
        """Key of a client's registration."""
        return f"{self.prefix}client:{client_id}"

    def ttl_ms(self, heartbeat_interval_s: float) -> int:
        """The alive key's TTL for a heartbeat interval: ``missed_heartbeats`` intervals."""
        return max(1, math.ceil(self.missed_heartbeats * heartbeat_interval_s * 1000))

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and PING; StoreUnavailable quickly when the server is unreachable."""
        if self._client is not None:
            return
        if isinstance(self._config, Redis):
            client = self._config
        else:
            client = self._config.client(
                decode_responses=False,
                socket_connect_timeout=self._connect_timeout_s,
                socket_timeout=self._timeout_s,
                # redis-py's default retries back off for seconds; fail fast instead
                # and let the worker's own retry policy decide.
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
            )
        db = client.connection_pool.connection_kwargs.get("db", 0)
        if int(db or 0) != 0:
            if self._given is None:
                await client.aclose()
            raise ConfigurationError(f"the store uses Redis DB 0 only (DragonflyDB), got {db}")
        try:
            async with self._io("connect"):
                await client.ping()
        except StoreUnavailable:
            if self._given is None:
                await client.aclose()
            raise
        self._client = client

    async def stop(self) -> None:
        """Close the connection (unless the client was given); idempotent."""
        client, self._client = self._client, None
        if client is not None and self._given is None:
            await client.aclose()

    def _require(self) -> Redis:
        if self._client is None:
            raise MulambdaError("store is not started")
        return self._client

    @asynccontextmanager
    async def _io(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout_s + self._connect_timeout_s):
                yield
        except (RedisAuthenticationError, NoPermissionError) as exc:
            raise access_error(exc, f"store {what}") or StoreUnavailable(str(exc)) from exc
        except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
            raise StoreUnavailable(
                f"store {what} failed: Redis unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        except RedisError as exc:
            raise StoreUnavailable(
                f"store {what} refused: {type(exc).__name__}: {exc}", retriable=False
            ) from exc

    async def _execute(self, pipe: Pipeline, what: str) -> list[Any]:
        async with self._io(what):
            # raise_on_error=False: redis-py's own annotation of a failed pipeline command
            # loses the server's message, which is the useful part.
            results: list[Any] = await pipe.execute(raise_on_error=False)
        for i, result in enumerate(results):
            if isinstance(result, RedisError):
                denied = access_error(result, f"store {what} (command {i + 1})")
                if denied is not None:
                    raise denied from result
                raise StoreUnavailable(
                    f"store {what} refused (command {i + 1} of {len(results)}): {result}",
                    retriable=False,
                ) from result
        return results

    # --- writes ----------------------------------------------------------------------

    async def apply_batch(
        self, events: Sequence[StoreEvent], *, offsets: Offsets | None = None
    ) -> None:
        """Apply ``events`` in order and record ``offsets``, in one pipelined round trip.

        Not a transaction: after a failure (StoreUnavailable) some commands may have
        been applied. Every command sets a latest value, so re-applying the same batch
        (as a consumer does after a failure) converges to the same state. A batch
        containing a client tombstone costs one extra SSCAN walk of the executor ids.
        """
        client = self._require()
        if not events and not offsets:
            return
        executor_ids: set[str] | None = None
        if any(isinstance(e, ClientRemoved) for e in events):
            executor_ids = set(await self.executor_ids())
        pipe = client.pipeline(transaction=False)
        for event in events:
            self._queue(pipe, event, executor_ids)
        if offsets:
            pipe.hset(
                self._k_offsets,
                mapping={
                    f"{topic}:{partition}": int(o) for (topic, partition), o in offsets.items()
                },
            )
        await self._execute(pipe, "write")

    def _queue(self, pipe: Pipeline, event: StoreEvent, executor_ids: set[str] | None) -> None:
        if isinstance(event, ExecutorStatus):
            alive = self.key_alive(event.executor_id)
            pipe.set(alive, encode(event), px=self.ttl_ms(event.heartbeat_interval_s))
        elif isinstance(event, LatencyMeasurement):
            tag = "p" if event.source is LatencySource.PROBE else "o"
            pipe.hset(
                self.key_latency(event.executor_id),
                f"{tag}:{event.client_id}",
                repr(float(event.latency_ms)),
            )
        elif isinstance(event, ObservedLatency):
            mapping: dict[str, str] = {f"o:{event.client_id}": repr(float(event.ewma_ms))}
            if event.service_ms is not None:
                mapping["service_ms"] = repr(float(event.service_ms))
            if event.service_samples is not None:
                mapping["service_samples"] = str(int(event.service_samples))
            if event.service_fit is not None:
                mapping["service_fit"] = ",".join(repr(float(v)) for v in event.service_fit)
            pipe.hset(self.key_latency(event.executor_id), mapping=mapping)
        elif isinstance(event, ExecutorRegistration):
            eid = event.executor_id
            ttl = self.ttl_ms(event.heartbeat_interval_s)
            pipe.set(self.key_exec(eid), encode(event))
            pipe.sadd(self._k_execs, eid)
            # A registration is a heartbeat: create the alive key if there is none (with
            # no status yet), and refresh its TTL without dropping a status it holds.
            pipe.set(self.key_alive(eid), b"", nx=True, px=ttl)
            pipe.pexpire(self.key_alive(eid), ttl)
            if executor_ids is not None:
                executor_ids.add(eid)
        elif isinstance(event, RegistrationAsOf):
            eid = event.registration.executor_id
            pipe.set(self.key_exec(eid), encode(event.registration))
            pipe.sadd(self._k_execs, eid)
            left = self.ttl_ms(event.registration.heartbeat_interval_s) - int(event.age_s * 1000)
            if left > 0:
                pipe.set(self.key_alive(eid), b"", nx=True, px=left)
            if executor_ids is not None:
                executor_ids.add(eid)
        elif isinstance(event, ExecutorRemoved):
            eid = event.executor_id
            pipe.unlink(self.key_exec(eid), self.key_alive(eid), self.key_latency(eid))
            pipe.srem(self._k_execs, eid)
            if executor_ids is not None:
                executor_ids.discard(eid)
        elif isinstance(event, ClientRegistration):
            pipe.set(self.key_client(event.client_id), encode(event))
            pipe.sadd(self._k_clients, event.client_id)
        elif isinstance(event, ClientRemoved):
            cid = event.client_id
            pipe.unlink(self.key_client(cid))
            pipe.srem(self._k_clients, cid)
            for eid in executor_ids or ():
                pipe.hdel(self.key_latency(eid), f"p:{cid}", f"o:{cid}")
        else:  # pragma: no cover - the union above is exhaustive for type-checked callers
            raise ConfigurationError(f"cannot store a {type(event).__name__}")

    # --- reads -----------------------------------------------------------------------

    async def executor_ids(self) -> list[str]:
        """Every registered executor id (SSCAN of ``{p}execs``)."""
        return await self._scan_set(self._k_execs)

    async def client_ids(self) -> list[str]:
        """Every registered client id (SSCAN of ``{p}clients``)."""
        return await self._scan_set(self._k_clients)

    async def _scan_set(self, key: str) -> list[str]:
        client = self._require()
        members: set[bytes] = set()
        async with self._io("scan"):
            cursor = 0
            while True:
                cursor, page = await client.sscan(key, cursor, count=_CHUNK)
                members.update(page)
                if cursor == 0:
                    break
        return sorted(m.decode() for m in members)

    async def offsets(self) -> dict[tuple[str, int], int]:
        """The stored offsets: (topic, partition) → next offset to consume."""
        client = self._require()
        async with self._io("read offsets"):
            raw: dict[bytes, bytes] = await client.hgetall(self._k_offsets)  # type: ignore[misc]
        out: dict[tuple[str, int], int] = {}
        for name, value in raw.items():
            topic, _, partition = name.decode().rpartition(":")
            try:
                out[(topic, int(partition))] = int(value)
            except ValueError:
                log.warning("ignoring malformed stored offset %r=%r", name, value)
        return out

    async def load(self) -> Snapshot:
        """Read the whole view back: registrations, statuses with PTTL, latencies, clients,
        offsets. Values that do not decode are skipped and listed in ``invalid``.

        Costs about ``3 + n/500`` round trips for ``n`` executors: ids by SSCAN, then one
        call of a read-only Lua script per 500 executors (see ``_LOAD_LUA``), then MGETs
        of the clients and one HGETALL of the offsets.
        """
        client = self._require()
        executor_ids = await self.executor_ids()
        client_ids = await self.client_ids()
        invalid: dict[str, str] = {}
        executors: dict[str, ExecutorSnapshot] = {}
        for chunk in _chunks(executor_ids, _LOAD_CHUNK):
            keys = [
                key
                for eid in chunk
                for key in (self.key_exec(eid), self.key_alive(eid), self.key_latency(eid))
            ]
            async with self._io("load"):
                flat: list[Any] = await client.eval(_LOAD_LUA, len(keys), *keys)  # type: ignore[misc]
            for i, eid in enumerate(chunk):
                reg, alive, pttl, lat = flat[4 * i : 4 * i + 4]
                snap = self._executor(eid, reg, alive, pttl, lat, invalid)
                if snap is not None:
                    executors[eid] = snap
        clients: dict[str, ClientRegistration] = {}
        for chunk in _chunks(client_ids, _CHUNK):
            async with self._io("load clients"):
                values = await client.mget([self.key_client(c) for c in chunk])
            for cid, value in zip(chunk, values, strict=True):
                key = self.key_client(cid)
                if value is None:
                    invalid[key] = "listed in the clients set but missing"
                    continue
                try:
                    clients[cid] = decode(ClientRegistration, value)
                except DecodeError as exc:
                    invalid[key] = exc.reason
        if invalid:
            log.warning("store load skipped %d undecodable values: %s", len(invalid), invalid)
        return Snapshot(executors, clients, await self.offsets(), invalid)

    def _executor(
        self,
        eid: str,
        reg_raw: bytes | Exception | None,
        alive_raw: bytes | Exception | None,
        pttl: int | Exception,
        lat_raw: list[bytes] | Exception,
        invalid: dict[str, str],
    ) -> ExecutorSnapshot | None:
        if reg_raw is None:
            invalid[self.key_exec(eid)] = "listed in the executors set but missing"
            return None
        try:
            if isinstance(reg_raw, Exception):
                raise DecodeError(f"unreadable: {reg_raw}")
            registration = decode(ExecutorRegistration, reg_raw)
        except DecodeError as exc:
            invalid[self.key_exec(eid)] = exc.reason
            return None
        if isinstance(alive_raw, Exception) or isinstance(pttl, Exception):
            error = alive_raw if isinstance(alive_raw, Exception) else pttl
            invalid[self.key_alive(eid)] = f"unreadable: {error}"
            alive_raw, pttl = None, -2
        if isinstance(lat_raw, Exception):
            invalid[self.key_latency(eid)] = f"unreadable: {lat_raw}"
            lat_raw = []
        status: ExecutorStatus | None = None
        # PTTL -2: gone (stale); -1: no TTL, which only a foreign writer could cause.
        remaining = pttl / 1000 if pttl >= 0 and alive_raw is not None else None
        if remaining is not None and alive_raw:
            try:
                status = decode(ExecutorStatus, alive_raw)
            except DecodeError as exc:
                invalid[self.key_alive(eid)] = exc.reason
        interval = (status or registration).heartbeat_interval_s
        ttl_s = self.missed_heartbeats * interval
        age = None if remaining is None else max(0.0, ttl_s - remaining)
        probes: dict[str, float] = {}
        observed: dict[str, float] = {}
        service_ms: float | None = None
        service_samples = 0
        service_fit: tuple[float, ...] | None = None
        for name_b, value_b in zip(lat_raw[::2], lat_raw[1::2], strict=True):
            name = name_b.decode(errors="replace")
            if name == "service_fit":
                # Five finite numbers (a covariance may be negative); else skipped.
                try:
                    fit = tuple(float(v) for v in value_b.split(b","))
                except ValueError:
                    fit = ()
                if len(fit) == 5 and all(math.isfinite(v) for v in fit):
                    service_fit = fit
                else:
                    invalid[f"{self.key_latency(eid)}#{name}"] = f"not a fit: {value_b!r}"
                continue
            try:
                value = float(value_b)
                if not math.isfinite(value) or value < 0:
                    raise ValueError(value)
                if name.startswith("p:"):
                    probes[name[2:]] = value
                elif name.startswith("o:"):
                    observed[name[2:]] = value
                elif name == "service_ms":
                    service_ms = value
                elif name == "service_samples":
                    service_samples = int(value)
            except ValueError:
                invalid[f"{self.key_latency(eid)}#{name}"] = f"not a latency: {value_b!r}"
        return ExecutorSnapshot(
            registration=registration,
            status=status,
            ttl_remaining_s=remaining,
            age_s=age,
            ttl_s=ttl_s,
            probes=probes,
            observed=observed,
            service_ms=service_ms,
            service_samples=service_samples,
            service_fit=service_fit,
        )

    # --- maintenance -----------------------------------------------------------------

    async def clear(self) -> int:
        """Delete every key under the prefix (SCAN + UNLINK); returns how many."""
        client = self._require()
        keys = [k async for k in self._scan_keys(f"{_glob_escape(self.prefix)}*")]
        return await self._unlink(client, keys)

    async def _scan_keys(self, pattern: str) -> AsyncIterator[str]:
        client = self._require()
        cursor = 0
        while True:
            async with self._io("scan"):
                cursor, page = await client.scan(cursor, match=pattern, count=_CHUNK)
            for key in page:
                yield key.decode()
            if cursor == 0:
                return

    async def _unlink(self, client: Redis, keys: Sequence[str]) -> int:
        deleted = 0
        for chunk in _chunks(list(dict.fromkeys(keys)), _CHUNK):
            async with self._io("delete"):
                deleted += int(await client.unlink(*chunk))
        return deleted


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a prefix matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# The data types are part of the store's interface: importable from here too.
__all__ = [
    "ClientRemoved",
    "ExecutorRemoved",
    "ExecutorSnapshot",
    "ObservedLatency",
    "Offsets",
    "RegistrationAsOf",
    "Snapshot",
    "StoreEvent",
    "ViewStore",
]
