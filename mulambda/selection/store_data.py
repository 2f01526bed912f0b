"""What the selector and its view store exchange: write batches and what a load returns.

Plain data, no I/O: the selector's pure cores (``mulambda.selection.state``,
``mulambda.selection.store_sync``) build :data:`StoreEvent` lists and read a
:class:`Snapshot`; :class:`~mulambda.selection.store.ViewStore` writes the former to
Redis and reads the latter back. The store's module doc describes the keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mulambda.wire.events import (
    ClientRegistration,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
)

# --- what a batch may contain ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutorRemoved:
    """A registration tombstone: forget the executor and everything about it."""

    executor_id: str


@dataclass(frozen=True, slots=True)
class ClientRemoved:
    """A client tombstone: forget the client and every latency measured to it."""

    client_id: str


@dataclass(frozen=True, slots=True)
class ObservedLatency:
    """What the view learned from an observed latency (its EWMAs), to be persisted.

    The selector writes this instead of the raw ``LatencyMeasurement`` (source observed)
    so a restored view gets the smoothed values back: ``ewma_ms`` is the view's
    ``observed_ms[client_id]``, ``service_ms``/``service_samples`` the executor's.
    """

    executor_id: str
    client_id: str
    ewma_ms: float
    service_ms: float | None = None
    service_samples: int | None = None
    service_fit: tuple[float, ...] | None = None
    """The view's ServiceFit statistics (five numbers), so a restart keeps the load slope."""


@dataclass(frozen=True, slots=True)
class RegistrationAsOf:
    """A registration whose last heartbeat is ``age_s`` old (replays and rewrites).

    A plain registration is a fresh heartbeat. This one gives the alive key only the time
    to live it has left, and none once that has run out, so a replayed or rewritten
    registration never revives an executor that stopped heartbeating. An existing alive
    key (a fresher heartbeat) is left as it is.
    """

    registration: ExecutorRegistration
    age_s: float


StoreEvent = (
    ExecutorRegistration
    | RegistrationAsOf
    | ExecutorRemoved
    | ClientRegistration
    | ClientRemoved
    | ExecutorStatus
    | LatencyMeasurement
    | ObservedLatency
)
"""Anything :meth:`~mulambda.selection.store.ViewStore.apply_batch` applies.

A ``LatencyMeasurement`` with source probe sets ``p:{client}``; one with source observed
sets ``o:{client}`` to its raw value (use :class:`ObservedLatency` to store the EWMA).
"""

Offsets = Mapping[tuple[str, int], int]
"""(topic, partition) → next offset to consume; aiokafka's TopicPartition keys fit."""


# --- what load returns -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutorSnapshot:
    """One executor as stored.

    ``ttl_remaining_s`` is the alive key's PTTL: None when it expired (the executor is
    stale). ``age_s`` is the time since the last heartbeat implied by it (None with it),
    computed with
    the heartbeat interval the view itself would use (the status's, else the
    registration's), so ``now - age_s`` passed to the view as the heartbeat time gives
    exactly the stored expiry. Use :meth:`last_seen`.
    """

    registration: ExecutorRegistration
    status: ExecutorStatus | None
    ttl_remaining_s: float | None
    age_s: float | None
    ttl_s: float
    """``missed_heartbeats`` x the interval in force; the full time to live."""
    probes: Mapping[str, float] = field(default_factory=dict)
    """Latest probe latency (ms) per client id."""
    observed: Mapping[str, float] = field(default_factory=dict)
    """EWMA of observed latency (ms) per client id."""
    service_ms: float | None = None
    """Learned base service time (ms), if any."""
    service_samples: int = 0
    """Observations that taught ``service_ms``."""
    service_fit: tuple[float, ...] | None = None
    """The view's service-time fit statistics, when stored."""

    @property
    def executor_id(self) -> str:
        """The executor's id."""
        return self.registration.executor_id

    def last_seen(self, now: float) -> float:
        """The heartbeat time to hand the view on the caller's clock ``now``.

        For a stale executor: just past its time to live, so it is not a candidate until
        its next heartbeat.
        """
        if self.age_s is not None:
            return now - self.age_s
        return now - self.ttl_s - 1.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything :meth:`~mulambda.selection.store.ViewStore.load` read.

    Rebuilding a view: for each executor, ``apply_registration(registration,
    e.last_seen(now))``, then, if ``status`` is set, ``apply_status(status,
    e.last_seen(now))``; probes as probe ``LatencyMeasurement``s; clients with
    ``apply_client``. Resume consuming each partition at ``offsets``.
    """

    executors: dict[str, ExecutorSnapshot]
    clients: dict[str, ClientRegistration]
    offsets: dict[tuple[str, int], int]
    invalid: dict[str, str]
    """Key → reason, for stored values that could not be decoded (skipped, logged)."""
