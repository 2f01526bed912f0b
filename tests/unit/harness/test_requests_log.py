"""The broker's request log counted per client and API, in a window."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from mulambda.harness.requests_log import count_requests, parse_line, per_second

pytestmark = pytest.mark.unit


def _line(at: str, client: str, api: str) -> str:
    header = {"requestApiKey": 1, "clientId": client, "requestApiKeyName": api}
    return f"{at} Completed request:" + json.dumps({"requestHeader": header, "totalTimeMs": 1})


def test_lines_are_counted_per_client_and_api_inside_the_window() -> None:
    lines = [
        _line("2026-12-07 10:00:00,900", "router-0", "FETCH"),  # before the window
        _line("2026-12-07 10:00:01,000", "router-0", "FETCH"),
        _line("2026-12-07 10:00:01,500", "router-0", "PRODUCE"),
        _line("2026-12-07 10:00:02,250", "router-0", "FETCH"),
        _line("2026-12-07 10:00:02,999", "selector-0", "FETCH"),
        _line("2026-12-07 10:00:03,000", "selector-0", "FETCH"),  # the end is open
        "2026-12-07 10:00:01,100 some other line",
        "garbage",
        "2026-12-07 10:00:01,100 Completed request:{not json",
    ]
    counts = count_requests(lines, datetime(2026, 12, 7, 10, 0, 1), datetime(2026, 12, 7, 10, 0, 3))
    assert counts == {
        ("router-0", "FETCH"): 2,
        ("router-0", "PRODUCE"): 1,
        ("selector-0", "FETCH"): 1,
    }
    assert per_second(counts, 2.0) == {
        "router-0": {"FETCH": 1.0, "PRODUCE": 0.5},
        "selector-0": {"FETCH": 0.5},
    }


def test_a_line_is_parsed_into_time_client_and_api() -> None:
    parsed = parse_line(_line("2026-12-07 10:00:01,042", "c", "METADATA"))
    assert parsed == (datetime(2026, 12, 7, 10, 0, 1, 42_000), "c", "METADATA")
    assert parse_line("2026-12-07 10:00:01,042 Completed request:{}") is None
