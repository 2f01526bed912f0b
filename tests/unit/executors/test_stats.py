"""The companion's reading of ``/mulambda/stats``: an executor's load is its model's."""

from __future__ import annotations

import pytest

from mulambda.executors.heartbeats import parse_stats

pytestmark = pytest.mark.unit

# One server serving three models, as up.sh's executor does.
DOCUMENT = {
    "in_flight": 9,
    "errors": 2,
    "requests": 50,
    "models": {
        "FastBad": [{"version": 1, "state": "AVAILABLE", "in_flight": 1}],
        "SlowGood": [
            {"version": 2, "state": "AVAILABLE", "in_flight": 5},
            {"version": 1, "state": "AVAILABLE", "in_flight": 3},
        ],
    },
}


def test_the_models_own_in_flight_count_not_the_servers() -> None:
    fast = parse_stats(DOCUMENT, "FastBad", None)
    assert fast is not None
    assert (fast.in_flight, fast.errors_total) == (1, 2)
    slow = parse_stats(DOCUMENT, "SlowGood", 2)
    assert slow is not None
    assert slow.in_flight == 5
    every_version = parse_stats(DOCUMENT, "SlowGood", None)
    assert every_version is not None
    assert every_version.in_flight == 8


@pytest.mark.parametrize(
    ("model", "version", "models"),
    [
        (None, None, DOCUMENT["models"]),  # no model named
        ("MidOK", None, DOCUMENT["models"]),  # not listed
        ("SlowGood", 7, DOCUMENT["models"]),  # no such version
        ("FastBad", None, {"FastBad": [{"version": 1, "in_flight": "3"}]}),  # junk count
        ("FastBad", None, ["FastBad"]),  # junk section
    ],
)
def test_the_servers_count_when_the_model_is_not_listed_readably(
    model: str | None, version: int | None, models: object
) -> None:
    load = parse_stats({**DOCUMENT, "models": models}, model, version)
    assert load is not None
    assert load.in_flight == 9
