"""Accounting of a fault run: every request sent, every result each reader saw, the figures.

Pure: no Kafka, no clock, no I/O. :mod:`mulambda.harness.readers` feeds a :class:`Ledger`
from consumers of the reply topic, :mod:`mulambda.harness.load` tells it what was sent,
and :meth:`Ledger.figures` turns both into the numbers a fault is judged by.

The method is the one Kafka's own exactly-once system tests use: the reply topic is read
by two consumers, one with ``isolation_level="read_committed"`` (what an SDK sees, so
the one the targets are judged on) and one ``"read_uncommitted"`` (everything written,
aborted transactions included), and every request id is matched against what each of
them read. A result names its request by ``request_id`` when it carries one, else by
``correlation_id``; a request is known under both its ``message_id`` and its
``correlation_id``, so either way of naming it matches.

A third reader counts the copies of each request on the request topic: a producer retry
across a broker restart can write a request twice, and a duplicate result caused by a
duplicated request is the load generator's doing, not the platform's; those are reported
apart (``duplicates_from_request_copies``) and not counted in ``duplicates``.

Times are seconds on one monotonic clock of the measuring process.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

COMMITTED = "read_committed"
UNCOMMITTED = "read_uncommitted"
READERS: tuple[str, ...] = (COMMITTED, UNCOMMITTED)
"""The reply-topic readers, by isolation level; the first is the SDK-level view."""


@dataclass(frozen=True, slots=True)
class SentRequest:
    """One request the load generator published (or tried to)."""

    message_id: str
    correlation_id: str
    scheduled_s: float
    """When the open-loop schedule wanted it sent; latencies count from here."""
    deadline_s: float
    """Its deadline on the same clock (``scheduled_s`` plus the deadline)."""
    sent_s: float | None = None
    """When the producer was handed it (later than scheduled if the generator lagged)."""
    partition: int | None = None
    """Partition of the request topic it landed on, once acknowledged."""
    acked: bool = True
    """The broker acknowledged it; False when the send failed (then it never counts)."""
    acked_s: float | None = None
    """When the acknowledgement came (a broker outage holds requests in the producer)."""
    send_error: str | None = None
    """Why the send failed."""


@dataclass(frozen=True, slots=True)
class ResultSeen:
    """One result record one reader read."""

    received_s: float
    ok: bool
    reason: str | None = None


def answer_by(
    request: SentRequest,
    margin_s: float,
    *,
    channel_back_s: float | None = None,
    grace_s: float = 0.0,
) -> float:
    """When a request's result must have come: its deadline (or, acknowledged later than
    that, its acknowledgement) plus the margin.

    ``channel_back_s``: when the only path to the client (a single broker) was down until
    then, nobody can answer during the outage; a request due before it is due
    ``grace_s`` (the recovery target) after it instead.
    """
    due = max(request.deadline_s, request.acked_s or request.deadline_s) + margin_s
    if channel_back_s is not None and due < channel_back_s + grace_s:
        return max(due, channel_back_s + grace_s)
    return due


def result_id(payload: Mapping[str, Any]) -> str | None:
    """The request a result answers: its ``request_id`` if set, else ``correlation_id``."""
    for key in ("request_id", "correlation_id"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return None


_URL = re.compile(r"https?://\S+")
_HEX = re.compile(r"\b[0-9a-f]{12,}\b")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?(?:ms|s)?\b")


def normalise_reason(reason: str | None, limit: int = 120) -> str:
    """An error reason with URLs, ids and measured numbers blanked, so equal causes group.

    Small integers stay ("all 3 candidate(s) failed" and "all 1 candidate(s) failed" are
    different stories); times, ports and ids become ``N``/``<id>``/``<url>``.
    """
    if not reason:
        return "(no reason)"
    text = _URL.sub("<url>", reason.strip())
    text = _HEX.sub("<id>", text)
    text = _NUMBER.sub(
        lambda m: m.group(0) if m.group(0).isdigit() and len(m.group(0)) <= 2 else "N", text
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 100]) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def longest_outage(oks: Iterable[float], since: float) -> float | None:
    """The longest stretch without a successful result from ``since`` on.

    ``oks`` are the receive times of successful results; the stretch from ``since`` to
    the first one counts, as does every gap between consecutive ones. None when there is
    no successful result after ``since`` at all (not recovered).
    """
    later = sorted(t for t in oks if t >= since)
    if not later:
        return None
    gaps = [later[0] - since]
    gaps.extend(b - a for a, b in itertools.pairwise(later))
    return max(gaps)


@dataclass(frozen=True, slots=True)
class Figures:
    """What one run did to the requests (see :meth:`Ledger.figures`)."""

    sent: int
    """Requests the broker acknowledged."""
    send_failed: int
    """Requests whose send failed (the harness's loss, never counted as lost)."""
    answered: int
    """Requests whose first result (SDK view) came by their deadline plus the margin."""
    ok: int
    """... and said ok."""
    errors: int
    """... and was an error result."""
    lost: int
    """Requests with no result by their deadline plus the margin (late ones included);
    for a request the broker acknowledged only after its deadline, by that
    acknowledgement plus the margin: no platform can answer before it sees a request."""
    late: int
    """Of the lost, those whose result came after all."""
    acked_after_deadline: int
    """Requests the broker acknowledged only after their deadline had passed."""
    duplicates: int
    """Request ids with more than one result in the SDK view, not caused by request copies."""
    duplicate_ids: dict[str, int]
    """Per reader: request ids with more than one result."""
    extra_results: dict[str, int]
    """Per reader: results beyond the first, summed over request ids."""
    duplicates_from_request_copies: int
    """SDK-view duplicate ids whose request was on the request topic more than once."""
    request_copies: int
    """Request records beyond the first per request on the request topic."""
    errors_by_reason: dict[str, int]
    """Error result records (SDK view), by normalised reason."""
    premature_errors: int
    """Requests with an error result received while at least ``premature_left_s`` of
    their deadline was left (a retry could still have succeeded)."""
    premature_left_s: float
    foreign_results: int
    """Result records naming no request of this run."""
    latency_p50_ms: float | None
    """Scheduled send to first ok result, over answered ok requests."""
    latency_p99_ms: float | None
    latency_max_ms: float | None
    send_lag_p99_ms: float | None
    """How late the generator handed requests to its producer (harness health)."""
    fault_s: float | None
    """How long the fault action took (a restart: stop plus start), None without one."""
    recovery_s: float | None
    """Longest stretch, in any request-topic partition, without an ok result after the
    fault was done (its first one included); None without a fault or when some
    partition never got an ok result again (then ``recovered`` is False)."""
    recovered: bool | None
    margin_s: float

    lost_seen_uncommitted: int = 0
    """Of the lost, those that no result reached in the SDK view but another reader (one
    reading uncommitted records) did see: answers held back by a transaction that never
    ended (a read_committed view stuck at an open transaction), not answers never made."""

    without_request_id: int = 0
    """Result records (SDK view) without a ``request_id``: readers could not drop their
    duplicates by id, as the SDK does."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


class Ledger:
    """Collects sends and results of one run; :meth:`figures` does the accounting."""

    def __init__(self, readers: Sequence[str] = READERS, *, sdk_reader: str = COMMITTED) -> None:
        if sdk_reader not in readers:
            raise ValueError(f"sdk reader {sdk_reader!r} is not among {list(readers)}")
        self.readers = tuple(readers)
        self.sdk_reader = sdk_reader
        self._requests: dict[str, SentRequest] = {}
        self._alias: dict[str, str] = {}
        self._results: dict[str, dict[str, list[ResultSeen]]] = {r: {} for r in self.readers}
        self._copies: Counter[str] = Counter()
        self._without_request_id: Counter[str] = Counter()
        self._answered_by: dict[str, set[str]] = {r: set() for r in self.readers}
        """Per reader: requests (by message id) it read a result for."""
        self._waiting = 0
        """Acknowledged requests some reader has no result for yet."""

    # --- feeding ----------------------------------------------------------------------

    def record_sent(self, request: SentRequest) -> None:
        """A request was acknowledged (or its send failed)."""
        if request.message_id in self._requests:
            raise ValueError(f"request {request.message_id} recorded twice")
        self._requests[request.message_id] = request
        self._alias[request.message_id] = request.message_id
        self._alias[request.correlation_id] = request.message_id
        key = request.message_id
        for reader in self.readers:
            seen = self._results[reader]
            if key in seen or request.correlation_id in seen:
                self._answered_by[reader].add(key)
        if request.acked and not self._all_read(key):
            self._waiting += 1

    def record_result(self, reader: str, payload: Mapping[str, Any], received_s: float) -> None:
        """``reader`` read a result record (the decoded JSON object) at ``received_s``."""
        rid = result_id(payload)
        if not isinstance(payload.get("request_id"), str):
            self._without_request_id[reader] += 1
        if rid is None:
            rid = ""  # counted as foreign
        ok = payload.get("status") == "ok"
        reason = payload.get("error")
        seen = ResultSeen(received_s, ok, reason if isinstance(reason, str) else None)
        self._results[reader].setdefault(rid, []).append(seen)
        key = self._alias.get(rid)
        if key is None or key in self._answered_by[reader]:
            return
        self._answered_by[reader].add(key)
        if self._requests[key].acked and self._all_read(key):
            self._waiting -= 1

    def _all_read(self, key: str) -> bool:
        return all(key in self._answered_by[r] for r in self.readers)

    def record_request_copy(self, payload: Mapping[str, Any]) -> None:
        """A request record was read back from the request topic."""
        mid = payload.get("message_id")
        if isinstance(mid, str) and mid:
            self._copies[mid] += 1

    # --- progress ---------------------------------------------------------------------

    @property
    def acked(self) -> int:
        """Requests acknowledged so far."""
        return sum(1 for r in self._requests.values() if r.acked)

    def unanswered(self) -> int:
        """Acknowledged requests that some reader has read no result for yet."""
        return self._waiting

    # --- accounting -------------------------------------------------------------------

    def _seen(self, results: Mapping[str, list[ResultSeen]], key: str) -> list[ResultSeen]:
        request = self._requests[key]
        found = list(results.get(request.message_id, ()))
        if request.correlation_id != request.message_id:
            found.extend(results.get(request.correlation_id, ()))
        return sorted(found, key=lambda s: s.received_s)

    def figures(
        self,
        *,
        margin_s: float,
        fault_at_s: float | None = None,
        fault_done_s: float | None = None,
        premature_left_s: float = 5.0,
        outage_grace_s: float | None = None,
    ) -> Figures:
        """The figures of the run; results arriving later than a request's deadline plus
        ``margin_s`` leave it lost. Recovery is measured from ``fault_done_s``.

        ``outage_grace_s``: the fault cut every path to clients (the only broker) until
        ``fault_done_s``; requests due during it must be answered within this many
        seconds after it (see :func:`answer_by`)."""
        acked = [r for r in self._requests.values() if r.acked]
        sdk = self._results[self.sdk_reader]
        answered = ok = errors = lost = late = premature = copies_dups = acked_late = 0
        lost_uncommitted_seen = 0
        latencies: list[float] = []
        oks_by_partition: dict[int | None, list[float]] = defaultdict(list)
        for request in acked:
            seen = self._seen(sdk, request.message_id)
            limit = answer_by(
                request,
                margin_s,
                channel_back_s=fault_done_s if outage_grace_s is not None else None,
                grace_s=outage_grace_s or 0.0,
            )
            if not seen or seen[0].received_s > limit:
                lost += 1
                late += bool(seen)
                if not seen and any(
                    self._seen(self._results[r], request.message_id)
                    for r in self.readers
                    if r != self.sdk_reader
                ):
                    lost_uncommitted_seen += 1
            else:
                answered += 1
                if seen[0].ok:
                    ok += 1
                    latencies.append((seen[0].received_s - request.scheduled_s) * 1000)
                else:
                    errors += 1
            if request.acked_s is not None and request.acked_s > request.deadline_s:
                acked_late += 1
            if any(
                not s.ok and request.deadline_s - s.received_s >= premature_left_s for s in seen
            ):
                premature += 1
            if len(seen) > 1 and self._copies[request.message_id] > 1:
                copies_dups += 1
            oks_by_partition[request.partition].extend(
                s.received_s for s in seen if s.ok and s.received_s <= limit
            )
        duplicate_ids: dict[str, int] = {}
        extra: dict[str, int] = {}
        for reader in self.readers:
            counts = [len(self._seen(self._results[reader], r.message_id)) for r in acked]
            duplicate_ids[reader] = sum(1 for n in counts if n > 1)
            extra[reader] = sum(n - 1 for n in counts if n > 1)
        ours = set(self._alias)
        foreign = sum(len(v) for k, v in sdk.items() if k not in ours)
        reasons: Counter[str] = Counter()
        for key, seen_list in sdk.items():
            if key in ours:
                reasons.update(normalise_reason(s.reason) for s in seen_list if not s.ok)
        recovery: float | None = None
        recovered: bool | None = None
        if fault_done_s is not None:
            outages = [longest_outage(t, fault_done_s) for t in oks_by_partition.values()]
            recovered = bool(outages) and all(o is not None for o in outages)
            recovery = max(o for o in outages if o is not None) if recovered else None
        lags = [(r.sent_s - r.scheduled_s) * 1000 for r in self._requests.values() if r.sent_s]
        return Figures(
            sent=len(acked),
            send_failed=len(self._requests) - len(acked),
            answered=answered,
            ok=ok,
            errors=errors,
            lost=lost,
            late=late,
            lost_seen_uncommitted=lost_uncommitted_seen,
            acked_after_deadline=acked_late,
            duplicates=duplicate_ids[self.sdk_reader] - copies_dups,
            duplicate_ids=duplicate_ids,
            extra_results=extra,
            duplicates_from_request_copies=copies_dups,
            without_request_id=self._without_request_id[self.sdk_reader],
            request_copies=sum(n - 1 for n in self._copies.values() if n > 1),
            errors_by_reason=dict(reasons.most_common()),
            premature_errors=premature,
            premature_left_s=premature_left_s,
            foreign_results=foreign,
            latency_p50_ms=percentile(latencies, 50),
            latency_p99_ms=percentile(latencies, 99),
            latency_max_ms=max(latencies) if latencies else None,
            send_lag_p99_ms=percentile(lags, 99),
            fault_s=(
                fault_done_s - fault_at_s
                if fault_at_s is not None and fault_done_s is not None
                else None
            ),
            recovery_s=recovery,
            recovered=recovered,
            margin_s=margin_s,
        )


# --- reports --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScenarioReport:
    """One scenario's figures with what was run."""

    scenario: str
    description: str
    rate: float
    duration_s: float
    """How long the load was sent (a fault run stops it some time after the fault)."""
    deadline_s: float
    figures: Figures
    router_rss_peak_mb: dict[str, float] = field(default_factory=dict)
    """Peak VmRSS per router process seen during the run (sampled from /proc)."""
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


TABLE_COLUMNS = (
    "scenario",
    "sent",
    "answered",
    "ok",
    "errors",
    "lost",
    "late",
    "dups c/u",
    "extra c/u",
    "premature",
    "recovery s",
    "fault s",
    "p50 ms",
    "p99 ms",
    "rss MB",
)


def table_row(report: ScenarioReport) -> tuple[str, ...]:
    """One report as the cells of :data:`TABLE_COLUMNS`."""
    f = report.figures
    recovery = "-" if f.recovered is None else ("never" if not f.recovered else _fmt(f.recovery_s))
    rss = max(report.router_rss_peak_mb.values()) if report.router_rss_peak_mb else None
    return (
        report.scenario,
        str(f.sent),
        str(f.answered),
        str(f.ok),
        str(f.errors),
        str(f.lost),
        str(f.late),
        f"{f.duplicate_ids.get(COMMITTED, 0)}/{f.duplicate_ids.get(UNCOMMITTED, 0)}",
        f"{f.extra_results.get(COMMITTED, 0)}/{f.extra_results.get(UNCOMMITTED, 0)}",
        str(f.premature_errors),
        recovery,
        _fmt(f.fault_s),
        _fmt(f.latency_p50_ms),
        _fmt(f.latency_p99_ms),
        _fmt(rss, 0),
    )


def render_table(reports: Sequence[ScenarioReport], *, reasons: int = 3) -> str:
    """A plain-text table of the reports, each followed by its top error reasons."""
    rows = [TABLE_COLUMNS, *(table_row(r) for r in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(TABLE_COLUMNS), line(["-" * w for w in widths])]
    for report, row in zip(reports, rows[1:], strict=True):
        out.append(line(row))
        f = report.figures
        for reason, count in list(f.errors_by_reason.items())[:reasons]:
            out.append(f"    {count:>6} x {reason}")
        extras = []
        if f.send_failed:
            extras.append(f"send failed {f.send_failed}")
        if f.lost_seen_uncommitted:
            extras.append(f"lost but seen uncommitted {f.lost_seen_uncommitted}")
        if f.acked_after_deadline:
            extras.append(f"acknowledged after their deadline {f.acked_after_deadline}")
        if f.request_copies:
            extras.append(
                f"request copies {f.request_copies} "
                f"(dups from them {f.duplicates_from_request_copies})"
            )
        if f.foreign_results:
            extras.append(f"foreign results {f.foreign_results}")
        extras.extend(report.notes)
        if extras:
            out.append("    note: " + "; ".join(extras))
    return "\n".join(out)
