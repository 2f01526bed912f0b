"""Synthetic model profiles: the delay and confidence formulas, and loading them."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from mulambda.emulator.profiles import (
    PROTOTYPE_PROFILES,
    SyntheticProfile,
    load_profiles,
    parse_profiles,
    profile_by_name,
)
from mulambda.errors import ConfigurationError

pytestmark = pytest.mark.unit

REFERENCE_YAML = Path("/work/shared/reference/prototype_evaluation.yaml")


class FixedJitter:
    """A UniformSource returning a fixed fraction of the interval, recording calls."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


def test_delay_matches_the_formula_term_by_term() -> None:
    p = profile_by_name("MidOK")  # D=75, alpha=0.020, beta=0.30, J=30
    low, high = FixedJitter(0.0), FixedJitter(1.0)
    assert p.delay_s(0, 0, low) == pytest.approx(0.075)
    assert p.delay_s(10, 0, low) == pytest.approx(0.075 + 10 * 0.020)
    assert p.delay_s(10, 3, low) == pytest.approx(0.075 + 0.2 + 3 * 0.30)
    assert p.delay_s(10, 3, high) == pytest.approx(0.075 + 0.2 + 0.9 + 0.030)
    # The jitter is drawn from [0, J/1000].
    assert high.calls == [(0.0, 0.030)]


def test_delay_jitter_stays_within_bounds_with_a_real_rng() -> None:
    p = profile_by_name("SlowGood")  # D=200, J=60
    rng = random.Random(7)
    delays = [p.delay_s(0, 0, rng) for _ in range(500)]
    assert min(delays) >= 0.200
    assert max(delays) <= 0.260
    # 500 draws spread over the interval, not a constant.
    assert max(delays) - min(delays) > 0.040


def test_time_scale_multiplies_the_whole_delay() -> None:
    p = profile_by_name("FastGood")
    full = p.delay_s(100, 2, FixedJitter(0.5))
    scaled = p.delay_s(100, 2, FixedJitter(0.5), time_scale=0.01)
    assert scaled == pytest.approx(full * 0.01)
    assert p.delay_s(100, 2, FixedJitter(0.5), time_scale=0.0) == 0.0


def test_delay_with_zero_jitter_does_not_draw() -> None:
    p = SyntheticProfile("NoJitter", D=5, alpha=0, beta=0, J=0, confidences=(1.0,), gamma=0)
    rng = FixedJitter(1.0)
    assert p.delay_s(0, 0, rng) == pytest.approx(0.005)
    assert rng.calls == []


@pytest.mark.parametrize(
    ("input_size", "in_flight", "time_scale"),
    [(-1, 0, 1.0), (0, -1, 1.0), (0, 0, -1.0), (0, 0, math.nan), (0, 0, math.inf)],
)
def test_delay_rejects_negative_arguments(
    input_size: int, in_flight: int, time_scale: float
) -> None:
    with pytest.raises(ConfigurationError):
        profile_by_name("FastBad").delay_s(
            input_size, in_flight, FixedJitter(0), time_scale=time_scale
        )


def test_confidence_is_entry_over_set_size_to_gamma() -> None:
    p = profile_by_name("FastOK")  # confidences [0.80, 0.50, 0.30], gamma 0.2
    assert p.confidence(0) == pytest.approx(0.80 / 3**0.2)
    assert p.confidence(1) == pytest.approx(0.50 / 3**0.2)
    assert p.confidence(2) == pytest.approx(0.30 / 3**0.2)
    assert profile_by_name("SlowGood").confidence(0) == pytest.approx(1.0 / 3**0.9)


@pytest.mark.parametrize("feature", [3, 4, 100, -1, -3])
def test_out_of_range_feature_gives_zero(feature: int) -> None:
    # Negative indexes are out of range too (no Python wrap-around).
    assert profile_by_name("FastOK").confidence(feature) == 0.0


def test_accuracy_is_the_first_confidence() -> None:
    assert [p.accuracy for p in PROTOTYPE_PROFILES] == [
        0.50,
        0.80,
        0.90,
        0.55,
        0.85,
        0.95,
        0.60,
        0.90,
        1.00,
    ]


def test_builtin_profiles_are_the_nine_of_the_prototype_in_order() -> None:
    assert [p.name for p in PROTOTYPE_PROFILES] == [
        "FastBad",
        "FastOK",
        "FastGood",
        "MidBad",
        "MidOK",
        "MidGood",
        "SlowBad",
        "SlowMid",
        "SlowGood",
    ]
    slow_mid = profile_by_name("SlowMid")
    assert (slow_mid.D, slow_mid.alpha, slow_mid.beta, slow_mid.J, slow_mid.gamma) == (
        175,
        0.070,
        0.35,
        60,
        0.8,
    )
    assert slow_mid.confidences == (0.90, 0.60, 0.40)


@pytest.mark.skipif(not REFERENCE_YAML.exists(), reason="shared reference YAML not present")
def test_reference_yaml_loads_to_the_builtin_profiles() -> None:
    assert load_profiles(REFERENCE_YAML) == PROTOTYPE_PROFILES


def test_yaml_round_trip_through_a_file(tmp_path: Path) -> None:
    text = (
        "executor_profiles:\n"
        "  - {name: A, D: 1, alpha: 0.5, beta: 0.25, J: 2, confidences: [0.9, 0.1], gamma: 1}\n"
        "  - {name: B, D: 3, alpha: 0, beta: 0, J: 0, confidences: [0.4], gamma: 0}\n"
        "scenarios: {}\n"
    )
    path = tmp_path / "eval.yaml"
    path.write_text(text)
    a, b = load_profiles(path)
    assert a == SyntheticProfile(
        "A", D=1, alpha=0.5, beta=0.25, J=2, confidences=(0.9, 0.1), gamma=1
    )
    assert b.name == "B"
    assert b.confidence(0) == pytest.approx(0.4)
    assert parse_profiles({"executor_profiles": [p.to_mapping() for p in PROTOTYPE_PROFILES]}) == (
        PROTOTYPE_PROFILES
    )


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"executor_profiles": []},
        {"executor_profiles": ["x"]},
        {"executor_profiles": [{"name": "A", "D": 1}]},
        {
            "executor_profiles": [
                {
                    "name": "A",
                    "D": 1,
                    "alpha": 0,
                    "beta": 0,
                    "J": 0,
                    "confidences": "0.5",
                    "gamma": 0,
                }
            ]
        },
        {
            "executor_profiles": [
                {
                    "name": "A",
                    "D": -1,
                    "alpha": 0,
                    "beta": 0,
                    "J": 0,
                    "confidences": [0.5],
                    "gamma": 0,
                }
            ]
        },
        {
            "executor_profiles": [
                {
                    "name": "A",
                    "D": 1,
                    "alpha": 0,
                    "beta": 0,
                    "J": 0,
                    "confidences": [1.5],
                    "gamma": 0,
                }
            ]
        },
        {
            "executor_profiles": [
                {"name": "A", "D": 1, "alpha": 0, "beta": 0, "J": 0, "confidences": [], "gamma": 0}
            ]
        },
        {
            "executor_profiles": [
                PROTOTYPE_PROFILES[0].to_mapping(),
                PROTOTYPE_PROFILES[0].to_mapping(),
            ]
        },
        {"executor_profiles": [{**PROTOTYPE_PROFILES[0].to_mapping(), "capacity": 0}]},
        {"executor_profiles": [{**PROTOTYPE_PROFILES[0].to_mapping(), "capacity": "many"}]},
    ],
)
def test_invalid_documents_are_configuration_errors(document: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        parse_profiles(document)


def test_load_profiles_reports_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_profiles(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("executor_profiles: [unclosed\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_profiles(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigurationError, match="mapping"):
        load_profiles(scalar)


def test_profile_by_name_unknown() -> None:
    with pytest.raises(ConfigurationError, match="Nope"):
        profile_by_name("Nope")


def test_mean_delay_is_the_formula_with_jitter_at_its_mean() -> None:
    p = profile_by_name("MidOK")  # D 75 ms, alpha 0.02, beta 0.3, J 30 ms
    assert p.mean_delay_s(10, 2, time_scale=0.5) == pytest.approx(
        (0.075 + 10 * 0.02 + 2 * 0.3 + 0.015) * 0.5
    )
    with pytest.raises(ConfigurationError):
        p.mean_delay_s(-1, 0)


def test_capacity_round_trips_and_defaults_to_unbounded() -> None:
    limited = SyntheticProfile(
        "L", D=1, alpha=0, beta=0, J=0, confidences=(0.5,), gamma=0, capacity=3
    )
    assert limited.to_mapping()["capacity"] == 3
    assert parse_profiles({"executor_profiles": [limited.to_mapping()]}) == (limited,)
    assert "capacity" not in PROTOTYPE_PROFILES[0].to_mapping()
    assert PROTOTYPE_PROFILES[0].capacity is None
