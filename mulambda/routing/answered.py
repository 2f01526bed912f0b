"""Which requests already got their result: the routers' shared memory against redelivery.

Kafka redelivers a request whose offset was not committed when its router crashed or
lost the partition, although its result may already be on the reply topic. Before
routing, a router asks :class:`AnsweredRequests` whether the request's ``message_id``
was answered; after the result's delivery is acknowledged it marks it. The marks live in
Redis/DragonflyDB (one ``SET`` key per request, single-key commands only), shared by
every router, and expire ``ttl_margin_s`` after the request's deadline.

What remains: a router that dies between the result's acknowledgement and the mark
(one round trip to Redis) leaves that request to be answered twice; results carry the
request's id as ``request_id``, so readers drop the second. While Redis is unreachable
the filter answers "not seen" and requests are routed anyway: answering twice is better
than not answering.

Lookups and marks made while an earlier batch is on its way to Redis wait for it and go
together, as one pipeline of single-key commands: idle, a call goes at once (one loop
turn later); under load, a round trip carries every request that arrived meanwhile,
instead of one round trip (a socket write and read) each.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from mulambda.runtime.lifecycle import Lifecycle
from mulambda.runtime.redis_connection import RedisConfig
from mulambda.wire.events import utcnow

log = logging.getLogger(__name__)


def mark_ttl_ms(deadline: datetime, now: datetime, margin_s: float) -> int:
    """How long a mark must live: until ``margin_s`` after the deadline, at least 1 s."""
    remaining = (deadline - now).total_seconds()
    return max(1000, int((max(0.0, remaining) + margin_s) * 1000))


class AnsweredRequests(Lifecycle):
    """Marks of answered requests in Redis, under ``{key_prefix}answered:{message_id}``."""

    def __init__(
        self,
        redis: str | RedisConfig,
        *,
        key_prefix: str = "mulambda:",
        ttl_margin_s: float = 300.0,
        timeout_s: float = 0.5,
    ) -> None:
        self._config = RedisConfig(redis) if isinstance(redis, str) else redis
        self._prefix = f"{key_prefix}answered:"
        self._margin_s = ttl_margin_s
        self._timeout_s = timeout_s
        self._client: Redis | None = None
        self._batch: list[tuple[str, tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.failures = 0
        """Redis calls that failed (the filter then let the request through)."""
        self.round_trips = 0
        """Pipelines sent to Redis (each carries one or more calls)."""

    async def start(self) -> None:
        """Create the client; Redis is reached lazily, so a Redis outage never blocks start."""
        if self._client is None:
            self._client = self._config.client(
                socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
            )

    async def stop(self) -> None:
        """Close the client; safe to call twice."""
        client, self._client = self._client, None
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        for *_, future in self._batch:
            if not future.done():
                future.set_exception(RedisError("answered-requests filter stopped"))
        self._batch = []
        if client is not None:
            await client.aclose()

    def key(self, message_id: str) -> str:
        """The Redis key of ``message_id``'s mark."""
        return self._prefix + message_id

    async def seen(self, message_id: str) -> bool:
        """Whether the request was answered already (False when Redis cannot tell)."""
        if self._client is None:
            return False
        try:
            return bool(await self._call("exists", self.key(message_id)))
        except (RedisError, OSError) as exc:
            self.failures += 1
            log.warning("answered-requests lookup failed, routing anyway: %s", exc)
            return False

    async def mark(self, message_id: str, deadline: datetime) -> None:
        """Remember that the request's result was delivered; failures are only logged."""
        if self._client is None:
            return
        ttl_ms = mark_ttl_ms(deadline, utcnow(), self._margin_s)
        try:
            await self._call("set", self.key(message_id), b"1", px=ttl_ms)
        except (RedisError, OSError) as exc:
            self.failures += 1
            log.warning("answered-requests mark failed: %s", exc)

    async def _call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """Queue one command for the next pipeline and await its reply (module docstring)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((command, args, kwargs, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="answered-requests")
        return await future

    async def _flush(self) -> None:
        try:
            while self._batch and self._client is not None:
                batch, self._batch = self._batch, []
                pipe = self._client.pipeline(transaction=False)
                for command, args, kwargs, _ in batch:
                    getattr(pipe, command)(*args, **kwargs)
                self.round_trips += 1
                try:
                    replies = await pipe.execute(raise_on_error=False)
                except (RedisError, OSError) as exc:
                    replies = [exc] * len(batch)
                for (*_, future), reply in zip(batch, replies, strict=True):
                    if future.done():  # its caller gave up
                        continue
                    if isinstance(reply, BaseException):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._flusher = None
