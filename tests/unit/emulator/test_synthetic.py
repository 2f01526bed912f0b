"""SyntheticModel without HTTP: construction rules, input sizes, delays and outputs."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from typing import Any

import pytest

from mulambda.emulator.profiles import PROTOTYPE_PROFILES, profile_by_name
from mulambda.emulator.served import DEFAULT_SIGNATURE
from mulambda.emulator.synthetic import SyntheticModel, synthetic_models
from mulambda.errors import ConfigurationError
from mulambda.protocols.tfserving import BadRequest
from mulambda.wire.events import ModelState

pytestmark = pytest.mark.unit

FAST_BAD = profile_by_name("FastBad")
SCALE = 0.001
FIXED = random.Random()  # jitter-free profiles never draw from it


class RecordingSleep:
    """A ``sleep`` that records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def model(sleep: RecordingSleep, seed: int = 7) -> SyntheticModel:
    return SyntheticModel(FAST_BAD, 1, SCALE, seed=seed, sleep=sleep)


def expected_delay(input_size: int, seed: int = 7) -> float:
    return FAST_BAD.delay_s(input_size, 0, random.Random(seed), time_scale=SCALE)


def test_synthetic_model_rejects_unknown_verbs_and_bad_scale() -> None:
    with pytest.raises(ConfigurationError):
        SyntheticModel(FAST_BAD, verbs=("predict", "explain"))
    with pytest.raises(ConfigurationError):
        SyntheticModel(FAST_BAD, time_scale=-1)
    with pytest.raises(ConfigurationError):
        SyntheticModel(FAST_BAD, version=-1)


async def test_synthetic_models_seeded_runs_repeat() -> None:
    first = synthetic_models(PROTOTYPE_PROFILES[:2], seed=42)
    second = synthetic_models(PROTOTYPE_PROFILES[:2], seed=42)
    for name in first:
        a, b = first[name], second[name]
        assert isinstance(a, SyntheticModel)
        assert isinstance(b, SyntheticModel)
        assert [a.rng.random() for _ in range(3)] == [b.rng.random() for _ in range(3)]


def test_synthetic_models_refuse_duplicate_profile_names() -> None:
    with pytest.raises(ConfigurationError, match="duplicate profile name"):
        synthetic_models([FAST_BAD, FAST_BAD])


@pytest.mark.parametrize(
    ("payload", "row", "size", "features"),
    [
        ([0, 1, 2], True, 3, [0, 1, 2]),
        ([{"feature": 1, "data": [1, 2, 3, 4]}, [5, 6]], True, 6, [1, 0]),
        ([{}], True, 1, [0]),
        (4, False, 1, [4]),
        ({"feature": [1, 2], "data": [[1, 2], [3]]}, False, 3, [1, 2]),
        ({"feature": [3, 4]}, False, 2, [3, 4]),
        ({"feature": 1, "data": [0.5] * 5}, False, 5, [1]),
    ],
)
async def test_input_size_drives_the_delay_and_features_the_confidence(
    payload: Any, row: bool, size: int, features: list[int]
) -> None:
    sleep = RecordingSleep()
    answer = await model(sleep).predict(DEFAULT_SIGNATURE, payload, row=row)
    assert sleep.delays == [expected_delay(size)]
    confidences = [FAST_BAD.confidence(f) for f in features]
    if row:
        assert answer == [{"confidence": c, "model": "FastBad"} for c in confidences]
    else:
        assert answer == {"confidence": confidences, "model": ["FastBad"] * len(features)}


async def test_classify_and_regress_merge_context_into_examples() -> None:
    sleep = RecordingSleep()
    synthetic = model(sleep)
    examples = [{"feature": [2]}, {"data": [1, 2, 3]}]
    regressed = await synthetic.regress(DEFAULT_SIGNATURE, examples, {"feature": 1})
    assert regressed == [FAST_BAD.confidence(2), FAST_BAD.confidence(1)]
    classified = await synthetic.classify(DEFAULT_SIGNATURE, examples, {})
    assert classified == [
        [["FastBad", FAST_BAD.confidence(2)]],
        [["FastBad", FAST_BAD.confidence(0)]],
    ]
    assert len(sleep.delays) == 2


@pytest.mark.parametrize(
    ("payload", "row", "message"),
    [
        (["x"], True, 'JSON Value: "x" Type: String is not of expected type: int64'),
        ([{"feature": True}], True, "Type: True is not of expected type: int64"),
        ([{"data": 3}], True, "'data' of item 0 of 'instances' must be a list, got Number"),
        ({"other": 1}, False, "Missing named input: feature in 'inputs' object."),
        ({"feature": [1, 2], "data": [[1]]}, False, "must be a list of 2 lists"),
    ],
)
async def test_malformed_instances_are_bad_requests(payload: Any, row: bool, message: str) -> None:
    sleep = RecordingSleep()
    with pytest.raises(BadRequest, match=re.escape(message)):
        await model(sleep).predict(DEFAULT_SIGNATURE, payload, row=row)
    assert sleep.delays == []


async def test_load_simulates_a_failed_load() -> None:
    broken = SyntheticModel(FAST_BAD, load_error="disk on fire")
    await broken.load()
    status = broken.status()
    assert (status.state, status.error_code, status.error_message) == (
        ModelState.END,
        "UNKNOWN",
        "disk on fire",
    )
    healthy = SyntheticModel(FAST_BAD)
    await healthy.load()
    assert healthy.state is ModelState.AVAILABLE
    assert set(healthy.signature_defs()) == {DEFAULT_SIGNATURE}


class GatedSleep:
    """A ``sleep`` that blocks until released, recording the delays asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.gate = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await self.gate.wait()


async def test_capacity_serves_that_many_at_once_and_queues_the_rest() -> None:
    profile = dataclasses.replace(FAST_BAD, J=0, capacity=2)
    sleep = GatedSleep()
    limited = SyntheticModel(profile, 1, 1.0, sleep=sleep)
    calls = [
        asyncio.create_task(limited.predict(DEFAULT_SIGNATURE, [0], row=True)) for _ in range(5)
    ]
    for _ in range(5):
        await asyncio.sleep(0)
    assert (limited.serving, limited.waiting) == (2, 3)
    # The two in service got in_flight 0 and 1; the queued ones have no delay yet.
    assert sleep.delays == [profile.delay_s(1, 0, random.Random()), profile.delay_s(1, 1, FIXED)]
    sleep.gate.set()
    answers = await asyncio.gather(*calls)
    assert answers == [[{"confidence": profile.confidence(0), "model": "FastBad"}]] * 5
    assert (limited.serving, limited.waiting, len(sleep.delays)) == (0, 0, 5)


async def test_without_capacity_every_request_is_served_at_once() -> None:
    sleep = GatedSleep()
    unlimited = SyntheticModel(FAST_BAD, 1, 1.0, seed=1, sleep=sleep)
    calls = [
        asyncio.create_task(unlimited.predict(DEFAULT_SIGNATURE, [0], row=True)) for _ in range(5)
    ]
    for _ in range(5):
        await asyncio.sleep(0)
    assert (unlimited.serving, unlimited.waiting, len(sleep.delays)) == (5, 0, 5)
    sleep.gate.set()
    await asyncio.gather(*calls)
