"""Whether a worker's Kafka clients get through: what ``/readyz`` is made of.

:class:`LinkHealth` is pure: the producer marks it failed when a send does not get
through and succeeded at the next delivery. :func:`consumer_stalled` reads aiokafka's
public ``last_poll_timestamp``: a consumer whose assigned partitions had no fetch
response for a while is cut off from the broker, even though ``getmany`` keeps
returning (empty) without an error while aiokafka reconnects.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

from mulambda.kafka.config import KafkaConsumer

_denied: weakref.WeakKeyDictionary[KafkaConsumer, str] = weakref.WeakKeyDictionary()
"""Consumers whose last fetch the cluster refused (an ACL, a credential), with why."""


def mark_denied(consumer: KafkaConsumer, reason: str | None) -> None:
    """Record that ``consumer``'s fetches are refused for ``reason`` (None: they work)."""
    if reason is None:
        if _denied:  # almost always empty: the hot fetch loop pays nothing
            _denied.pop(consumer, None)
    else:
        _denied[consumer] = reason


DEFAULT_STALL_S = 5.0
"""A consumer without a fetch response for this long counts as cut off."""


class LinkHealth:
    """Failing since the first failure after the last success; pure, clock injectable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failing_since: float | None = None
        self.last_error: str | None = None
        """The most recent failure, for logs and ``/readyz`` bodies."""

    def failed(self, reason: str) -> None:
        """Something did not get through."""
        if self._failing_since is None:
            self._failing_since = self._clock()
        self.last_error = reason

    def succeeded(self) -> None:
        """Something got through: the link works again."""
        self._failing_since = None

    @property
    def ok(self) -> bool:
        """Whether nothing has failed since the last success."""
        return self._failing_since is None

    def failing_for(self) -> float:
        """Seconds since the link started failing; 0 while it works."""
        return 0.0 if self._failing_since is None else self._clock() - self._failing_since


def consumer_stalled(
    consumer: KafkaConsumer, *, stall_s: float = DEFAULT_STALL_S, now_ms: float | None = None
) -> bool:
    """Whether an assigned partition of ``consumer`` saw no fetch response in ``stall_s``.

    A partition never polled yet (just assigned) does not count as stalled.
    """
    now = time.time() * 1000 if now_ms is None else now_ms
    for tp in consumer.assignment():
        last = consumer.last_poll_timestamp(tp)
        if last and now - last > stall_s * 1000:
            return True
    return False


def consumer_problem(
    consumer: KafkaConsumer | None,
    what: str,
    *,
    needs_assignment: bool = False,
    stall_s: float = DEFAULT_STALL_S,
) -> str | None:
    """Why ``consumer`` cannot consume now (None when it can): not started, refused by
    the cluster, no partition where it needs one, or cut off from the broker."""
    if consumer is None:
        return f"{what} not started"
    denied = _denied.get(consumer) if _denied else None
    if denied is not None:
        return f"{what}: {denied}"
    if needs_assignment and not consumer.assignment():
        return f"{what} has no partition assigned"
    if consumer_stalled(consumer, stall_s=stall_s):
        return f"{what} had no fetch response for {stall_s:g}s"
    return None


def producer_problem(health: LinkHealth, what: str = "producer") -> str | None:
    """Why the producer whose health this is cannot produce now (None when it can)."""
    if health.ok:
        return None
    return f"{what} failing for {health.failing_for():.1f}s: {health.last_error}"
