"""Routing-slot admission: queue a request the slots can reach in time, shed the rest."""

from __future__ import annotations

import pytest

from mulambda.errors import ConfigurationError
from mulambda.routing.admission import SlotAdmission

pytestmark = pytest.mark.unit


def steady(admission: SlotAdmission, *, hold_s: float, every_s: float, count: int) -> float:
    """``count`` routes of ``hold_s`` each, one released every ``every_s``; the last time."""
    now = 100.0
    for _ in range(count):
        now += every_s
        admission.held(hold_s, released_at=now)
    return now


def test_nothing_is_shed_before_a_run_of_releases_was_measured() -> None:
    admission = SlotAdmission(4)
    admission.waiting = 10_000
    assert admission.expected_wait_s(0) is None
    assert admission.shed(remaining_s=0.6) is None
    for at in (5.0, 6.0, 7.0):
        admission.held(1.0, released_at=at)
    assert admission.release_rate is None
    assert admission.shed(remaining_s=0.6) is None
    admission.held(1.0, released_at=8.0)
    assert admission.release_rate == pytest.approx(1.0)


def test_the_expected_wait_is_the_queue_over_the_measured_release_rate() -> None:
    admission = SlotAdmission(64, margin_s=0.5)
    steady(admission, hold_s=1.0, every_s=1 / 64, count=200)  # 64 slots of 1 s routes
    assert admission.release_rate == pytest.approx(64.0)
    assert admission.expected_wait_s(0) == pytest.approx(1 / 64)
    assert admission.expected_wait_s(639) == pytest.approx(10.0)
    # A route takes 1 s, so of 10 s left 9 may be spent waiting.
    admission.waiting = 570  # 571 releases away: 8.92 s
    assert admission.shed(remaining_s=10.0) is None
    admission.waiting = 580  # 9.08 s: it would reach a slot with too little time to route
    shed = admission.shed(remaining_s=10.0)
    assert shed is not None
    assert shed.expected_wait_s == pytest.approx(581 / 64)
    assert shed.reason.startswith("router overloaded: all 64 routing slots busy")
    assert "580 requests queued" in shed.reason
    assert "10.00 s before the deadline" in shed.reason


def test_a_request_with_less_than_the_margin_left_is_shed_once_anything_is_known() -> None:
    admission = SlotAdmission(8, margin_s=0.5)
    steady(admission, hold_s=0.01, every_s=0.01, count=20)  # quick routes: the margin counts
    assert admission.shed(remaining_s=0.6) is None
    assert admission.shed(remaining_s=0.4) is not None
    assert admission.shed(remaining_s=-1.0) is not None


def test_a_stall_that_is_over_does_not_shed_what_the_drained_queue_serves() -> None:
    # Quick routes, then a 5 s stall (a broker failover): every slot's route ends in one
    # burst with a 5 s hold while 300 requests wait with 6 s of their deadline left.
    admission = SlotAdmission(64, margin_s=0.5)
    now = steady(admission, hold_s=0.01, every_s=0.01, count=200)
    for i in range(64):
        admission.held(5.0, released_at=now + 5.0 + i * 0.0005)
    admission.waiting = 300
    assert admission.route_s == pytest.approx(0.01)
    wait = admission.expected_wait_s(300)
    assert wait is not None
    assert wait < 0.5
    assert admission.shed(remaining_s=6.0) is None


def test_a_slow_stall_keeps_the_pace_from_before_it_for_the_memory() -> None:
    # Routes time out one by one during a stall: releases slow to 10/s for 3 s.
    admission = SlotAdmission(64, margin_s=0.5, memory_s=5.0)
    now = steady(admission, hold_s=0.3, every_s=0.005, count=200)  # 200/s before
    for i in range(30):
        admission.held(3.0, released_at=now + 0.1 * (i + 1))
    assert admission.release_rate == pytest.approx(200.0)
    admission.waiting = 600  # 3 s away at the usual pace; 60 s at the stall's
    assert admission.shed(remaining_s=8.0) is None
    # Still 10/s long after: that is the pace now, and the queue cannot be reached.
    steady_now = now + 3.0
    for i in range(100):
        admission.held(3.0, released_at=steady_now + 0.1 * (i + 1))
    assert admission.release_rate == pytest.approx(10.0)
    assert admission.shed(remaining_s=8.0) is not None


def test_a_sustained_overload_sheds_at_the_executors_real_pace() -> None:
    # Every route takes 5 s: 64 slots release 12.8 per second; 200 queued wait 15.7 s.
    admission = SlotAdmission(64, margin_s=0.5)
    steady(admission, hold_s=5.0, every_s=5.0 / 64, count=300)
    assert admission.route_s == pytest.approx(5.0)
    admission.waiting = 200
    assert admission.shed(remaining_s=10.0) is not None
    admission.waiting = 20  # 1.6 s away, but a 5 s route does not fit in the 4.4 s left
    assert admission.shed(remaining_s=6.0) is not None
    assert admission.shed(remaining_s=8.0) is None


def test_a_clock_step_back_counts_as_a_zero_hold() -> None:
    admission = SlotAdmission(1)
    admission.held(-1.0, released_at=1.0)
    assert admission.route_s == 0.0


@pytest.mark.parametrize(("concurrency", "memory_s"), [(0, 5.0), (4, 0.0)])
def test_bad_settings_are_refused(concurrency: int, memory_s: float) -> None:
    with pytest.raises(ConfigurationError):
        SlotAdmission(concurrency, memory_s=memory_s)
