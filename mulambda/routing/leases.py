"""Selection leases: one selection round trip ranks the next requests of a kind too.

Asking the selector costs two Kafka records per request (the selection request and its
reply), each produced, acknowledged and fetched. With leases on, a router asks for the
rankings of the next ``n`` requests like the one at hand (same :func:`ranking_key`:
client, traits, weights, policy, SLO) and spends them one per request for at most
``max_age_s``. The selector ranks each slot with the load of the slots before it
counted (``mulambda.selection.answers``, Leases), so a leased request goes where it
would have gone had it asked, as of when the lease was granted.

How many slots
    The requests of the key seen over the last lease age, the one at hand included (so
    a kind of request that comes once a second asks for one slot: no lease), at most
    ``max_slots``, spaced by the age over that count (the requests' mean interval, also
    when more came than a lease may rank).

When a lease ends
    At ``max_age_s`` after its grant; when its slots are spent; when the router sees
    one of its executors fail a call (:meth:`LeaseBook.end`); when the executors'
    state stream says one of its executors registered again, deregistered or is not
    available, or a new executor registered with its traits (it may rank first now:
    :meth:`LeaseBook.executor_registered`, :meth:`LeaseBook.executor_status`); and all of
    them on :meth:`LeaseBook.end_all`. The slots it did not spend are *released*: the
    selector counted each as load on its first candidate, and the router says they will
    not come (:meth:`LeaseBook.take_released`).

Pure: no I/O and no clock of its own; methods take ``now`` (seconds on one clock).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from mulambda.errors import ConfigurationError
from mulambda.routing.rankings import RankingKey, ranking_key
from mulambda.wire.events import (
    MAX_LEASE_SLOTS,
    Candidate,
    InferenceRequest,
    LeaseAsk,
    SelectionReply,
    SelectionStatus,
)


@dataclass(slots=True)
class _Lease:
    candidates: tuple[Candidate, ...]
    slots: deque[tuple[int, ...]]
    expires_at: float

    def names(self, executor_id: str) -> bool:
        return any(c.executor_id == executor_id for c in self.candidates)


@dataclass(slots=True)
class _Demand:
    """Requests of one key in the current window and the one before."""

    window_start: float
    count: int = 0
    previous: int = 0

    def add(self, now: float, window_s: float) -> None:
        self._roll(now, window_s)
        self.count += 1

    def per_window(self, now: float, window_s: float) -> int:
        self._roll(now, window_s)
        return max(self.count, self.previous)

    def _roll(self, now: float, window_s: float) -> None:
        elapsed = now - self.window_start
        if elapsed < window_s:
            return
        self.previous = self.count if elapsed < 2 * window_s else 0
        self.count = 0
        self.window_start = now


@dataclass(slots=True)
class LeaseBook:
    """The leases one router holds, per :func:`ranking_key` (module doc)."""

    max_slots: int
    """Slots asked for at most; 1 turns leases off."""
    max_age_s: float
    """How long a lease may be spent after its grant; 0 turns leases off."""
    max_entries: int = 10_000
    """Kinds of request remembered at most (least recently used forgotten first)."""
    _leases: OrderedDict[RankingKey, _Lease] = field(default_factory=OrderedDict)
    _demand: OrderedDict[RankingKey, _Demand] = field(default_factory=OrderedDict)
    _released: Counter[str] = field(default_factory=Counter)
    _unavailable: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if not 1 <= self.max_slots <= MAX_LEASE_SLOTS:
            raise ConfigurationError(
                f"lease slots must be 1..{MAX_LEASE_SLOTS}, got {self.max_slots}"
            )
        if self.max_age_s < 0 or not math.isfinite(self.max_age_s):
            raise ConfigurationError(f"lease age must be finite and >= 0, got {self.max_age_s}")
        if self.max_entries < 1:
            raise ConfigurationError(f"lease entries must be >= 1, got {self.max_entries}")

    @property
    def enabled(self) -> bool:
        """Whether leases are asked for at all."""
        return self.max_slots > 1 and self.max_age_s > 0

    def __len__(self) -> int:
        """Leases held now (expired ones included until looked at)."""
        return len(self._leases)

    def take(self, request: InferenceRequest, now: float) -> tuple[Candidate, ...] | None:
        """The next slot's ranking for ``request``, or None: ask the selector (with
        :meth:`ask`). Counts ``request`` towards its kind's demand either way."""
        key = ranking_key(request)
        self._count_demand(key, now)
        lease = self._leases.get(key)
        if lease is None:
            return None
        if now >= lease.expires_at or not lease.slots:
            self._drop(key)
            return None
        slot = lease.slots.popleft()
        if not lease.slots:
            del self._leases[key]
        else:
            self._leases.move_to_end(key)
        return tuple(lease.candidates[i] for i in slot)

    def ask(self, request: InferenceRequest, now: float) -> LeaseAsk | None:
        """What lease to ask for with ``request``'s selection; None: this request only."""
        if not self.enabled:
            return None
        key = ranking_key(request)
        demand = self._demand.get(key)
        # ``take`` counted the request at hand already.
        seen = demand.per_window(now, self.max_age_s) if demand is not None else 1
        slots = min(self.max_slots, seen)
        if slots <= 1:
            return None
        # Spaced as the requests came, also when more came than a lease may rank.
        return LeaseAsk(slots=slots, spacing_ms=self.max_age_s * 1000 / seen)

    def grant(self, request: InferenceRequest, reply: SelectionReply, now: float) -> None:
        """The selector answered ``request``'s selection with ``reply``: keep the slots
        after the first (which is ``request``'s own) until ``max_age_s`` from ``now``."""
        if reply.status is not SelectionStatus.OK or not reply.lease:
            return
        key = ranking_key(request)
        self._drop(key)  # a lease asked for concurrently: the newer one replaces it
        count = len(reply.candidates)
        rest = deque(
            tuple(slot) for slot in reply.lease[1:] if slot and all(i < count for i in slot)
        )
        if not rest:
            return
        self._leases[key] = _Lease(tuple(reply.candidates), rest, now + self.max_age_s)
        while len(self._leases) > self.max_entries:
            self._drop(next(iter(self._leases)))

    def end(self, executor_id: str) -> int:
        """End every lease naming ``executor_id`` (it failed or changed); how many."""
        ended = [key for key, lease in self._leases.items() if lease.names(executor_id)]
        for key in ended:
            self._drop(key)
        return len(ended)

    def executor_registered(self, executor_id: str, traits: tuple[str, str, str] | None) -> int:
        """``executor_id`` registered with ``traits`` (None: it deregistered): end the
        leases naming it and those of its traits; how many."""
        ended = [
            key
            for key, lease in self._leases.items()
            if key[1] == traits or lease.names(executor_id)
        ]
        for key in ended:
            self._drop(key)
        self._unavailable.pop(executor_id, None)
        return len(ended)

    def executor_status(self, executor_id: str, available: bool) -> int:
        """``executor_id`` says it is (not) available: end the leases naming it when it is
        not, and every lease when it is again (it may rank first; a status does not say
        for which traits); how many. A heartbeat that changes nothing ends nothing."""
        if not available:
            if executor_id not in self._unavailable:
                self._unavailable[executor_id] = None
                while len(self._unavailable) > self.max_entries:
                    self._unavailable.popitem(last=False)
            return self.end(executor_id)
        if executor_id not in self._unavailable:
            return 0
        del self._unavailable[executor_id]
        ended = len(self._leases)
        self.end_all()
        return ended

    def end_all(self) -> None:
        """End every lease (the executors changed, or the router stops)."""
        for key in list(self._leases):
            self._drop(key)

    def expire(self, now: float) -> None:
        """End the leases past their age (so their unused slots are released)."""
        for key in [k for k, lease in self._leases.items() if now >= lease.expires_at]:
            self._drop(key)

    def take_released(self) -> Iterator[tuple[str, int]]:
        """The unused slots of ended leases per first candidate, each reported once."""
        released, self._released = self._released, Counter()
        return iter(released.items())

    def _drop(self, key: RankingKey) -> None:
        lease = self._leases.pop(key, None)
        if lease is None:
            return
        for slot in lease.slots:
            self._released[lease.candidates[slot[0]].executor_id] += 1

    def _count_demand(self, key: RankingKey, now: float) -> None:
        if not self.enabled:
            return
        demand = self._demand.get(key)
        if demand is None:
            demand = self._demand[key] = _Demand(now)
            while len(self._demand) > self.max_entries:
                self._demand.popitem(last=False)
        else:
            self._demand.move_to_end(key)
        demand.add(now, self.max_age_s)


__all__ = ["LeaseBook"]
