"""The phase tally: latency from the scheduled time, overhead, strays and duplicates."""

from __future__ import annotations

import pytest

from mulambda.harness.tally import LatencyHistogram, Tally
from mulambda.harness.verify import SentRequest


def _sent(n: int, scheduled: float, sent: float | None = None) -> SentRequest:
    return SentRequest(f"m{n}", f"c{n}", scheduled, scheduled + 10, sent or scheduled)


def test_latency_counts_from_the_scheduled_time_and_overhead_drops_the_call() -> None:
    tally = Tally()
    tally.record_sent(_sent(1, scheduled=100.0, sent=100.004))
    tally.record_result({"correlation_id": "c1", "status": "ok", "call_ms": 2.0}, 100.010)
    assert tally.total.summary()["p50"] == pytest.approx(10.0, rel=0.01)
    assert tally.overhead.summary()["p50"] == pytest.approx(8.0, rel=0.01)
    assert tally.send_lag.summary()["p50"] == pytest.approx(4.0, rel=0.01)
    assert (tally.ok, tally.answered, tally.outstanding) == (1, 1, 0)


def test_a_result_read_before_its_acknowledgement_waits_for_it() -> None:
    tally = Tally()
    tally.record_result({"correlation_id": "c1", "status": "ok"}, 5.02)
    assert tally.answered == 0
    tally.record_sent(_sent(1, scheduled=5.0))
    assert tally.answered == 1
    assert tally.total.summary()["p50"] == pytest.approx(20.0, rel=0.01)


def test_errors_duplicates_and_strays_are_counted_apart() -> None:
    tally = Tally()
    tally.record_sent(_sent(1, 0.0))
    tally.record_sent(_sent(2, 0.0))
    tally.record_result({"correlation_id": "c1", "status": "error", "error": "boom 12ms"}, 1.0)
    tally.record_result({"correlation_id": "c1", "status": "ok"}, 1.1)
    tally.record_result({"status": "ok"}, 1.2)
    figures = tally.figures(duration_s=1.0)
    assert figures["errors"] == 1
    assert figures["error_reasons"] == {"boom N": 1}
    assert figures["duplicates"] == 1
    assert figures["stray"] == 1
    assert figures["unanswered"] == 1
    assert figures["ok"] == 0
    assert figures["latency_ms"]["p50"] is None


def test_answers_are_counted_by_where_their_ranking_came_from() -> None:
    tally = Tally()
    for n, selection in enumerate(["fresh", "leased", "leased", "cached", None]):
        tally.record_sent(_sent(n, 0.0))
        payload = {"correlation_id": f"c{n}", "status": "ok", "selection": selection}
        tally.record_result(payload, 0.01)
    tally.record_result({"correlation_id": "c1", "status": "ok", "selection": "leased"}, 0.02)
    assert tally.figures(duration_s=1.0)["selections"] == {"fresh": 1, "leased": 2, "cached": 1}


def test_throughput_spans_at_least_the_sending_duration() -> None:
    tally = Tally()
    for n in range(10):
        tally.record_sent(_sent(n, n * 0.1))
        tally.record_result({"correlation_id": f"c{n}", "status": "ok"}, n * 0.1 + 0.01)
    assert tally.throughput(duration_s=2.0) == pytest.approx(5.0)
    assert tally.throughput(duration_s=0.5) == pytest.approx(10 / 0.91)


def test_the_histogram_clamps_and_summarises_in_milliseconds() -> None:
    histogram = LatencyHistogram()
    assert histogram.summary()["p99"] is None
    histogram.record(-1.0)
    histogram.record(0.5)
    assert histogram.count == 2
    assert histogram.summary()["max"] == pytest.approx(500.0, rel=0.001)
