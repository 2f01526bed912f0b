"""Executor endpoints this router could not reach lately, and which failures say so.

A process serving several models (one TF Serving server, or one emulator) is one
*endpoint* (``scheme://host:port``) behind several executors. When a call to one of them
is refused or its connection drops before any response (:func:`is_unreachable`), every
executor behind that endpoint is most likely gone too. :class:`SuspectEndpoints`
remembers such endpoints for ``expiry_s``, so the route tries candidates elsewhere first
(:meth:`SuspectEndpoints.pick`): a dead process costs one failed attempt, not a whole
ranked list. A successful call to the endpoint clears the suspicion at once.

Suspicion only reorders, it never excludes: when every candidate left is behind a
suspect endpoint they are still tried, in rank order.

Pure: no I/O and no clock of its own; every method that needs the time takes ``now``
(seconds on any clock, the same one for every call).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import urlsplit

from mulambda.errors import ConfigurationError, MulambdaError
from mulambda.protocols.tfserving import ExecutorUnavailable
from mulambda.wire.events import Candidate

DEFAULT_PORTS = {"http": 80, "https": 443}
"""The port an endpoint URL without one uses."""

MAX_SUSPECTS = 10_000
"""Suspect endpoints remembered at most; the oldest suspicion is forgotten first."""


def endpoint_of(url: str) -> str:
    """``scheme://host:port`` of an executor's base URL, with the default port filled in
    and the host lower-cased, so two registrations of one process compare equal.

    A URL that does not parse is its own endpoint (it only ever equals itself).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    if not host or scheme not in DEFAULT_PORTS:
        return url
    if ":" in host:  # IPv6: brackets again, as in the URL
        host = f"[{host}]"
    return f"{scheme}://{host}:{port if port is not None else DEFAULT_PORTS[scheme]}"


def is_unreachable(error: MulambdaError) -> bool:
    """Whether ``error`` says nothing answers at the endpoint: connection refused, reset
    or closed with no HTTP response at all (an ExecutorUnavailable without a status).

    A 503 is an answer (that executor is busy; its neighbours may not be), and a timeout
    may just be a slow model, so neither makes the endpoint suspect.
    """
    return isinstance(error, ExecutorUnavailable) and error.status is None


class SuspectEndpoints:
    """Endpoints that refused or dropped a connection, each until ``expiry_s`` after the
    last such failure or until a call to it succeeds.

    At most ``max_entries`` are remembered (the oldest suspicion is dropped first), so a
    stream of made-up endpoints cannot grow it without bound.
    """

    def __init__(self, *, expiry_s: float, max_entries: int = MAX_SUSPECTS) -> None:
        if expiry_s < 0:
            raise ConfigurationError(f"suspicion expiry must be >= 0, got {expiry_s}")
        if max_entries < 1:
            raise ConfigurationError(f"max suspect endpoints must be >= 1, got {max_entries}")
        self.expiry_s = expiry_s
        """Seconds a failure keeps an endpoint suspect."""
        self._max_entries = max_entries
        # Endpoint → when its suspicion expires, in order of the last failure: every entry
        # lives equally long, so the front is always the first to expire.
        self._until: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        """Endpoints remembered now (expired ones included until the next mark)."""
        return len(self._until)

    def mark(self, endpoint: str, now: float) -> None:
        """``endpoint`` refused or dropped a connection at ``now``: suspect it anew."""
        self._prune(now)
        if self.expiry_s <= 0:
            return
        self._until.pop(endpoint, None)
        self._until[endpoint] = now + self.expiry_s
        while len(self._until) > self._max_entries:
            self._until.popitem(last=False)

    def clear(self, endpoint: str) -> None:
        """A call to ``endpoint`` succeeded: it is reachable again."""
        self._until.pop(endpoint, None)

    def is_suspect(self, endpoint: str, now: float) -> bool:
        """Whether ``endpoint`` is suspect at ``now``."""
        until = self._until.get(endpoint)
        if until is None:
            return False
        if until <= now:
            del self._until[endpoint]
            return False
        return True

    def suspects(self, now: float) -> list[str]:
        """The endpoints suspect at ``now``, longest suspected first."""
        self._prune(now)
        return list(self._until)

    def pick(self, candidates: Sequence[Candidate], now: float) -> int | None:
        """Index of the candidate to call next: the best-ranked one behind an endpoint
        that is not suspect, else the best-ranked one; None when there are none."""
        for index, candidate in enumerate(candidates):
            if not self.is_suspect(endpoint_of(candidate.endpoint), now):
                return index
        return 0 if candidates else None

    def _prune(self, now: float) -> None:
        while self._until:
            endpoint, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[endpoint]


__all__ = ["DEFAULT_PORTS", "MAX_SUSPECTS", "SuspectEndpoints", "endpoint_of", "is_unreachable"]
