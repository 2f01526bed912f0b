"""Accounting of one load phase: HDR latency histograms from scheduled send times.

Pure: no Kafka, no clock, no I/O. :mod:`mulambda.harness.fullpath` tells a :class:`Tally`
what the load generator sent (:class:`~mulambda.harness.verify.SentRequest`, whose
``scheduled_s`` is when the open-loop schedule wanted it sent) and every result it read;
the tally matches them by correlation id and records, per answered request:

* ``total``: result read minus *scheduled* send time (no coordinated omission: a
  generator or platform that fell behind shows up as latency);
* ``overhead``: ``total`` minus the executor call's own duration (the result's
  ``call_ms``): what the platform adds to the model's work;
* ``router``: the result's ``latency_ms`` (router receipt to result);
* ``call``: the result's ``call_ms``;
* ``send_lag``: handed to the producer minus scheduled (the generator's own delay).

A result may be read before the generator heard its acknowledgement; it waits for the
send to be reported. Results of requests this phase never sent (an earlier phase's late
answers) are counted as ``stray`` and otherwise ignored; a second result for one
request counts as a duplicate.

Histograms hold microseconds from 1 µs to 10 minutes at 3 significant digits
(``hdrhistogram``); :meth:`LatencyHistogram.summary` reports milliseconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from hdrh.histogram import HdrHistogram

from mulambda.harness.verify import SentRequest, normalise_reason

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
)
"""The percentiles every summary reports, by name."""

_MAX_US = 600_000_000


class LatencyHistogram:
    """An HDR histogram of durations in seconds, summarised in milliseconds."""

    def __init__(self) -> None:
        self._hdr = HdrHistogram(1, _MAX_US, 3)

    def record(self, seconds: float) -> None:
        """Add one duration (clamped to the histogram's range)."""
        self._hdr.record_value(min(_MAX_US, max(1, round(seconds * 1_000_000))))

    @property
    def count(self) -> int:
        """Durations recorded."""
        return int(self._hdr.get_total_count())

    def summary(self) -> dict[str, float | int | None]:
        """count, mean, max and :data:`PERCENTILES` in ms (None when nothing recorded)."""
        count = self.count
        out: dict[str, float | int | None] = {"count": count}
        for name, q in PERCENTILES:
            out[name] = self._hdr.get_value_at_percentile(q) / 1000 if count else None
        out["mean"] = round(self._hdr.get_mean_value() / 1000, 3) if count else None
        out["max"] = self._hdr.get_max_value() / 1000 if count else None
        return out


class Tally:
    """Requests sent and results read during one phase (module docstring)."""

    def __init__(self) -> None:
        self.total = LatencyHistogram()
        self.overhead = LatencyHistogram()
        self.router = LatencyHistogram()
        self.call = LatencyHistogram()
        self.send_lag = LatencyHistogram()
        self.sent = 0
        """Requests the broker acknowledged."""
        self.send_failed = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        """Error results by normalised reason."""
        self.duplicates = 0
        self.stray = 0
        self.selections: Counter[str] = Counter()
        """Answered requests by where their ranking came from (fresh, leased, cached)."""
        self.first_scheduled_s: float | None = None
        self.last_received_s: float | None = None
        self.lag_samples: list[int] = []
        """Consumer lag of the routers' group on the request topic, as sampled."""
        self._scheduled: dict[str, float] = {}
        self._answered: set[str] = set()
        self._early: dict[str, tuple[Mapping[str, Any], float]] = {}

    @property
    def answered(self) -> int:
        """Requests with a result (ok or error)."""
        return len(self._answered)

    @property
    def outstanding(self) -> int:
        """Acknowledged requests without a result yet."""
        return self.sent - self.answered

    def record_sent(self, request: SentRequest) -> None:
        """The generator reports a request (acknowledged or not)."""
        if not request.acked:
            self.send_failed += 1
            return
        self.sent += 1
        if self.first_scheduled_s is None or request.scheduled_s < self.first_scheduled_s:
            self.first_scheduled_s = request.scheduled_s
        if request.sent_s is not None:
            self.send_lag.record(request.sent_s - request.scheduled_s)
        self._scheduled[request.correlation_id] = request.scheduled_s
        early = self._early.pop(request.correlation_id, None)
        if early is not None:
            self.record_result(*early)

    def record_result(self, payload: Mapping[str, Any], received_s: float) -> None:
        """A result record was read at ``received_s``."""
        correlation = payload.get("correlation_id")
        if not isinstance(correlation, str):
            self.stray += 1
            return
        scheduled = self._scheduled.get(correlation)
        if scheduled is None:
            # Possibly read before the acknowledgement reached the generator.
            if correlation in self._early:
                self.duplicates += 1
            else:
                self._early[correlation] = (payload, received_s)
            return
        if correlation in self._answered:
            self.duplicates += 1
            return
        self._answered.add(correlation)
        self.last_received_s = max(self.last_received_s or received_s, received_s)
        selection = payload.get("selection")
        if isinstance(selection, str):
            self.selections[selection] += 1
        if payload.get("status") != "ok":
            self.errors[normalise_reason(_text(payload.get("error")))] += 1
            return
        self.ok += 1
        total = received_s - scheduled
        self.total.record(total)
        call_ms = _number(payload.get("call_ms"))
        if call_ms is not None:
            self.call.record(call_ms / 1000)
            self.overhead.record(total - call_ms / 1000)
        router_ms = _number(payload.get("latency_ms"))
        if router_ms is not None:
            self.router.record(router_ms / 1000)

    def record_direct(self, scheduled_s: float, done_s: float, ok: bool, error: str = "") -> None:
        """One direct executor call (no Kafka): counted as sent and answered at once."""
        self.sent += 1
        key = str(self.sent)
        self._answered.add(key)
        if self.first_scheduled_s is None or scheduled_s < self.first_scheduled_s:
            self.first_scheduled_s = scheduled_s
        self.last_received_s = max(self.last_received_s or done_s, done_s)
        if ok:
            self.ok += 1
            self.total.record(done_s - scheduled_s)
        else:
            self.errors[normalise_reason(error)] += 1

    def throughput(self, duration_s: float) -> float:
        """Answered requests per second, over the longer of the sending duration and
        first scheduled send to last result."""
        if self.first_scheduled_s is None or self.last_received_s is None:
            return 0.0
        span = max(duration_s, self.last_received_s - self.first_scheduled_s)
        return self.answered / span if span > 0 else 0.0

    def figures(self, duration_s: float) -> dict[str, Any]:
        """Everything measured, JSON-ready."""
        lag = self.lag_samples
        return {
            "sent": self.sent,
            "send_failed": self.send_failed,
            "answered": self.answered,
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "error_reasons": dict(self.errors.most_common(5)),
            "unanswered": self.outstanding + len(self._early),
            "duplicates": self.duplicates,
            "stray": self.stray,
            "selections": dict(self.selections),
            "throughput_per_s": round(self.throughput(duration_s), 1),
            "latency_ms": self.total.summary(),
            "overhead_ms": self.overhead.summary(),
            "router_ms": self.router.summary(),
            "call_ms": self.call.summary(),
            "send_lag_ms": self.send_lag.summary(),
            "consumer_lag": {
                "samples": len(lag),
                "max": max(lag) if lag else None,
                "mean": round(sum(lag) / len(lag), 1) if lag else None,
            },
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
