"""The requester's correlation table: requests awaiting replies, by correlation id.

:class:`CorrelationTable` holds one future per request in flight. It refuses a second
request with an id that is still in flight, resolves a request's future with its reply,
fails it with an undecodable reply or when the requester closes, and forgets it when the
caller stops waiting. It also tells replies that match nothing apart: a reply to one of
our requests that already timed out is *late*, anything else is *foreign* (another
requester's, on a shared partition). Timed-out ids are remembered for that, at most
:data:`LATE_MEMORY` of them, oldest forgotten first.

No I/O and no waiting happens here: futures are created on the running loop and
completed synchronously; the requester's reader and callers do the awaiting.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from mulambda.errors import ConfigurationError, MulambdaError

Rep = TypeVar("Rep")

LATE_MEMORY = 100_000
"""Timed-out correlation ids remembered to tell late replies from foreign ones."""


@dataclass(slots=True)
class RequesterStats:
    """Counters a requester exposes (e.g. on /metrics).

    The correlation table counts all but ``sent``, which the requester's sender counts.
    """

    sent: int = 0
    """Requests handed to the producer."""
    replied: int = 0
    """Replies delivered to a waiting caller."""
    timeouts: int = 0
    """Requests that raised RequestTimeout."""
    foreign: int = 0
    """Replies on our partition that answer another instance's requests (dropped)."""
    late: int = 0
    """Replies to our requests that arrived after their timeout (dropped)."""
    invalid: int = 0
    """Reply records that could not be decoded (dropped, logged)."""


class CorrelationTable(Generic[Rep]):
    """Requests in flight by correlation id, and what became of the replies to them.

    ``stats`` receives the counts (a fresh :class:`RequesterStats` when None);
    ``late_memory`` bounds the timed-out ids kept to recognise late replies.
    """

    def __init__(
        self, *, stats: RequesterStats | None = None, late_memory: int = LATE_MEMORY
    ) -> None:
        if late_memory < 0:
            raise ConfigurationError(f"late memory must be >= 0, got {late_memory}")
        self.stats = stats if stats is not None else RequesterStats()
        """The counters this table updates."""
        self._late_memory = late_memory
        self._pending: dict[str, asyncio.Future[Rep]] = {}
        # Insertion-ordered, so the oldest timed-out id is the one forgotten.
        self._timed_out: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        """Requests awaiting their reply now."""
        return len(self._pending)

    def __contains__(self, correlation_id: object) -> bool:
        """Whether a request with ``correlation_id`` awaits its reply."""
        return correlation_id in self._pending

    def register(self, correlation_id: str) -> asyncio.Future[Rep]:
        """The future that the reply to ``correlation_id`` will complete.

        Raises MulambdaError when a request with that id is already in flight: its
        reply could not be told from the new one's.
        """
        if correlation_id in self._pending:
            raise MulambdaError(f"correlation id {correlation_id} is already in flight")
        future: asyncio.Future[Rep] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        return future

    def resolve(self, correlation_id: str, reply: Rep) -> bool:
        """Hand ``reply`` to the request ``correlation_id``; False (and counted as
        late or foreign) when no request awaits it."""
        future = self._pending.pop(correlation_id, None)
        if future is None:
            self.count_unmatched(correlation_id)
            return False
        if not future.done():
            future.set_result(reply)
            self.stats.replied += 1
        return True

    def reject(self, correlation_id: str | None, error: BaseException) -> None:
        """Count an undecodable reply; the request it names, if in flight, fails
        with ``error`` (rather than waiting out its timeout for a reply that came)."""
        self.stats.invalid += 1
        future = self._pending.pop(correlation_id, None) if correlation_id else None
        if future is not None and not future.done():
            future.set_exception(error)

    def timed_out(self, correlation_id: str) -> None:
        """Count a request that timed out and remember its id: a reply is late now."""
        self.stats.timeouts += 1
        self._timed_out[correlation_id] = None
        if len(self._timed_out) > self._late_memory:
            self._timed_out.popitem(last=False)

    def release(self, correlation_id: str, future: asyncio.Future[Rep]) -> None:
        """The caller stopped waiting on ``future`` (answered, timed out, cancelled).

        Removes the entry if it still is this future and cancels the future if it is
        not done; a done one's exception (set by :meth:`fail_all` or :meth:`reject`
        while the caller was elsewhere) is marked retrieved.
        """
        if self._pending.get(correlation_id) is future:
            del self._pending[correlation_id]
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()

    def count_unmatched(self, correlation_id: str) -> None:
        """Count a reply no request awaits: late if its id timed out, else foreign."""
        if correlation_id in self._timed_out:
            del self._timed_out[correlation_id]
            self.stats.late += 1
        else:
            self.stats.foreign += 1

    def fail_all(self, error: Callable[[str], BaseException]) -> None:
        """Fail every request in flight with ``error(correlation_id)`` and forget them."""
        pending, self._pending = self._pending, {}
        for correlation_id, future in pending.items():
            if not future.done():
                future.set_exception(error(correlation_id))


__all__ = ["LATE_MEMORY", "CorrelationTable", "RequesterStats"]
