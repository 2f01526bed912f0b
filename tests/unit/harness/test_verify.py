"""The fault suite's accounting: lost, late, duplicates, errors, recovery, the table."""

from __future__ import annotations

import json

import pytest

from mulambda.harness.verify import (
    COMMITTED,
    UNCOMMITTED,
    Ledger,
    ScenarioReport,
    SentRequest,
    answer_by,
    longest_outage,
    normalise_reason,
    percentile,
    render_table,
    result_id,
)


def _request(n: int, *, at: float = 0.0, deadline: float = 10.0, partition: int = 0) -> SentRequest:
    return SentRequest(
        message_id=f"m{n}",
        correlation_id=f"c{n}",
        scheduled_s=at,
        deadline_s=at + deadline,
        sent_s=at + 0.001,
        partition=partition,
    )


def _ok(n: int) -> dict[str, object]:
    return {"correlation_id": f"c{n}", "status": "ok"}


def _error(n: int, reason: str) -> dict[str, object]:
    return {"correlation_id": f"c{n}", "status": "error", "error": reason}


def _both(ledger: Ledger, payload: dict[str, object], at: float) -> None:
    ledger.record_result(COMMITTED, payload, at)
    ledger.record_result(UNCOMMITTED, payload, at)


def test_every_request_answered_once_is_clean() -> None:
    ledger = Ledger()
    for n in range(3):
        ledger.record_sent(_request(n, at=n))
        _both(ledger, _ok(n), n + 0.05)
    figures = ledger.figures(margin_s=2.0)
    assert (figures.sent, figures.answered, figures.ok, figures.errors) == (3, 3, 3, 0)
    assert (figures.lost, figures.late, figures.duplicates) == (0, 0, 0)
    assert figures.duplicate_ids == {COMMITTED: 0, UNCOMMITTED: 0}
    assert figures.latency_p50_ms == pytest.approx(50.0)
    assert figures.recovery_s is None
    assert figures.recovered is None
    assert ledger.unanswered() == 0


def test_no_result_by_deadline_plus_margin_is_lost_and_a_late_one_is_marked_late() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0, at=0.0, deadline=10.0))
    ledger.record_sent(_request(1, at=0.0, deadline=10.0))
    ledger.record_sent(_request(2, at=0.0, deadline=10.0))
    _both(ledger, _ok(0), 11.9)  # within the 2 s margin
    _both(ledger, _ok(1), 12.1)  # past it
    figures = ledger.figures(margin_s=2.0)
    assert figures.answered == 1
    assert figures.lost == 2
    assert figures.late == 1


def test_a_request_held_past_its_deadline_by_the_broker_is_due_from_its_ack() -> None:
    ledger = Ledger()
    held = SentRequest("m0", "c0", scheduled_s=0.0, deadline_s=10.0, acked_s=30.0)
    prompt = SentRequest("m1", "c1", scheduled_s=0.0, deadline_s=10.0, acked_s=0.1)
    ledger.record_sent(held)
    ledger.record_sent(prompt)
    _both(ledger, _error(0, "deadline passed before the request was routed"), 31.5)
    _both(ledger, _error(1, "deadline passed before the request was routed"), 31.5)
    figures = ledger.figures(margin_s=2.0)
    assert figures.acked_after_deadline == 1
    assert (figures.answered, figures.errors) == (1, 1)  # the held one, answered promptly
    assert (figures.lost, figures.late) == (1, 1)  # the prompt one, answered 20 s late


def test_a_result_may_name_its_request_by_request_id() -> None:
    assert result_id({"request_id": "m7", "correlation_id": "c7"}) == "m7"
    assert result_id({"correlation_id": "c7"}) == "c7"
    assert result_id({"request_id": "", "correlation_id": "c7"}) == "c7"
    assert result_id({"status": "ok"}) is None
    ledger = Ledger()
    ledger.record_sent(_request(7))
    _both(ledger, {"request_id": "m7", "correlation_id": "c7", "status": "ok"}, 1.0)
    figures = ledger.figures(margin_s=1.0)
    assert figures.ok == 1
    assert figures.foreign_results == 0


def test_duplicates_are_counted_per_reader() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0))
    ledger.record_sent(_request(1))
    _both(ledger, _ok(0), 1.0)
    _both(ledger, _ok(0), 2.0)  # a second result for request 0 in both views
    _both(ledger, _ok(1), 1.0)
    ledger.record_result(UNCOMMITTED, _ok(1), 3.0)  # an aborted write: only uncommitted
    ledger.record_result(UNCOMMITTED, _ok(1), 4.0)
    figures = ledger.figures(margin_s=1.0)
    assert figures.duplicate_ids == {COMMITTED: 1, UNCOMMITTED: 2}
    assert figures.extra_results == {COMMITTED: 1, UNCOMMITTED: 3}
    assert figures.duplicates == 1


def test_duplicates_caused_by_a_copied_request_are_not_the_platforms() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0))
    ledger.record_sent(_request(1))
    for n in (0, 1):
        ledger.record_request_copy({"message_id": f"m{n}"})
    ledger.record_request_copy({"message_id": "m0"})  # the producer wrote m0 twice
    for n in (0, 0, 1, 1):
        _both(ledger, _ok(n), 1.0)
    figures = ledger.figures(margin_s=1.0)
    assert figures.request_copies == 1
    assert figures.duplicates_from_request_copies == 1
    assert figures.duplicate_ids[COMMITTED] == 2
    assert figures.duplicates == 1


def test_the_first_result_decides_ok_or_error() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0))
    ledger.record_sent(_request(1))
    _both(ledger, _error(0, "selection failed: no reply within 2s"), 2.0)
    _both(ledger, _ok(0), 3.0)
    _both(ledger, _ok(1), 1.0)
    _both(ledger, _error(1, "late error"), 4.0)
    figures = ledger.figures(margin_s=1.0)
    assert (figures.ok, figures.errors) == (1, 1)
    assert figures.errors_by_reason == {"selection failed: no reply within N": 1, "late error": 1}


def test_premature_errors_are_those_with_enough_deadline_left() -> None:
    ledger = Ledger()
    for n in range(3):
        ledger.record_sent(_request(n, at=0.0, deadline=10.0))
    _both(ledger, _error(0, "x"), 2.0)  # 8 s left
    _both(ledger, _error(1, "x"), 5.0)  # exactly 5 s left: counts
    _both(ledger, _error(2, "x"), 6.0)  # 4 s left
    assert ledger.figures(margin_s=1.0, premature_left_s=5.0).premature_errors == 2


def test_failed_sends_are_reported_apart_and_never_lost() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0))
    failed = SentRequest("m1", "c1", 0.0, 10.0, acked=False, send_error="KafkaTimeoutError")
    ledger.record_sent(failed)
    _both(ledger, _ok(0), 1.0)
    figures = ledger.figures(margin_s=1.0)
    assert (figures.sent, figures.send_failed, figures.lost) == (1, 1, 0)
    assert ledger.unanswered() == 0


def test_results_for_unknown_ids_are_foreign() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0))
    _both(ledger, _ok(0), 1.0)
    ledger.record_result(COMMITTED, {"correlation_id": "someone-else", "status": "ok"}, 1.0)
    ledger.record_result(COMMITTED, {"status": "ok"}, 1.0)
    assert ledger.figures(margin_s=1.0).foreign_results == 2


def test_unanswered_counts_requests_some_reader_has_not_seen_answered() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0))
    ledger.record_sent(_request(1))
    assert ledger.unanswered() == 2
    ledger.record_result(COMMITTED, _ok(0), 1.0)
    assert ledger.unanswered() == 2  # the uncommitted reader has not seen it yet
    ledger.record_result(UNCOMMITTED, _ok(0), 1.0)
    ledger.record_result(UNCOMMITTED, _ok(0), 1.1)  # a duplicate changes nothing
    assert ledger.unanswered() == 1
    # A result read before its send was acknowledged still counts.
    _both(ledger, _ok(2), 1.0)
    ledger.record_sent(_request(2))
    assert ledger.unanswered() == 1


def test_recording_a_request_twice_is_a_harness_bug() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0))
    with pytest.raises(ValueError, match="twice"):
        ledger.record_sent(_request(0))


def test_recovery_is_the_longest_stretch_without_ok_in_any_partition() -> None:
    ledger = Ledger()
    # Partition 0 answers every 0.1 s throughout; partition 1 stops at 5 s and resumes at 9 s.
    n = 0
    for step in range(100):
        at = step * 0.1
        for partition in (0, 1):
            ledger.record_sent(_request(n, at=at, partition=partition))
            stalled = partition == 1 and 5.0 <= at < 9.0
            _both(ledger, _ok(n), 9.0 + (at - 5.0) * 0.01 if stalled else at + 0.01)
            n += 1
    figures = ledger.figures(margin_s=2.0, fault_at_s=4.9, fault_done_s=5.0)
    assert figures.recovered is True
    assert figures.recovery_s == pytest.approx(4.0, abs=0.05)
    assert figures.fault_s == pytest.approx(0.1)


def test_a_partition_without_any_ok_after_the_fault_never_recovered() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0, at=0.0, partition=0))
    ledger.record_sent(_request(1, at=6.0, partition=1))
    ledger.record_sent(_request(2, at=6.0, partition=0))
    _both(ledger, _ok(0), 0.1)
    _both(ledger, _error(1, "down"), 6.5)
    _both(ledger, _ok(2), 6.1)
    figures = ledger.figures(margin_s=1.0, fault_at_s=5.0, fault_done_s=5.0)
    assert figures.recovered is False
    assert figures.recovery_s is None


def test_late_ok_results_do_not_count_as_recovered() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0, at=6.0, deadline=1.0))
    _both(ledger, _ok(0), 20.0)
    figures = ledger.figures(margin_s=1.0, fault_at_s=5.0, fault_done_s=5.0)
    assert figures.recovered is False


def test_longest_outage_and_percentile() -> None:
    assert longest_outage([1.0, 2.0, 2.5, 6.0], since=1.5) == pytest.approx(3.5)
    assert longest_outage([4.0, 4.5], since=1.0) == pytest.approx(3.0)
    assert longest_outage([0.5], since=1.0) is None
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0


def test_reasons_are_normalised_so_equal_causes_group() -> None:
    a = normalise_reason(
        "all 3 candidate(s) failed; last: http://127.0.0.1:40123/v1/models/MidOK: "
        "connection refused after 12.5ms"
    )
    b = normalise_reason(
        "all 3 candidate(s) failed; last: http://127.0.0.1:40999/v1/models/FastBad: "
        "connection refused after 3.1ms"
    )
    assert a == b
    assert "all 3 candidate(s)" in a
    assert normalise_reason("request 0123456789abcdef0123 expired") == "request <id> expired"
    assert normalise_reason(None) == "(no reason)"
    assert len(normalise_reason("x" * 500)) == 120


def test_the_table_shows_each_scenario_and_its_top_reasons() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0))
    ledger.record_sent(_request(1))
    _both(ledger, _ok(0), 0.2)
    _both(ledger, _error(1, "selection failed: no reply within 2s"), 2.0)
    report = ScenarioReport(
        scenario="selector-kill",
        description="kill -9 of selector-0",
        rate=100.0,
        duration_s=20.0,
        deadline_s=10.0,
        figures=ledger.figures(margin_s=1.0, fault_at_s=0.1, fault_done_s=0.1),
        router_rss_peak_mb={"router-0": 61.5, "router-1": 70.25},
    )
    table = render_table([report])
    header, rule, row, reason = table.splitlines()[:4]
    assert header.split()[0] == "scenario"
    assert set(rule.replace(" ", "")) == {"-"}
    cells = row.split()
    assert cells[:7] == ["selector-kill", "2", "2", "1", "1", "0", "0"]
    assert cells[-1] == "70"
    assert "1 x selection failed: no reply within N" in reason
    dumped = json.loads(json.dumps(report.to_json()))
    assert dumped["figures"]["errors"] == 1
    assert dumped["router_rss_peak_mb"]["router-1"] == 70.25


def test_the_sdk_reader_must_be_one_of_the_readers() -> None:
    with pytest.raises(ValueError, match="sdk reader"):
        Ledger(readers=("a", "b"), sdk_reader="c")


def test_requests_due_while_the_only_broker_was_down_are_due_after_it_is_back() -> None:
    during = SentRequest("m0", "c0", scheduled_s=0.0, deadline_s=10.0, acked_s=0.1)
    after = SentRequest("m1", "c1", scheduled_s=40.0, deadline_s=50.0, acked_s=40.1)
    # broker back at 30 s, 10 s to recover: due at 40 s instead of 13 s
    assert answer_by(during, 3.0, channel_back_s=30.0, grace_s=10.0) == 40.0
    assert answer_by(during, 3.0) == 13.0
    # a request due well after the outage keeps its own due time
    assert answer_by(after, 3.0, channel_back_s=30.0, grace_s=10.0) == 53.0


def test_results_without_a_request_id_are_counted_as_not_deduplicable() -> None:
    ledger = Ledger()
    ledger.record_sent(_request(0))
    ledger.record_sent(_request(1))
    _both(ledger, _ok(0), 0.1)  # carries only the correlation id
    _both(ledger, {**_ok(1), "request_id": "m1"}, 0.1)
    _both(ledger, {**_ok(1), "request_id": "m1"}, 0.2)  # a second copy, same request_id
    figures = ledger.figures(margin_s=2.0)
    assert figures.without_request_id == 1
    assert figures.duplicates == 1
