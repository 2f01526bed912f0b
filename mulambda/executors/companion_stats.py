"""The companion's counters, and their Prometheus view read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["CompanionStats", "StatsCollector"]


@dataclass(slots=True)
class CompanionStats:
    """Counters of one companion (also served on /metrics when a health port is set)."""

    heartbeats: int = 0
    """Statuses published (including the first and the final one)."""
    heartbeat_failures: int = 0
    """Statuses that could not be published (Kafka refused or timed out)."""
    status_errors: int = 0
    """TF Serving status reads that failed (down, timeout, error, garbage)."""
    stats_errors: int = 0
    """``/mulambda/stats`` reads that failed other than by a 404."""
    probe_rounds: int = 0
    """Completed rounds over every known client."""
    probes_ok: int = 0
    """Probes answered (each publishes one latency measurement)."""
    probes_failed: int = 0
    """Probes that failed (connection refused, non-2xx, bad URL)."""
    probes_timed_out: int = 0
    """Probes with no answer within ``probe_timeout_s``."""
    latencies_published: int = 0
    """Latency measurements the broker acknowledged."""
    publish_failures: int = 0
    """Latency measurements the broker did not acknowledge."""
    invalid_client_records: int = 0
    """Undecodable client-registration records skipped."""
    clients: int = 0
    """Clients currently known."""
    last_round_s: float = 0.0
    """Duration of the latest probe round."""


class StatsCollector:
    """Exposes :class:`CompanionStats` to Prometheus at scrape time (no second copy)."""

    _gauges: Final = frozenset({"clients", "last_round_s"})

    def __init__(self, executor_id: str, stats: CompanionStats) -> None:
        self._executor_id = executor_id
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        labels = {"executor_id": self._executor_id}
        for name, value in asdict(self._stats).items():
            family: Any
            if name in self._gauges:
                family = GaugeMetricFamily(
                    f"mulambda_companion_{name}", name.replace("_", " "), labels=list(labels)
                )
            else:
                family = CounterMetricFamily(
                    f"mulambda_companion_{name}", name.replace("_", " "), labels=list(labels)
                )
            family.add_metric(list(labels.values()), float(value))
            yield family
