"""Keeping the selector's store in step with its view: what to write, and when to rewrite.

Pure logic behind the selector worker's Redis writes; the worker only carries out what
these decide (``ViewStore.apply_batch``, ``ViewStore.clear``).

Batches
    :class:`StoreSync` collects the store events of applied state records and the
    offsets they reached; the worker writes them in one batch per fetch. The in-memory
    view stays authoritative: a failed write keeps the batch for the next attempt, but
    only up to ``max_pending`` events. Past that bound, memory matters more than an
    incremental write: the backlog is dropped and, once the store answers again, the
    whole store is cleared and rewritten from the view (:func:`view_as_events`) with the
    offsets the state consumer has reached.

Restarts
    :func:`restore_view` rebuilds a view from the store's snapshot; the compacted
    registration topics are then replayed on top, and :func:`changes_after_replay` says
    what of that the store must learn: only what differs from the snapshot, so a restart
    neither rewrites every registration (most of its cost) nor refreshes the liveness of
    executors that died long ago (a registration write counts as a heartbeat).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mulambda.errors import DecodeError
from mulambda.selection.state import fit_numbers
from mulambda.selection.store_data import (
    ClientRemoved,
    ExecutorRemoved,
    ObservedLatency,
    RegistrationAsOf,
    Snapshot,
    StoreEvent,
)
from mulambda.selection.view import ExecutorView
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
)


@dataclass(frozen=True, slots=True)
class StoreWrite:
    """One write to carry out: when ``rewrite``, clear the store first; then ``events``
    and ``offsets`` in one batch."""

    events: list[StoreEvent]
    offsets: dict[tuple[str, int], int]
    """(topic, partition) → the next offset to consume."""
    rewrite: bool


class StoreSync:
    """Pending store writes of one selector, bounded while the store is down.

    Owned by one task: between :meth:`next_write` and :meth:`written` / :meth:`failed`
    nothing else is queued.
    """

    def __init__(self, max_pending: int = 100_000) -> None:
        """``max_pending``: events kept while writes fail; past it, a full rewrite."""
        self.max_pending = max_pending
        self.pending: list[StoreEvent] = []
        """Events not yet written, in the order they were applied to the view."""
        self.offsets: dict[tuple[str, int], int] = {}
        """Offsets reached by the records behind ``pending`` (and since the last write)."""
        self._resync = False

    @property
    def resync_pending(self) -> bool:
        """Whether the store lost writes and awaits a full rewrite from the view."""
        return self._resync

    def queue(self, events: Iterable[StoreEvent]) -> None:
        """Events the store must learn, after those already pending."""
        self.pending.extend(events)

    def next_write(
        self, view: ExecutorView, positions: Mapping[tuple[str, int], int], now: float
    ) -> StoreWrite | None:
        """What to write now, or None when nothing is due.

        Normally the pending events and offsets; after a dropped backlog, the whole view
        as of ``now`` (epoch seconds) with every state partition's ``positions``.
        """
        if self._resync:
            return StoreWrite(
                view_as_events(view, now),
                {(topic, partition): o for (topic, partition), o in positions.items()},
                rewrite=True,
            )
        if not (self.pending or self.offsets):
            return None
        return StoreWrite(self.pending, self.offsets, rewrite=False)

    def written(self) -> None:
        """The write went through: nothing is pending, nor is a rewrite."""
        self.pending, self.offsets = [], {}
        self._resync = False

    def failed(self) -> bool:
        """The write failed: keep the batch for the next one, unless it grew past the
        bound; then drop it for a full rewrite. Returns whether it was dropped."""
        if len(self.pending) <= self.max_pending:
            return False
        self.pending, self.offsets = [], {}
        self._resync = True
        return True


def view_as_events(view: ExecutorView, now: float) -> list[StoreEvent]:
    """The whole view as store events (a full rewrite after the store lost writes).

    Executors the view holds as stale get no alive key (RegistrationAsOf, no status).
    """
    events: list[StoreEvent] = list(view.clients())
    for entry in view.entries():
        events.append(RegistrationAsOf(entry.registration, now - entry.last_seen))
        if entry.model_state is not None and entry.live(now):
            events.append(
                ExecutorStatus(
                    executor_id=entry.executor_id,
                    model_state=entry.model_state,
                    in_flight=entry.in_flight,
                    errors=entry.errors,
                    heartbeat_interval_s=entry.heartbeat_interval_s,
                )
            )
        events.extend(
            LatencyMeasurement(executor_id=entry.executor_id, client_id=c, latency_ms=ms)
            for c, ms in entry.probes.items()
        )
        events.extend(
            ObservedLatency(
                entry.executor_id,
                c,
                ms,
                entry.service_ms,
                entry.service_samples,
                fit_numbers(entry.service_fit),
            )
            for c, ms in (entry.observed_ms or {}).items()
        )
    return events


def restore_view(view: ExecutorView, snapshot: Snapshot, now: float) -> dict[str, str]:
    """Put a store snapshot into an empty ``view`` (``now``: epoch seconds).

    Heartbeats count as of the time the stored liveness implies; probes, observed
    latencies and service-time fits come back as stored. Returns executor id → reason
    for every stored fit that was unusable: that executor keeps the rest of what was
    learned (its service time as if stored before fits were).
    """
    for client in snapshot.clients.values():
        view.apply_client(client)
    probes: list[tuple[float, str, str]] = []
    for stored in snapshot.executors.values():
        seen = stored.last_seen(now)
        view.apply_registration(stored.registration, seen)
        if stored.status is not None:
            view.apply_status(stored.status, seen)
        probes.extend((ms, stored.executor_id, c) for c, ms in stored.probes.items())
    # Ascending order makes every insertion into the view's sorted latency lists an
    # append; in store order they cost O(n) each, O(n^2) for a restart.
    probes.sort()
    for ms, executor_id, client_id in probes:
        # Stored values were validated on load; a message per value (100k at 10k
        # executors x 10 clients) cost a quarter of a restart.
        view.restore_probe(executor_id, client_id, ms)
    unusable: dict[str, str] = {}
    for stored in snapshot.executors.values():
        if stored.observed or stored.service_ms is not None or stored.service_fit:
            try:
                view.restore_learned(
                    stored.executor_id,
                    stored.observed,
                    stored.service_ms,
                    stored.service_samples,
                    stored.service_fit,
                )
            except DecodeError as exc:  # a malformed fit: keep the rest
                unusable[stored.executor_id] = exc.reason
                view.restore_learned(
                    stored.executor_id,
                    stored.observed,
                    stored.service_ms,
                    stored.service_samples,
                )
    return unusable


def changes_after_replay(
    view: ExecutorView, snapshot: Snapshot, replayed: Iterable[StoreEvent], now: float
) -> list[StoreEvent]:
    """What the store must learn after the registration topics were replayed over a
    view restored from ``snapshot``; ``replayed`` is what applying them returned.

    The final state of every id the topics hold, where it differs from the store, and
    removal of the ids the store has but the topics no longer do (compacted away as
    tombstones while the selector was down): those also leave the view.
    """
    executors: dict[str, ExecutorRegistration | None] = {}
    clients: dict[str, ClientRegistration | None] = {}
    for event in replayed:
        if isinstance(event, ExecutorRegistration):
            executors[event.executor_id] = event
        elif isinstance(event, ExecutorRemoved):
            executors[event.executor_id] = None
        elif isinstance(event, ClientRegistration):
            clients[event.client_id] = event
        elif isinstance(event, ClientRemoved):
            clients[event.client_id] = None
    changes: list[StoreEvent] = []
    for executor_id, registration in executors.items():
        stored = snapshot.executors.get(executor_id)
        if registration is not None and (stored is None or stored.registration != registration):
            # As of the view's last heartbeat: a replayed registration is old news.
            entry = view.get(executor_id)
            age = now - entry.last_seen if entry is not None else float("inf")
            changes.append(RegistrationAsOf(registration, age))
    for executor_id in snapshot.executors:
        if executors.get(executor_id) is None:
            view.remove_executor(executor_id)
            changes.append(ExecutorRemoved(executor_id))
    for client_id, client in clients.items():
        if client is not None and snapshot.clients.get(client_id) != client:
            changes.append(client)
    for client_id in snapshot.clients:
        if clients.get(client_id) is None:
            view.remove_client(client_id)
            changes.append(ClientRemoved(client_id))
    return changes
