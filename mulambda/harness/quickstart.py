"""Accounting of the quick-start overload run (``benchmarks/bench_quickstart_overload.py``).

Pure: no Kafka, no clock, no I/O. The benchmark tells a :class:`OverloadTally` what it
sent (with the scheduled time) and every result it read (with the time it was read);
:meth:`OverloadTally.figures` turns both into the numbers issue 17 judges the
quick-start platform by.

Capacity
    A synthetic model of the prototype answers after ``(D + size * alpha + in_flight *
    beta + jitter) * time_scale`` seconds (:mod:`mulambda.emulator.profiles`), so with
    ``N`` requests in flight it completes ``N / ((D + ... + N * beta) * scale)`` per
    second, which approaches ``1 / (beta * scale)`` as ``N`` grows and never exceeds it:
    that bound is the executor's capacity (:func:`capacity_per_s`), and the sum over the
    served models the platform's.

Answer rate
    ``ok_per_s`` divides the ok answers by the longer of the sending window and the time
    from the first send to the last ok answer: a backlog that drains after the last send
    was served in that longer time, so it is never credited as if it had fit the window.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mulambda.emulator.profiles import SyntheticProfile
from mulambda.harness.verify import normalise_reason, percentile


def capacity_per_s(profile: SyntheticProfile, time_scale: float) -> float:
    """The most answers per second ``profile`` gives at ``time_scale`` (module doc);
    infinite when its delay does not grow with load (``beta`` or the scale is 0)."""
    per_request_s = profile.beta * time_scale
    return math.inf if per_request_s <= 0 else 1.0 / per_request_s


def capacities(profiles: Iterable[SyntheticProfile], time_scale: float) -> dict[str, float]:
    """Capacity per model name (see :func:`capacity_per_s`)."""
    return {p.name: capacity_per_s(p, time_scale) for p in profiles}


@dataclass(frozen=True, slots=True)
class Answer:
    """One result the reader matched to a sent request."""

    ok: bool
    scheduled_s: float
    """When the request was due to be sent."""
    latency_s: float
    """From the request's scheduled send to the result being read."""
    executor_id: str | None
    reason: str | None


@dataclass
class OverloadFigures:
    """What a run did; ``to_json`` for the results file."""

    sent: int
    ok: int
    errors: int
    unanswered: int
    duplicates: int
    window_s: float
    """Seconds from the first scheduled send to the last."""
    span_s: float
    """The denominator of ``ok_per_s`` (module doc)."""
    ok_per_s: float
    capacity_per_s: float
    ok_share_of_capacity: float
    """``ok_per_s / capacity_per_s`` (0 with no capacity)."""
    ok_latency_p50_s: float | None
    ok_latency_p99_s: float | None
    error_latency_p50_s: float | None
    error_latency_p99_s: float | None
    ok_by_executor: dict[str, int] = field(default_factory=dict)
    errors_by_executor: dict[str, int] = field(default_factory=dict)
    """Error results that name an executor (one was called); others under ``-``."""
    error_reasons: list[tuple[str, int]] = field(default_factory=list)
    """Normalised reasons, most frequent first."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (reasons as ``[reason, count]`` pairs)."""
        document = asdict(self)
        document["error_reasons"] = [list(pair) for pair in self.error_reasons]
        return document


class OverloadTally:
    """Requests sent and results read, by request id (module doc)."""

    def __init__(self) -> None:
        self._scheduled: dict[str, float] = {}
        self._answers: dict[str, Answer] = {}
        self._duplicates = 0

    def sent(self, request_id: str, scheduled_s: float) -> None:
        """A request was published, due at ``scheduled_s``."""
        self._scheduled[request_id] = scheduled_s

    def result(self, payload: Mapping[str, Any], received_s: float) -> bool:
        """A result record's JSON, read at ``received_s``; False when it answers no
        request of this run (another client's, or a warm-up's)."""
        request_id = payload.get("request_id") or payload.get("correlation_id")
        if not isinstance(request_id, str) or request_id not in self._scheduled:
            return False
        if request_id in self._answers:
            self._duplicates += 1
            return True
        executor = payload.get("executor_id")
        error = payload.get("error")
        self._answers[request_id] = Answer(
            ok=payload.get("status") == "ok",
            scheduled_s=self._scheduled[request_id],
            latency_s=received_s - self._scheduled[request_id],
            executor_id=executor if isinstance(executor, str) else None,
            reason=error if isinstance(error, str) else None,
        )
        return True

    @property
    def pending(self) -> int:
        """Sent requests without a result yet."""
        return len(self._scheduled) - len(self._answers)

    def figures(self, capacity: float, *, reasons: int = 8) -> OverloadFigures:
        """The run's figures against ``capacity`` answers per second."""
        starts = self._scheduled.values()
        first = min(starts, default=0.0)
        window = max(starts, default=0.0) - first
        answers = list(self._answers.values())
        oks = [a for a in answers if a.ok]
        errors = [a for a in answers if not a.ok]
        last_ok = max((a.scheduled_s + a.latency_s for a in oks), default=first)
        span = max(window, last_ok - first)
        ok_per_s = len(oks) / span if span > 0 else 0.0
        reason_counts = Counter(normalise_reason(a.reason) for a in errors)
        return OverloadFigures(
            sent=len(self._scheduled),
            ok=len(oks),
            errors=len(errors),
            unanswered=self.pending,
            duplicates=self._duplicates,
            window_s=window,
            span_s=span,
            ok_per_s=ok_per_s,
            capacity_per_s=capacity,
            ok_share_of_capacity=ok_per_s / capacity if 0 < capacity < math.inf else 0.0,
            ok_latency_p50_s=_quantile(oks, 50),
            ok_latency_p99_s=_quantile(oks, 99),
            error_latency_p50_s=_quantile(errors, 50),
            error_latency_p99_s=_quantile(errors, 99),
            ok_by_executor=dict(Counter(a.executor_id or "-" for a in oks).most_common()),
            errors_by_executor=dict(Counter(a.executor_id or "-" for a in errors).most_common()),
            error_reasons=reason_counts.most_common(reasons),
        )


def _quantile(answers: Sequence[Answer], q: float) -> float | None:
    return percentile([a.latency_s for a in answers], q)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def render(figures: OverloadFigures, per_model: Mapping[str, float]) -> str:
    """The figures as the lines the benchmark prints."""
    f = figures
    capacity_parts = ", ".join(f"{name} {cap:.1f}" for name, cap in per_model.items())
    lines = [
        f"sent {f.sent} over {f.window_s:.1f} s; ok {f.ok}, errors {f.errors}, "
        f"unanswered {f.unanswered}, duplicates {f.duplicates}",
        f"ok answers {f.ok_per_s:.1f}/s (over {f.span_s:.1f} s) = "
        f"{f.ok_share_of_capacity * 100:.0f} % of the executors' capacity "
        f"{f.capacity_per_s:.1f}/s ({capacity_parts})",
        f"ok latency p50 {_seconds(f.ok_latency_p50_s)}, p99 {_seconds(f.ok_latency_p99_s)}; "
        f"error latency p50 {_seconds(f.error_latency_p50_s)}, "
        f"p99 {_seconds(f.error_latency_p99_s)}",
        "ok by executor: " + (", ".join(f"{k} {v}" for k, v in f.ok_by_executor.items()) or "-"),
        "errors by executor called: "
        + (", ".join(f"{k} {v}" for k, v in f.errors_by_executor.items()) or "-"),
        "error reasons:",
        *(f"  {count:>5}  {reason}" for reason, count in f.error_reasons),
    ]
    return "\n".join(lines)
