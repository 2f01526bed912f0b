"""Routing-slot admission: queue a request the slots can reach in time, shed the rest."""

from __future__ import annotations

import pytest

from mulambda.errors import ConfigurationError
from mulambda.routing.admission import SlotAdmission

pytestmark = pytest.mark.unit


def routes(admission: SlotAdmission, hold_s: float, count: int) -> None:
    for _ in range(count):
        admission.held(hold_s)


def test_nothing_is_shed_before_any_route_ended() -> None:
    admission = SlotAdmission(4)
    admission.waiting = 10_000
    assert admission.expected_wait_s(0) is None
    assert admission.shed(remaining_s=0.6) is None


def test_the_expected_wait_is_one_release_per_route_time_over_the_slots() -> None:
    admission = SlotAdmission(64, margin_s=0.5)
    routes(admission, 1.0, 200)
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
    admission.held(0.01)  # routes are quick: the margin is what a request needs
    assert admission.shed(remaining_s=0.6) is None
    assert admission.shed(remaining_s=0.4) is not None
    assert admission.shed(remaining_s=-1.0) is not None


def test_a_stall_does_not_shed_what_the_drained_queue_serves() -> None:
    # Quick routes, then a 5 s stall (a broker failover): every slot's route ends with a
    # 5 s hold while 300 requests wait with 6 s of their deadline left.
    admission = SlotAdmission(64, margin_s=0.5)
    routes(admission, 0.02, 200)
    routes(admission, 5.0, 64)
    admission.waiting = 300
    assert admission.route_s == pytest.approx(0.02)
    assert admission.shed(remaining_s=6.0) is None


def test_a_sustained_overload_sheds_at_the_executors_real_pace() -> None:
    # Every route takes 5 s: 64 slots release 12.8 per second; 200 queued wait 15.7 s.
    admission = SlotAdmission(64, margin_s=0.5)
    routes(admission, 0.02, 100)
    routes(admission, 5.0, 128)  # the quick ones before are out of the window
    assert admission.route_s == pytest.approx(5.0)
    admission.waiting = 200
    assert admission.shed(remaining_s=10.0) is not None
    admission.waiting = 20  # 1.6 s away, but a 5 s route does not fit in the 4.4 s left
    assert admission.shed(remaining_s=6.0) is not None
    assert admission.shed(remaining_s=8.0) is None


def test_a_clock_step_back_counts_as_a_zero_hold() -> None:
    admission = SlotAdmission(1)
    admission.held(-1.0)
    assert admission.route_s == 0.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        SlotAdmission(0)
