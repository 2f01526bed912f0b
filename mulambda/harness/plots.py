"""PNG plots of a full-path sweep (:mod:`mulambda.harness.fullpath`): latency percentiles
against offered load, and CPU per request by process.

matplotlib (the ``bench`` extra) is imported when a plot is drawn, with the file-only
Agg backend, so nothing else here needs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_LINES = (("p50", "-"), ("p99", "--"), ("p99.9", ":"))


def _series(points: Sequence[Mapping[str, Any]], figure: str, name: str) -> list[float]:
    # NaN leaves a gap where a phase had nothing to measure.
    return [math.nan if p[figure][name] is None else float(p[figure][name]) for p in points]


def write_plots(results: Mapping[str, Any], stem: Path) -> list[Path]:
    """``<stem>-latency.png`` and ``<stem>-cpu.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    platform: Sequence[Mapping[str, Any]] = results["platform"]
    direct: Sequence[Mapping[str, Any]] = results["direct"]
    rates = [p["offered_per_s"] for p in platform]
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, style in _LINES:
        ax.plot(rates, _series(platform, "latency_ms", name), "o" + style, label=f"total {name}")
        ax.plot(
            rates, _series(platform, "overhead_ms", name), "s" + style, label=f"overhead {name}"
        )
    if direct:
        direct_rates = [p["offered_per_s"] for p in direct]
        for name, style in _LINES[:2]:
            ax.plot(
                direct_rates,
                _series(direct, "latency_ms", name),
                "^" + style,
                label=f"direct {name}",
            )
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Full path: router → selection → executor → result")
    written.append(_save(fig, stem, "latency"))

    fig, ax = plt.subplots(figsize=(8, 5))
    roles = sorted({role for p in platform for role in p["cpu"]["ms_per_request"]})
    bottom = [0.0] * len(platform)
    positions = list(range(len(platform)))
    for role in roles:
        values = [p["cpu"]["ms_per_request"].get(role) or 0.0 for p in platform]
        ax.bar(positions, values, bottom=bottom, label=role)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(positions, [f"{r:g}" for r in rates])
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("CPU ms per answered request")
    ax.legend(fontsize=8)
    ax.set_title("CPU per request by process")
    written.append(_save(fig, stem, "cpu"))
    return written


def _save(fig: Any, stem: Path, name: str) -> Path:
    import matplotlib.pyplot as plt

    path = stem.with_name(f"{stem.name}-{name}.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
