"""Result files of the evaluations: CSV (optionally gzipped) and JSON, and small PNG plots.

matplotlib (the ``dev`` extra) is imported only when a plot is drawn, with the
non-interactive Agg backend, so nothing else here needs it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mulambda.harness.evaluation import ecdf

__all__ = [
    "Series",
    "config_of",
    "ecdf_grid",
    "flat_intervals",
    "line_panels",
    "write_csv",
    "write_json",
    "write_results",
]

Series = Mapping[str, Sequence[float]]
"""Label → values (one line of a plot per label)."""


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """``document`` as indented JSON; NaN and infinities become ``null``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(dict(document)), indent=2, sort_keys=False) + "\n")


def flat_intervals(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A summary entry with ``{"mean", "ci95", ...}`` values as ``key`` and ``key_ci95``
    columns (a CSV row)."""
    flat: dict[str, Any] = {}
    for key, value in entry.items():
        if isinstance(value, Mapping):
            flat[key] = value["mean"]
            flat[f"{key}_ci95"] = value["ci95"]
        else:
            flat[key] = value
    return flat


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as CSV (columns: every key, in first-seen order; missing ones empty);
    gzipped when the name ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    if rows:
        names = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(text, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    data = text.getvalue().encode()
    if path.suffix == ".gz":
        # mtime 0: the same rows give the same bytes (no churn in committed results).
        with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
            packed.write(data)
    else:
        path.write_bytes(data)


def config_of(options: Any) -> dict[str, Any]:
    """A dataclass of options as JSON-ready values (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}


def write_results(
    out_dir: Path,
    rows: Sequence[Any],
    table: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
) -> None:
    """An evaluation's files: ``requests.csv.gz`` (``rows``, dataclasses),
    ``summary.csv`` (``table`` flattened by :func:`flat_intervals`), ``summary.json``."""
    write_csv(out_dir / "requests.csv.gz", [asdict(r) for r in rows])
    write_csv(out_dir / "summary.csv", [flat_intervals(e) for e in table])
    write_json(out_dir / "summary.json", summary)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ecdf_grid(
    path: Path,
    panels: Mapping[tuple[str, str], Series],
    *,
    rows: Sequence[str],
    columns: Sequence[str],
    xlabel: str,
    title: str,
    log_x: bool = False,
    dpi: int = 55,
) -> None:
    """One ECDF panel per (row, column), one line per series label, as a small PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=(3.0 * len(columns), 2.3 * len(rows)),
        squeeze=False,
        sharey=True,
    )
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            ax = axes[i][j]
            for label, values in panels.get((row, column), {}).items():
                xs, ys = ecdf(values)
                if xs:
                    style = "--" if label == "oracle" else "-"
                    ax.step(xs, ys, where="post", label=label, linestyle=style, linewidth=1.2)
            if log_x:
                ax.set_xscale("log")
            ax.set_title(f"{row} / {column}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if i == len(rows) - 1:
                ax.set_xlabel(xlabel, fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=10, y=0.995)
    fig.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.97), ncol=len(labels) or 1,
        fontsize=8,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def line_panels(
    path: Path,
    x: Sequence[float],
    panels: Mapping[str, Series],
    *,
    xlabel: str,
    title: str,
    dpi: int = 60,
) -> None:
    """Side-by-side panels (title → series) of lines over a shared ``x``, as a small PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items(), strict=True):
        for label, values in series.items():
            style = "--" if label == "oracle" else "-"
            ax.plot(x[: len(values)], values, label=label, linestyle=style, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=10, y=0.995)
    fig.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.93),
        ncol=min(len(labels), 5) or 1, fontsize=8,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.78))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
