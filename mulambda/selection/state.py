"""How a state record changes the selector's view and what the store must learn from it.

Pure logic behind the selector worker's state stream (executor and client
registrations, executor status, latency measurements): :class:`StateApplier` decodes a
record's bytes (or refuses them), applies the record to an
:class:`~mulambda.selection.view.ExecutorView` and returns the
:data:`~mulambda.selection.store_data.StoreEvent` list the worker writes to the store.

What the store learns
    Registrations and client registrations as they are; their tombstones (a null value
    on the compacted registration topics) as ``ExecutorRemoved`` / ``ClientRemoved``.
    Statuses and latencies only when the view accepted them (not for unknown
    executors), so the store holds nothing about an executor the view does not know. A
    probe latency as it is; an observed one as the EWMA and the service-time fit it
    updated (``ObservedLatency``), so a restart restores what was learned rather than
    the last raw value. (The event types are in ``mulambda.selection.store_data``.)

Invalid records
    A value above :data:`MAX_STATE_RECORD_BYTES`, a value that does not decode, and a
    null value on a topic that is not compacted (junk there, not a tombstone), raise
    DecodeError: the worker dead-letters them.
    A tombstone without a key names nothing and is ignored.

Time
    A record counts as of its Kafka timestamp, never later than the caller's ``now``
    (:func:`record_time`), so replayed heartbeats are as old as they really are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from mulambda.selection.learning import ServiceFit
from mulambda.selection.store_data import (
    ClientRemoved,
    ExecutorRemoved,
    ObservedLatency,
    StoreEvent,
)
from mulambda.selection.view import ExecutorView
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import MAX_STATE_RECORD_BYTES, decode
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ObservedLatencies,
    WireModel,
)


def record_time(timestamp_ms: int | None, now: float) -> float:
    """The epoch seconds a record counts as of: its Kafka timestamp, at most ``now``."""
    return min(now, timestamp_ms / 1000) if timestamp_ms else now


def fit_numbers(fit: ServiceFit | None) -> tuple[float, ...] | None:
    """The view's ServiceFit as plain numbers for the store (None before any sample)."""
    return None if fit is None else tuple(float(v) for v in fit)


class _OfTopic(Protocol):
    @property
    def topic(self) -> str: ...


P = TypeVar("P", bound=_OfTopic)


class StateApplier:
    """Decodes state records and applies them to a view (see the module doc)."""

    def __init__(self, catalog: Catalog) -> None:
        self.executor_registrations = catalog.name(Topic.EXECUTOR_REGISTRATIONS)
        """The compacted executor registration topic."""
        self.client_registrations = catalog.name(Topic.CLIENT_REGISTRATIONS)
        """The compacted client registration topic."""
        self.models: dict[str, type[WireModel]] = {
            self.executor_registrations: ExecutorRegistration,
            self.client_registrations: ClientRegistration,
            catalog.name(Topic.EXECUTOR_STATUS): ExecutorStatus,
            catalog.name(Topic.LATENCY_MEASUREMENTS): LatencyMeasurement,
            catalog.name(Topic.OBSERVED_LATENCIES): ObservedLatencies,
        }
        """Every state topic and the message it carries."""
        self.compacted = frozenset({self.executor_registrations, self.client_registrations})
        """The state topics on which a null value is a tombstone."""

    def in_apply_order(self, partitions: Iterable[P]) -> list[P]:
        """``partitions`` with those of the registration topics first: a fetch that
        brings an executor's registration and its first status applies them in that
        order, where the status alone would be dropped as of an unknown executor until
        its next heartbeat."""
        return sorted(partitions, key=lambda tp: tp.topic not in self.compacted)

    def decode(self, topic: str, value: bytes | None) -> WireModel | None:
        """A state record's message, or None for a tombstone; DecodeError if invalid."""
        if value is None and topic in self.compacted:
            return None
        return decode(self.models[topic], value, max_bytes=MAX_STATE_RECORD_BYTES)

    def apply(
        self,
        view: ExecutorView,
        topic: str,
        key: bytes | None,
        value: WireModel | None,
        at: float,
    ) -> list[StoreEvent] | None:
        """Apply one decoded record (``value`` None: a tombstone) that happened ``at``.

        Returns what the store must learn (empty when the view ignored the record, e.g. a
        status of an unknown executor), or None for a record that names nothing (a
        tombstone without a key), which the worker does not count as applied.
        """
        out: list[StoreEvent] = []
        if value is None:
            if key is None:
                return None
            name = key.decode(errors="replace")
            if topic == self.executor_registrations:
                view.remove_executor(name)
                out.append(ExecutorRemoved(name))
            elif topic == self.client_registrations:
                view.remove_client(name)
                out.append(ClientRemoved(name))
        elif isinstance(value, ExecutorRegistration) and value.launch is not None:
            # A launch request is no executor (LaunchSpec): for selection, none is under it.
            view.remove_executor(value.executor_id)
            out.append(ExecutorRemoved(value.executor_id))
        elif isinstance(value, ExecutorRegistration):
            view.apply_registration(value, at)
            out.append(value)
        elif isinstance(value, ClientRegistration):
            view.apply_client(value)
            out.append(value)
        elif isinstance(value, ExecutorStatus):
            if view.apply_status(value, at):
                out.append(value)
        elif isinstance(value, ObservedLatencies) and view.apply_observed(value, at):
            out.extend(
                _learned(
                    view, value.executor_id, {s.client_id for s in value.samples if not s.failed}
                )
            )
        elif isinstance(value, LatencyMeasurement) and view.apply_latency(value, at):
            if value.source is LatencySource.PROBE:
                out.append(value)
            elif not value.failed:  # a failed call taught nothing to persist
                out.extend(_learned(view, value.executor_id, (value.client_id,)))
        return out


def _learned(view: ExecutorView, executor_id: str, client_ids: Iterable[str]) -> list[StoreEvent]:
    """What observed calls of ``client_ids`` taught the view about one executor, for the
    store: the EWMA per client and the executor's service time and fit."""
    entry = view.get(executor_id)
    if entry is None or not entry.observed_ms:
        return []
    observed = entry.observed_ms
    fit = fit_numbers(entry.service_fit)
    return [
        ObservedLatency(
            executor_id,
            client_id,
            observed[client_id],
            entry.service_ms,
            entry.service_samples,
            fit,
        )
        for client_id in sorted(client_ids)
        if client_id in observed
    ]
