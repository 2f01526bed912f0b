"""Keeping the store in step with the view: batches, the bounded backlog, the rewrite,
and restarts (the view from a snapshot, what a replay tells the store)."""

from __future__ import annotations

import pytest

from mulambda.selection.store_data import (
    ClientRemoved,
    ExecutorRemoved,
    ExecutorSnapshot,
    ObservedLatency,
    RegistrationAsOf,
    Snapshot,
    StoreEvent,
)
from mulambda.selection.store_sync import (
    StoreSync,
    changes_after_replay,
    restore_view,
    view_as_events,
)
from mulambda.selection.view import ExecutorView
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
)
from tests.unit.selection.records import WINE, observed, probe, reg, status

pytestmark = pytest.mark.unit

NOW = 1_000.0
CLIENT = ClientRegistration(client_id="c", probe_url="http://c:1/probe")


# --- batches, backlog, rewrite ---------------------------------------------------------


def test_nothing_pending_means_no_write() -> None:
    sync = StoreSync()
    assert sync.next_write(ExecutorView(), {}, NOW) is None


def test_pending_events_and_offsets_are_written_together_then_cleared() -> None:
    sync = StoreSync()
    sync.queue([reg("a")])
    sync.offsets[("t", 0)] = 5
    sync.queue([status("a")])
    write = sync.next_write(ExecutorView(), {}, NOW)
    assert write is not None
    assert not write.rewrite
    assert [type(e) for e in write.events] == [ExecutorRegistration, ExecutorStatus]
    assert write.offsets == {("t", 0): 5}
    sync.written()
    assert (sync.pending, sync.offsets) == ([], {})
    assert sync.next_write(ExecutorView(), {}, NOW) is None


def test_offsets_alone_are_worth_a_write() -> None:
    # Records the view ignored still move the stored offsets on.
    sync = StoreSync()
    sync.offsets[("status", 3)] = 100
    write = sync.next_write(ExecutorView(), {}, NOW)
    assert write is not None
    assert (write.events, write.offsets) == ([], {("status", 3): 100})


def test_a_failed_write_keeps_the_batch_within_the_bound() -> None:
    sync = StoreSync(max_pending=2)
    sync.queue([reg("a"), reg("b")])
    sync.offsets[("t", 0)] = 2
    assert sync.failed() is False  # at the bound: kept
    sync.queue([reg("c")])
    sync.offsets[("t", 0)] = 3
    write = sync.next_write(ExecutorView(), {}, NOW)
    assert write is not None
    assert [e.executor_id for e in write.events if isinstance(e, ExecutorRegistration)] == [
        "a",
        "b",
        "c",
    ]
    assert write.offsets == {("t", 0): 3}
    assert not sync.resync_pending


def test_past_the_bound_the_backlog_is_dropped_for_a_rewrite_from_the_view() -> None:
    view = ExecutorView()
    view.apply_registration(reg("a"), NOW)
    sync = StoreSync(max_pending=1)
    sync.queue([reg("a"), status("a")])
    sync.offsets[("t", 0)] = 2

    assert sync.failed() is True
    assert sync.resync_pending
    assert (sync.pending, sync.offsets) == ([], {})

    # Still down: what arrives meanwhile is covered by the rewrite too.
    sync.queue([status("a")] * 5)
    rewrite = sync.next_write(view, {("t", 0): 7, ("u", 1): 9}, NOW)
    assert rewrite is not None
    assert rewrite.rewrite
    assert rewrite.offsets == {("t", 0): 7, ("u", 1): 9}
    assert [type(e) for e in rewrite.events] == [RegistrationAsOf]
    assert sync.failed() is True
    assert sync.resync_pending

    sync.written()
    assert not sync.resync_pending
    assert sync.pending == []
    assert sync.next_write(view, {("t", 0): 7}, NOW) is None


# --- the whole view as events ----------------------------------------------------------


def test_view_as_events_keeps_stale_executors_stale() -> None:
    view = ExecutorView(missed_heartbeats=3)
    view.apply_client(CLIENT)
    view.apply_registration(reg("live", interval=5.0), NOW - 2.0)
    view.apply_status(status("live", in_flight=2), NOW - 1.0)
    view.apply_latency(probe("live", "c", 4.0), NOW)
    view.apply_latency(observed("live", "c", 30.0), NOW)
    view.apply_registration(reg("stale", interval=5.0), NOW - 60.0)
    view.apply_status(status("stale"), NOW - 60.0)

    events = view_as_events(view, NOW)

    assert events[0] == CLIENT
    by_kind: dict[type, list[StoreEvent]] = {}
    for event in events:
        by_kind.setdefault(type(event), []).append(event)
    registrations = {
        e.registration.executor_id: e.age_s
        for e in by_kind[RegistrationAsOf]
        if isinstance(e, RegistrationAsOf)
    }
    assert registrations == {"live": 1.0, "stale": 60.0}
    # Only the live executor's status is written: no alive key for the stale one.
    statuses = [e for e in by_kind[ExecutorStatus] if isinstance(e, ExecutorStatus)]
    assert [(s.executor_id, s.in_flight, s.model_state) for s in statuses] == [
        ("live", 2, ModelState.AVAILABLE)
    ]
    [latency] = by_kind[LatencyMeasurement]
    assert isinstance(latency, LatencyMeasurement)
    assert (latency.executor_id, latency.client_id, latency.latency_ms, latency.source) == (
        "live",
        "c",
        4.0,
        LatencySource.PROBE,
    )
    entry = view.get("live")
    assert entry is not None
    assert entry.service_fit is not None
    assert by_kind[ObservedLatency] == [
        ObservedLatency(
            "live", "c", 30.0, entry.service_ms, 1, tuple(float(v) for v in entry.service_fit)
        )
    ]


# --- restarts --------------------------------------------------------------------------


def stored(
    registration: ExecutorRegistration,
    *,
    age_s: float | None,
    status_: ExecutorStatus | None = None,
    probes: dict[str, float] | None = None,
    observed_ms: dict[str, float] | None = None,
    service_ms: float | None = None,
    service_samples: int = 0,
    service_fit: tuple[float, ...] | None = None,
) -> ExecutorSnapshot:
    ttl_s = 3 * (status_ or registration).heartbeat_interval_s
    return ExecutorSnapshot(
        registration=registration,
        status=status_,
        ttl_remaining_s=None if age_s is None else ttl_s - age_s,
        age_s=age_s,
        ttl_s=ttl_s,
        probes=probes or {},
        observed=observed_ms or {},
        service_ms=service_ms,
        service_samples=service_samples,
        service_fit=service_fit,
    )


def snapshot(
    *executors: ExecutorSnapshot, clients: tuple[ClientRegistration, ...] = ()
) -> Snapshot:
    return Snapshot(
        executors={e.executor_id: e for e in executors},
        clients={c.client_id: c for c in clients},
        offsets={("status", 0): 42},
        invalid={},
    )


def test_restore_view_brings_back_liveness_state_probes_and_learning() -> None:
    fit = (2.0, 1.0, 30.0, 0.5, 2.0)
    snap = snapshot(
        stored(
            reg("a"),
            age_s=4.0,
            status_=status("a", in_flight=3),
            probes={"c": 10.0, "d": 30.0},
            observed_ms={"c": 45.0},
            service_ms=20.0,
            service_samples=6,
            service_fit=fit,
        ),
        stored(reg("b"), age_s=None),  # its alive key had expired
        stored(reg("l"), age_s=1.0, status_=status("l", ModelState.LOADING)),
        clients=(CLIENT,),
    )
    view = ExecutorView(missed_heartbeats=3)

    assert restore_view(view, snap, NOW) == {}

    assert [e.executor_id for e in view.candidates(WINE, NOW)] == ["a"]
    a = view.get("a")
    assert a is not None
    assert a.last_seen == NOW - 4.0
    assert a.expires == NOW + 11.0  # ttl 15 s, 4 s of it gone
    assert a.in_flight == a.load == 3
    assert (a.probes, a.median_probe_ms) == ({"c": 10.0, "d": 30.0}, 20.0)
    assert a.observed_ms == {"c": 45.0}
    assert a.service_fit == fit
    assert a.service_samples == 6
    b = view.get("b")
    assert b is not None
    assert not b.live(NOW)
    assert view.eliminated_by(reg("l").traits, NOW + 14.0) == "model_state"
    assert [c.client_id for c in view.clients()] == ["c"]
    assert view.fallback_latency_ms() == 20.0  # median of every probe


def test_restore_view_reports_an_unusable_fit_and_keeps_the_rest() -> None:
    snap = snapshot(
        stored(
            reg("a"),
            age_s=0.0,
            observed_ms={"c": 45.0},
            service_ms=12.0,
            service_samples=3,
            service_fit=(0.0, 0.0, 5.0, 0.0, 0.0),  # no weight
        )
    )
    view = ExecutorView()
    unusable = restore_view(view, snap, NOW)
    assert list(unusable) == ["a"]
    assert "malformed service fit" in unusable["a"]
    entry = view.get("a")
    assert entry is not None
    # As if stored before fits were: the service time at load 0, the serial prior.
    assert (entry.service_ms, entry.load_slope_ms, entry.service_samples) == (12.0, 12.0, 3)
    assert entry.observed_ms == {"c": 45.0}


def test_replay_tells_the_store_only_what_changed() -> None:
    same, changed = reg("same"), reg("changed", accuracy=0.5)
    snap = snapshot(
        stored(same, age_s=1.0),
        stored(reg("changed"), age_s=2.0),
        stored(reg("compacted-away"), age_s=0.0),
        stored(reg("tombstoned"), age_s=0.0),
        clients=(CLIENT, ClientRegistration(client_id="gone", probe_url="http://g:1/p")),
    )
    view = ExecutorView()
    restore_view(view, snap, NOW)
    new = reg("new")
    fresh_client = ClientRegistration(client_id="fresh", probe_url="http://f:1/p")
    # What applying the replayed registration topics returned, in topic order.
    view.apply_registration(same, NOW - 500.0)  # replayed: old records
    view.apply_registration(changed, NOW - 500.0)
    view.apply_registration(new, NOW - 500.0)
    view.remove_executor("tombstoned")
    view.apply_client(fresh_client)
    replayed: list[StoreEvent] = [
        same,
        changed,
        new,
        reg("tombstoned"),
        ExecutorRemoved("tombstoned"),
        CLIENT,
        fresh_client,
    ]

    changes = changes_after_replay(view, snap, replayed, NOW)

    assert changes == [
        RegistrationAsOf(changed, 2.0),  # as old as its last heartbeat, not refreshed
        RegistrationAsOf(new, 500.0),
        ExecutorRemoved("compacted-away"),
        ExecutorRemoved("tombstoned"),
        fresh_client,
        ClientRemoved("gone"),
    ]
    # What the topics no longer hold leaves the view too.
    assert view.get("compacted-away") is None
    assert {c.client_id for c in view.clients()} == {"c", "fresh"}
    assert view.get("same") is not None


def test_a_replayed_registration_the_view_no_longer_holds_is_stale() -> None:
    view = ExecutorView()
    registration = reg("x")
    changes = changes_after_replay(view, snapshot(), [registration], NOW)
    assert changes == [RegistrationAsOf(registration, float("inf"))]
