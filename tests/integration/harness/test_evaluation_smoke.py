"""Smoke runs of the evaluation scripts over the real servers: a tiny configuration each,
checking the files they write and their counts (never their timings)."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Infra

ROOT = Path(__file__).resolve().parents[3]


def _run(script: str, infra: Infra, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **infra.env(), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--no-progress",
         "--out-dir", str(out)],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as handle:
        return list(csv.DictReader(handle))


def test_replay_smoke_writes_scored_requests_summary_and_plots(
    infra: Infra, tmp_path: Path
) -> None:
    done = _run("bench_replay.py", infra, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(tmp_path / "requests.csv.gz")
    # --smoke: 1 placement x 2 use cases x 2 policies x 2 repeats x 6 requests.
    assert len(rows) == 48
    assert {(r["usecase"], r["policy"]) for r in rows} == {
        (u, p) for u in ("scp", "mda") for p in ("weighted", "random")
    }
    answered = [r for r in rows if r["status"] == "ok"]
    assert answered, "no request was answered"
    for r in answered:
        assert r["model"]
        assert float(r["rtt_ms"]) > 0
        assert 0 <= float(r["utility"]) <= 1
        assert 0 <= float(r["oracle_utility"]) <= 1
        assert r["oracle_model"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["cells"]) == 4
    assert set(summary["pct_of_oracle_average"]) == {"weighted", "random"}
    assert all(c["utility"]["repeats"] == 2 for c in summary["cells"])
    assert sum(summary["weighted_vs"]["random"].values()) == 2
    with (tmp_path / "summary.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    for png in ("rtt_ecdf.png", "accuracy_ecdf.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overload_smoke_writes_slo_figures_for_policies_singles_and_oracle(
    infra: Infra, tmp_path: Path
) -> None:
    done = _run("bench_overload.py", infra, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(tmp_path / "requests.csv.gz")
    labels = ["weighted", "adaptive", "single:Mid", "oracle"]
    per_label = {label: [r for r in rows if r["policy"] == label] for label in labels}
    # --smoke: a 2 s ramp from 3 to 10 requests/s is 13 requests, once per label.
    assert {label: len(v) for label, v in per_label.items()} == dict.fromkeys(labels, 13)
    assert len(rows) == 52
    assert {r["model"] for r in per_label["single:Mid"] if r["status"] == "ok"} <= {"Mid"}
    for r in rows:
        if r["attained"] == "True":
            assert r["status"] == "ok"
            assert float(r["accuracy"]) >= 0.75
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [e["policy"] for e in summary["policies"]] == labels
    assert summary["best_single"] == "single:Mid"
    assert set(summary["violations"]) >= {"weighted_violations", "adaptive_violations"}
    assert (tmp_path / "overload.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
