"""A pause after a failed metadata refresh, which aiokafka's clients do not take.

aiokafka (0.12) refreshes cluster metadata in a background task that other parts of the
client wake whenever they lack a leader or a coordinator. When no broker answers, the
refresh fails at once (connection refused) and is woken again at once: a busy loop. Every
client of every worker then retries about 500 times a second and logs two errors each
time (seen here: 67,000 log lines per worker during a one-minute outage, 16 workers), and
on a 2-core machine that took the CPU the broker's own restart needed (restarts of 23 to
69 s instead of 2). The Java client and kafka-python pause ``retry.backoff.ms`` after a
failed refresh (kafka-python #733); :func:`pause_failed_metadata_refreshes` gives an
aiokafka client the same pause, before it starts.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final

DEFAULT_PAUSE_S: Final = 0.2
"""Pause after a failed refresh: a broker that comes back is seen within this."""

_MARK: Final = "_mulambda_paused_refreshes"


def inner_client(client: Any) -> Any | None:
    """The AIOKafkaClient inside a producer (``client``), consumer or admin (``_client``)."""
    for name in ("client", "_client"):
        inner = getattr(client, name, None)
        if inner is not None and hasattr(inner, "_metadata_update"):
            return inner
    return None


def pause_failed_metadata_refreshes(client: Any, pause_s: float = DEFAULT_PAUSE_S) -> bool:
    """Make ``client`` (an aiokafka producer, consumer or admin) wait ``pause_s`` after a
    metadata refresh that reached no broker; False when it has no such refresh to wrap."""
    inner = inner_client(client)
    if inner is None:
        return False
    if getattr(inner, _MARK, False):
        return True
    update: Callable[..., Awaitable[bool]] = inner._metadata_update

    @functools.wraps(update)
    async def paused(*args: Any, **kwargs: Any) -> bool:
        updated = await update(*args, **kwargs)
        if not updated:
            await asyncio.sleep(pause_s)
        return updated

    inner._metadata_update = paused
    setattr(inner, _MARK, True)
    return True
