from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mulambda.routing.answered import mark_ttl_ms

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_marks_outlive_the_deadline_by_the_margin() -> None:
    assert mark_ttl_ms(NOW + timedelta(seconds=10), NOW, 300) == 310_000


def test_a_past_deadline_still_keeps_the_margin() -> None:
    assert mark_ttl_ms(NOW - timedelta(seconds=50), NOW, 300) == 300_000


def test_marks_live_at_least_a_second() -> None:
    assert mark_ttl_ms(NOW - timedelta(seconds=50), NOW, 0) == 1000
