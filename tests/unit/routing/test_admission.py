"""Routing-slot admission: queue a request the slots can reach in time, shed the rest."""

from __future__ import annotations

import pytest

from mulambda.errors import ConfigurationError
from mulambda.routing.admission import SlotAdmission

pytestmark = pytest.mark.unit


def test_nothing_is_shed_before_any_route_ended() -> None:
    admission = SlotAdmission(4)
    admission.waiting = 10_000
    assert admission.expected_wait_s(0) is None
    assert admission.shed(remaining_s=0.6) is None


def test_the_expected_wait_is_one_release_per_mean_hold_over_the_slots() -> None:
    admission = SlotAdmission(64, margin_s=0.5)
    admission.held(1.0)
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


def test_the_mean_hold_follows_recent_routes() -> None:
    admission = SlotAdmission(1, ewma_alpha=0.5)
    admission.held(4.0)
    admission.held(0.0)  # e.g. a request shed by the selector: it freed its slot at once
    assert admission.mean_hold_s == pytest.approx(2.0)
    admission.held(-1.0)  # a clock step back counts as 0
    assert admission.mean_hold_s == pytest.approx(1.0)


@pytest.mark.parametrize(("concurrency", "alpha"), [(0, 0.1), (4, 0.0), (4, 1.5)])
def test_bad_settings_are_refused(concurrency: int, alpha: float) -> None:
    with pytest.raises(ConfigurationError):
        SlotAdmission(concurrency, ewma_alpha=alpha)
