"""The full-path load harness's smoke configuration against a private platform.

Checks that every figure benchmarks/bench_load.py reports is there and counted from real
traffic (requests answered, CPU spent, lag sampled, plots drawn); never how fast.
"""

from __future__ import annotations

from pathlib import Path

from mulambda.harness.fullpath import SMOKE, FullPathSweep
from mulambda.harness.platform import LocalPlatform, PlatformSpec
from mulambda.harness.plots import write_plots
from mulambda.harness.tally import PERCENTILES

SUMMARIES = ("latency_ms", "overhead_ms", "router_ms", "call_ms", "send_lag_ms")


async def test_the_smoke_sweep_reports_every_figure_from_real_traffic(tmp_path: Path) -> None:
    spec = PlatformSpec(selectors=1, routers=1, executors=1, log_level="WARNING")
    async with LocalPlatform(spec) as platform:
        results = await FullPathSweep(platform, SMOKE).run()

    assert [p["offered_per_s"] for p in results["platform"]] == list(SMOKE.rates)
    assert [p["offered_per_s"] for p in results["direct"]] == list(SMOKE.rates)
    for point in results["platform"]:
        assert point["sent"] > 0
        assert point["ok"] == point["answered"] == point["sent"]
        assert point["errors"] == point["unanswered"] == point["duplicates"] == 0
        assert point["throughput_per_s"] > 0
        for summary in SUMMARIES:
            figures = point[summary]
            assert figures["count"] > 0, summary
            assert all(figures[name] is not None for name, _ in PERCENTILES), summary
        # Overhead is the total minus the executor call: never more than the total.
        assert point["overhead_ms"]["p50"] <= point["latency_ms"]["p50"]
        assert point["consumer_lag"]["samples"] > 0
        cpu = point["cpu"]
        assert {"router", "selector", "executor", "broker", "loadgen"} <= cpu["seconds"].keys()
        assert cpu["platform_ms_per_request"] > 0
    for point in results["direct"]:
        assert point["sent"] > 0
        assert point["ok"] == point["sent"]
        assert point["latency_ms"]["count"] == point["ok"]
    for path in write_plots(results, tmp_path / "smoke"):
        assert path.stat().st_size > 0
