"""The selector's in-memory view: index, liveness, model state, latencies, load."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mulambda.errors import ConfigurationError
from mulambda.selection.view import ExecutorView, TraitsKey
from mulambda.wire.events import (
    ClientRegistration,
    LatencyMeasurement,
    ModelState,
    ObservedLatencies,
    ObservedSample,
    Traits,
)
from tests.unit.selection.records import TEXT, WINE, observed, probe, reg, status

pytestmark = pytest.mark.unit


def ids(view: ExecutorView, traits: Traits | TraitsKey, now: float) -> list[str]:
    return [e.executor_id for e in view.candidates(traits, now)]


# --- index ---------------------------------------------------------------------------


def test_candidates_come_only_from_the_requested_traits_sorted_by_id() -> None:
    view = ExecutorView()
    for executor_id in ("c", "a", "b"):
        view.apply_registration(reg(executor_id), now=0.0)
    view.apply_registration(reg("t1", traits=TEXT), now=0.0)

    assert ids(view, WINE, 1.0) == ["a", "b", "c"]
    assert ids(view, TEXT.key(), 1.0) == ["t1"]
    assert view.size == len(view) == 4
    other = Traits(model_type="classification", input_format="wine-13", output_format="label")
    assert ids(view, other, 1.0) == []
    assert view.eliminated_by(other, 1.0) == "traits"


def test_reregistration_with_new_traits_moves_the_executor() -> None:
    view = ExecutorView()
    assert view.apply_registration(reg("a"), now=0.0) is True
    assert ids(view, WINE, 0.0) == ["a"]

    assert view.apply_registration(reg("a", traits=TEXT, accuracy=0.7), now=1.0) is False

    assert ids(view, WINE, 1.0) == []
    assert view.eliminated_by(WINE, 1.0) == "traits"
    assert ids(view, TEXT, 1.0) == ["a"]
    assert view.candidates(TEXT, 1.0).max_accuracy == 0.7


def test_reregistration_updates_cached_accuracy() -> None:
    view = ExecutorView()
    view.apply_registration(reg("a", accuracy=0.6), now=0.0)
    view.apply_registration(reg("b", accuracy=0.8), now=0.0)
    assert view.candidates(WINE, 0.0).max_accuracy == 0.8

    view.apply_registration(reg("a", accuracy=0.95), now=0.5)

    cands = view.candidates(WINE, 1.0)
    assert cands.max_accuracy == 0.95
    assert [e.executor_id for e in cands.by_accuracy] == ["a", "b"]
    assert cands.ratios == (1.0, 0.8 / 0.95)


def test_tombstone_removes_executor_and_its_latencies() -> None:
    view = ExecutorView(default_latency_ms=77.0)
    view.apply_registration(reg("a"), now=0.0)
    view.apply_registration(reg("b"), now=0.0)
    view.apply_latency(probe("a", "c1", 40.0), now=0.0)
    assert view.fallback_latency_ms() == 40.0

    assert view.remove_executor("a") is True
    assert view.remove_executor("a") is False

    assert ids(view, WINE, 1.0) == ["b"]
    assert view.get("a") is None
    # The removed executor's probe no longer feeds the view-wide median.
    assert view.fallback_latency_ms() == 77.0
    # Records arriving after the tombstone are ignored, not resurrecting it.
    assert view.apply_status(status("a"), now=2.0) is False
    assert ids(view, WINE, 2.0) == ["b"]


# --- liveness ------------------------------------------------------------------------


def test_registration_counts_as_heartbeat_and_expiry_is_inclusive_of_ttl() -> None:
    view = ExecutorView(missed_heartbeats=3)
    view.apply_registration(reg("a", interval=2.0), now=100.0)

    assert ids(view, WINE, 106.0) == ["a"]  # exactly 3 * 2 s: still live
    assert ids(view, WINE, 106.001) == []
    assert view.eliminated_by(WINE, 106.001) == "liveness"


def test_expired_executor_returns_when_heartbeats_resume() -> None:
    view = ExecutorView(missed_heartbeats=3)
    view.apply_registration(reg("a"), now=0.0)
    view.apply_registration(reg("b"), now=0.0)
    view.apply_status(status("b"), now=10.0)
    # The set is cached here, with "a" (last seen 0, ttl 15) still in it ...
    assert ids(view, WINE, 14.0) == ["a", "b"]
    # ... and the cache must not outlive a member's expiry.
    assert ids(view, WINE, 16.0) == ["b"]
    assert ids(view, WINE, 26.0) == []

    view.apply_status(status("a"), now=30.0)

    assert ids(view, WINE, 30.0) == ["a"]
    assert ids(view, WINE, 44.0) == ["a"]
    assert ids(view, WINE, 46.0) == []


def test_status_interval_changes_ttl_even_for_a_cached_set() -> None:
    view = ExecutorView(missed_heartbeats=2)
    view.apply_registration(reg("a", interval=10.0), now=0.0)
    assert ids(view, WINE, 1.0) == ["a"]  # cached until 20

    view.apply_status(status("a", interval=1.0), now=2.0)  # now expires at 4

    assert ids(view, WINE, 3.9) == ["a"]
    assert ids(view, WINE, 4.1) == []


def test_a_replayed_old_record_does_not_move_last_seen_backwards() -> None:
    view = ExecutorView()
    view.apply_registration(reg("a"), now=100.0)
    view.apply_status(status("a"), now=50.0)
    entry = view.get("a")
    assert entry is not None
    assert entry.last_seen == 100.0
    assert entry.live(114.0)
    assert not entry.live(116.0)


def test_missed_heartbeats_is_configurable() -> None:
    view = ExecutorView(missed_heartbeats=1.5)
    view.apply_registration(reg("a", interval=4.0), now=0.0)
    assert ids(view, WINE, 6.0) == ["a"]
    assert ids(view, WINE, 6.5) == []


# --- model state -----------------------------------------------------------------------


def test_model_state_filters_and_fresh_registration_counts_as_available() -> None:
    view = ExecutorView()
    view.apply_registration(reg("a"), now=0.0)
    view.apply_registration(reg("b"), now=0.0)
    assert ids(view, WINE, 1.0) == ["a", "b"]  # no status yet: available

    view.apply_status(status("a", ModelState.LOADING), now=1.0)
    view.apply_status(status("b", ModelState.UNKNOWN), now=1.0)
    assert ids(view, WINE, 2.0) == []
    assert view.eliminated_by(WINE, 2.0) == "model_state"

    view.apply_status(status("b", ModelState.AVAILABLE), now=3.0)
    assert ids(view, WINE, 3.0) == ["b"]
    assert view.eliminated_by(WINE, 3.0) is None


def test_liveness_is_named_before_model_state_only_when_nothing_is_live() -> None:
    view = ExecutorView()
    view.apply_registration(reg("a"), now=0.0)
    view.apply_registration(reg("b"), now=0.0)
    view.apply_status(status("a", ModelState.END), now=10.0)

    # "b" is stale, "a" is live but unloaded: the last filter to bite is model_state.
    assert view.eliminated_by(WINE, 20.0) == "model_state"
    # Both stale.
    assert view.eliminated_by(WINE, 30.0) == "liveness"


def test_records_of_unknown_executors_are_ignored() -> None:
    view = ExecutorView()
    assert view.apply_status(status("ghost"), now=0.0) is False
    assert view.apply_latency(probe("ghost", "c", 1.0), now=0.0) is False
    assert view.apply_latency(observed("ghost", "c", 1.0), now=0.0) is False
    assert view.set_outstanding("ghost", 1) is False
    assert view.restore_probe("ghost", "c", 1.0) is False
    assert view.size == 0
    assert view.get("ghost") is None
    assert view.fallback_latency_ms() == view.default_latency_ms


# --- latencies -------------------------------------------------------------------------


def test_latency_fallback_chain() -> None:
    view = ExecutorView(default_latency_ms=123.0)
    view.apply_registration(reg("a"), now=0.0)
    view.apply_registration(reg("b"), now=0.0)
    a, b = view.get("a"), view.get("b")
    assert a is not None
    assert b is not None

    # Nothing measured anywhere: the constant.
    assert view.network_latency_ms(a, "me") == 123.0

    view.apply_latency(probe("a", "x", 10.0), now=0.0)
    view.apply_latency(probe("a", "y", 30.0), now=0.0)
    view.apply_latency(probe("a", "z", 80.0), now=0.0)
    # Known client: its own probe.
    assert view.network_latency_ms(a, "y") == 30.0
    # Unknown client of a probed executor: that executor's median (odd count).
    assert view.network_latency_ms(a, "me") == 30.0
    # Executor without any probe: the view-wide median.
    assert view.network_latency_ms(b, "me") == 30.0

    view.apply_latency(probe("b", "x", 50.0), now=0.0)
    # Even count view-wide: mean of the middle two of 10, 30, 50, 80.
    assert view.fallback_latency_ms() == 40.0
    # A newer probe replaces the older one (latest wins), medians follow.
    view.apply_latency(probe("a", "z", 20.0), now=0.0)
    assert view.network_latency_ms(a, "me") == 20.0  # median of 10, 20, 30
    assert view.fallback_latency_ms() == 25.0  # 10, 20, 30, 50


def test_remove_client_forgets_its_latencies() -> None:
    view = ExecutorView(default_latency_ms=99.0)
    view.apply_client(ClientRegistration(client_id="c", probe_url="http://c:1/probe"))
    view.apply_registration(reg("a"), now=0.0)
    view.apply_latency(probe("a", "c", 5.0), now=0.0)
    view.apply_latency(observed("a", "c", 9.0), now=0.0)
    assert [c.client_id for c in view.clients()] == ["c"]

    assert view.remove_client("c") is True

    entry = view.get("a")
    assert entry is not None
    assert entry.probes == {}
    assert entry.median_probe_ms is None
    assert entry.observed_ms == {}
    assert view.fallback_latency_ms() == 99.0
    assert list(view.clients()) == []
    assert view.remove_client("c") is False


# --- load ------------------------------------------------------------------------------


def test_outstanding_counts_per_source_and_load_is_max_with_in_flight_and_pending() -> None:
    view = ExecutorView()
    view.apply_registration(reg("a"), now=0.0)
    entry = view.get("a")
    assert entry is not None

    view.set_outstanding("a", 1, source="r1")  # one dispatch ...
    view.set_outstanding("a", 2, source="r1")  # ... and another
    view.set_outstanding("a", 3, source="r2")  # a jump is a resync, not a dispatch
    assert (entry.outstanding, entry.load) == (5, 5)

    view.apply_status(status("a", in_flight=7), now=1.0)
    assert entry.load == 7

    view.set_outstanding("a", 0, source="r1")
    view.apply_status(status("a", in_flight=0), now=2.0)
    assert (entry.outstanding, entry.load) == (3, 3)
    assert entry.outstanding_by_source == {"r2": 3}

    view.set_outstanding("a", 0, source="r2")
    assert entry.outstanding == 0
    assert entry.outstanding_by_source == {}
    # r1's two dispatches were never observed: they still count.
    assert entry.load == 2
    view.apply_latency(observed("a", "c", 5.0), now=3.0)
    view.apply_latency(observed("a", "c", 5.0), now=3.0)
    assert entry.load == 0


def test_pending_dispatches_count_until_observed_and_teach_their_dispatch_load() -> None:
    view = ExecutorView(ewma_alpha=0.5, slope_prior_weight=1e-12)
    view.apply_registration(reg("a"), now=0.0)
    view.apply_latency(probe("a", "c", 0.0), now=0.0)
    entry = view.get("a")
    assert entry is not None

    view.candidates(WINE, 1.0)  # the selection's time
    view.set_outstanding("a", 1, source="sel")  # dispatched at load 0
    view.set_outstanding("a", 2, source="sel")  # dispatched at load 1
    assert entry.load == 2
    # The selector's guess expires before the requests are done: they still count.
    view.set_outstanding("a", 0, source="sel")
    assert entry.load == 2

    # Observations pair with dispatches oldest first: 10 ms at load 0, 16 at load 1 -
    # even though the view's load is 2 and then 1 when they arrive.
    view.apply_latency(observed("a", "c", 10.0), now=1.1)
    assert entry.load == 1
    view.apply_latency(observed("a", "c", 16.0), now=1.2)
    assert entry.load == 0
    assert entry.load_slope_ms == pytest.approx(6.0)
    assert entry.service_ms == pytest.approx(10.0)

    # Without a pending dispatch the current load stands in.
    view.apply_status(status("a", in_flight=2), now=1.3)
    view.apply_latency(observed("a", "c", 22.0), now=1.4)
    assert entry.load_slope_ms == pytest.approx(6.0)


def test_a_failed_call_ends_its_dispatch_and_teaches_nothing() -> None:
    view = ExecutorView()
    view.apply_registration(reg("a"), now=0.0)
    entry = view.get("a")
    assert entry is not None
    view.candidates(WINE, 1.0)
    view.set_outstanding("a", 1, source="sel")
    view.set_outstanding("a", 2, source="sel")
    view.set_outstanding("a", 0, source="sel")  # the selector's guess expired
    assert entry.load == 2
    failed = observed("a", "c", 9_000.0).model_copy(update={"failed": True})
    assert view.apply_latency(failed, now=2.0)
    # No longer counted as load, long before the pending timeout ...
    assert entry.load == 1
    # ... and no service time learned from a timeout or an error answer.
    assert entry.service_ms is None
    assert entry.observed_ms is None
    assert view.apply_latency(failed, now=2.1)
    assert entry.load == 0
    assert view.apply_latency(failed, now=2.2)  # nothing pending: still harmless
    assert entry.load == 0


def test_pending_dispatches_expire_when_no_observation_comes() -> None:
    view = ExecutorView(pending_timeout_s=5.0)
    view.apply_registration(reg("a"), now=0.0)
    entry = view.get("a")
    assert entry is not None
    view.candidates(WINE, 10.0)
    view.set_outstanding("a", 1, source="sel")
    view.set_outstanding("a", 0, source="sel")
    view.apply_status(status("a"), now=14.0)
    assert entry.load == 1
    view.apply_status(status("a"), now=15.5)
    assert entry.load == 0
    # A later observation finds no dispatch to pair with: it is learned at the current load.
    view.apply_latency(observed("a", "c", 30.0), now=16.0)
    fit = entry.service_fit
    assert fit is not None
    assert fit.load_mean == 0.0


# --- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"missed_heartbeats": 0},
        {"ewma_alpha": 0.0},
        {"ewma_alpha": 1.5},
        {"default_latency_ms": -1.0},
        {"default_service_ms": float("nan")},
        {"default_load_slope_ms": -1.0},
        {"slope_prior_weight": 0.0},
        {"pending_timeout_s": 0.0},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        ExecutorView(**kwargs)


# --- the cached candidate set matches a from-scratch filter ------------------------------

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["register", "status", "remove", "select"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from([ModelState.AVAILABLE, ModelState.LOADING]),
        st.sampled_from([1.0, 2.0, 5.0]),
        st.floats(min_value=0.0, max_value=8.0),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=_OPS)
def test_cached_candidates_equal_a_fresh_filter(
    ops: list[tuple[str, str, ModelState, float, float]],
) -> None:
    view = ExecutorView(missed_heartbeats=2)
    now = 0.0
    rng = random.Random(0)
    for op, executor_id, state, interval, step in ops:
        now += step
        if op == "register":
            traits = WINE if rng.random() < 0.8 else TEXT
            view.apply_registration(reg(executor_id, traits=traits, interval=interval), now)
        elif op == "status":
            view.apply_status(status(executor_id, state, interval=interval), now)
        elif op == "remove":
            view.remove_executor(executor_id)
        got = ids(view, WINE, now)
        expected = sorted(
            e.executor_id
            for e in view.entries()
            if e.key == WINE.key()
            and now - e.last_seen <= 2 * e.heartbeat_interval_s
            and e.model_state in (None, ModelState.AVAILABLE)
        )
        assert got == expected
        cands = view.candidates(WINE, now)
        assert cands.max_accuracy == max([e.accuracy for e in cands], default=0.0)


def test_restore_probe_equals_applying_a_probe_measurement() -> None:
    restored, applied = ExecutorView(), ExecutorView()
    for view in (restored, applied):
        view.apply_registration(reg("a"), 0.0)
    assert restored.restore_probe("a", "c1", 12.0)
    assert restored.restore_probe("a", "c2", 30.0)
    applied.apply_latency(LatencyMeasurement(executor_id="a", client_id="c1", latency_ms=12.0), 0)
    applied.apply_latency(LatencyMeasurement(executor_id="a", client_id="c2", latency_ms=30.0), 0)
    a, b = restored.get("a"), applied.get("a")
    assert a is not None
    assert b is not None
    assert (a.probes, a.median_probe_ms) == (b.probes, b.median_probe_ms)
    assert restored.fallback_latency_ms() == applied.fallback_latency_ms()
    assert not restored.restore_probe("ghost", "c1", 1.0)
    with pytest.raises(ConfigurationError):
        restored.restore_probe("a", "c1", float("nan"))


def _learned_state(view: ExecutorView, executor_id: str) -> tuple[object, ...]:
    entry = view.get(executor_id)
    assert entry is not None
    return (
        entry.service_ms,
        entry.service_samples,
        entry.service_fit,
        entry.load_slope_ms,
        dict(entry.observed_ms or {}),
        entry.load,
        list(entry.pending or ()),
    )


def test_a_batch_of_observed_calls_teaches_what_the_separate_measurements_do() -> None:
    calls = [  # (client, ms, size, failed), in the order they ended
        ("c1", 10.0, 2, False),
        ("c2", 14.0, 4, False),
        ("c1", 30.0, None, True),
        ("c1", 12.0, 2, False),
        ("c2", 18.0, 1, False),
        ("c1", 9.0, 3, False),
    ]
    views = []
    for _ in range(2):
        view = ExecutorView(ewma_alpha=0.3, slope_prior_weight=0.5)
        view.apply_registration(reg("a", delay=0.5), now=0.0)
        view.apply_latency(probe("a", "c1", 1.0), now=0.0)
        view.apply_latency(probe("a", "c2", 3.0), now=0.0)
        view.candidates(WINE, 1.0)
        for load in range(1, 9):  # eight dispatches at loads 0..7
            view.set_outstanding("a", load, source="sel")
        views.append(view)
    separate, batched = views

    for client, ms, size, failed in calls:
        measurement = observed("a", client, ms, size).model_copy(update={"failed": failed})
        assert separate.apply_latency(measurement, now=1.5)
    samples = [
        ObservedSample(client_id=c, latency_ms=ms, input_size=size, failed=failed)
        for c, ms, size, failed in calls
    ]
    assert batched.apply_observed(
        ObservedLatencies(executor_id="a", router_id="r", samples=samples), now=1.5
    )
    assert _learned_state(batched, "a") == _learned_state(separate, "a")
    assert _learned_state(batched, "a")[1] == 5  # five calls taught a service time

    # Released leased slots were never pending dispatches: the view's state stays (the
    # selector's answerer ends their outstanding counts).
    before = _learned_state(batched, "a")
    assert batched.apply_observed(ObservedLatencies(executor_id="a", released=2), now=1.6)
    assert _learned_state(batched, "a") == before
    assert batched.get("a") is not None
    assert not batched.apply_observed(ObservedLatencies(executor_id="zz", released=1), now=1.7)
