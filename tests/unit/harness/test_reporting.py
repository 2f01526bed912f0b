"""Result files: CSV columns and gzip, JSON without NaN, flattened intervals."""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path
from typing import Any

import pytest

from mulambda.harness.reporting import flat_intervals, write_csv, write_json

pytestmark = pytest.mark.unit


def test_csv_takes_every_key_and_gzips_repeatably(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"a": 1, "b": 0.123456789}, {"a": 2, "c": "x"}]
    write_csv(tmp_path / "one.csv.gz", rows)
    first = (tmp_path / "one.csv.gz").read_bytes()
    write_csv(tmp_path / "one.csv.gz", rows)
    assert (tmp_path / "one.csv.gz").read_bytes() == first  # no timestamp in the gzip
    with gzip.open(tmp_path / "one.csv.gz", "rt", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert read == [{"a": "1", "b": "0.123457", "c": ""}, {"a": "2", "b": "", "c": "x"}]
    write_csv(tmp_path / "plain.csv", rows)
    assert (tmp_path / "plain.csv").read_text().splitlines()[0] == "a,b,c"


def test_json_writes_nan_and_infinity_as_null(tmp_path: Path) -> None:
    write_json(tmp_path / "s.json", {"x": math.nan, "y": [math.inf, 1.5], "z": {"w": -math.inf}})
    assert json.loads((tmp_path / "s.json").read_text()) == {
        "x": None,
        "y": [None, 1.5],
        "z": {"w": None},
    }


def test_flat_intervals_spreads_means_and_half_widths() -> None:
    entry = {"policy": "p", "utility": {"mean": 0.5, "ci95": 0.1, "repeats": 3}}
    assert flat_intervals(entry) == {"policy": "p", "utility": 0.5, "utility_ci95": 0.1}
