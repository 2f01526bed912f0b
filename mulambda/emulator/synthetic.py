"""The prototype's synthetic models served over TF Serving's REST API.

:class:`SyntheticModel` answers after the delay its
:class:`~mulambda.emulator.profiles.SyntheticProfile` computes (input size, requests in
flight, jitter) with the profile's confidence per instance; :func:`synthetic_models`
builds one per profile. The delay and confidence formulas live in ``profiles.py``; this
module reads requests into ``(feature, input size)`` pairs and sleeps.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

from mulambda.emulator.payloads import is_b64, json_snippet, json_type_name
from mulambda.emulator.profiles import SyntheticProfile
from mulambda.emulator.served import DEFAULT_SIGNATURE, VERBS, ServedModel, tensor_info
from mulambda.errors import ConfigurationError
from mulambda.protocols.tfserving import BadRequest
from mulambda.wire.events import ModelState

__all__ = ["Sleep", "SyntheticModel", "synthetic_models"]

Sleep = Callable[[float], Awaitable[Any]]
"""How a synthetic model waits out its delay (``asyncio.sleep``; tests inject gates)."""


class SyntheticModel(ServedModel):
    """The prototype's dummy model: answers after ``profile.delay_s`` with confidences.

    Request shapes accepted (lenient, since these models stand in for any trait):

    * an instance is an integer feature, an object ``{"feature": int, "data": [...]}``
      (both keys optional; feature defaults to 0), or a bare list (data, feature 0);
    * columnar ``inputs`` is an int, a list of instances, or ``{"feature": int | [int],
      "data": [...] | [[...], ...]}``.

    ``input_size`` of the delay formula is the sum over instances of ``len(data)`` when
    an instance has a ``data`` list (or is one), else 1 — so a request of N bare features
    counts N elements, and the prototype's ``{"feature": f, "inputs": [...]}`` maps onto
    one instance with ``data``. The delay is computed once per request with ``in_flight``
    = this model's requests already being served, then slept (``sleep`` is injectable).
    With ``profile.capacity`` at most that many are served at once; the others wait in
    FIFO order (:attr:`waiting`) and get their delay when their turn comes, so under
    overload the latency grows with the queue as on a real server with a worker pool.

    Outputs: ``confidence`` (per instance) and ``model`` (the profile name), so predict
    answers ``[{"confidence": c, "model": name}, ...]`` (row) or
    ``{"confidence": [...], "model": [...]}`` (columnar). Classify and regress are
    implemented trivially on ``examples`` (``feature``/``data`` keys, ``context`` as
    defaults): regress gives the confidence, classify one class ``[[name, confidence]]``.
    Drop verbs from ``verbs`` to get 501 answers. ``load_delay_s``/``load_error`` simulate
    LOADING and a failed load (END) for status tests.
    """

    def __init__(
        self,
        profile: SyntheticProfile,
        version: int = 1,
        time_scale: float = 1.0,
        *,
        seed: int | None = None,
        rng: random.Random | None = None,
        verbs: Collection[str] = VERBS,
        load_delay_s: float = 0.0,
        load_error: str | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(version)
        if not math.isfinite(time_scale) or time_scale < 0:
            raise ConfigurationError(f"time_scale must be finite and >= 0, not {time_scale}")
        unknown = set(verbs) - set(VERBS)
        if unknown:
            raise ConfigurationError(f"unknown verbs {sorted(unknown)}")
        self.profile = profile
        self.time_scale = time_scale
        # The jitter only shapes simulated latency; nothing security-relevant.
        self.rng = rng if rng is not None else random.Random(seed)  # noqa: S311
        self.verbs = frozenset(verbs)
        self.load_delay_s = load_delay_s
        self.load_error = load_error
        self._sleep = sleep
        self._active = 0
        self._waiting = 0
        self._slots = asyncio.Semaphore(profile.capacity) if profile.capacity is not None else None

    @property
    def name(self) -> str:
        """The profile's name."""
        return self.profile.name

    @property
    def serving(self) -> int:
        """Requests being served now (sleeping their delay)."""
        return self._active

    @property
    def waiting(self) -> int:
        """Requests waiting for a free slot (only with a ``capacity``)."""
        return self._waiting

    async def load(self) -> None:
        """Sleep ``load_delay_s`` in LOADING, then AVAILABLE (or END with ``load_error``)."""
        self.state = ModelState.LOADING
        if self.load_delay_s > 0:
            await asyncio.sleep(self.load_delay_s)
        if self.load_error is not None:
            self.state = ModelState.END
            self.error_code = "UNKNOWN"
            self.error_message = self.load_error
        else:
            self.state = ModelState.AVAILABLE

    def signature_defs(self) -> dict[str, Any]:
        """One ``serving_default`` signature: feature/data in, confidence/model out."""
        return {
            DEFAULT_SIGNATURE: {
                "inputs": {
                    "feature": tensor_info("DT_INT64", [-1], "feature:0"),
                    "data": tensor_info("DT_FLOAT", [-1, -1], "data:0"),
                },
                "outputs": {
                    "confidence": tensor_info("DT_FLOAT", [-1], "confidence:0"),
                    "model": tensor_info("DT_STRING", [-1], "model:0"),
                },
                "method_name": "tensorflow/serving/predict",
                "defaults": {},
            }
        }

    async def predict(self, signature_name: str, payload: Any, *, row: bool) -> Any:
        """Sleep the profile's delay and return one confidence per instance."""
        instances = _synthetic_instances(payload, row=row)
        confidences = await self._serve(instances)
        if row:
            return [{"confidence": c, "model": self.name} for c in confidences]
        return {"confidence": confidences, "model": [self.name] * len(confidences)}

    async def classify(
        self, signature_name: str, examples: list[dict[str, Any]], context: dict[str, Any]
    ) -> list[Any]:
        """One class per example, labelled with the model name, scored by confidence."""
        confidences = await self._serve(_synthetic_examples(examples, context))
        return [[[self.name, c]] for c in confidences]

    async def regress(
        self, signature_name: str, examples: list[dict[str, Any]], context: dict[str, Any]
    ) -> list[Any]:
        """The confidence per example."""
        return await self._serve(_synthetic_examples(examples, context))

    async def _serve(self, instances: list[tuple[int, int]]) -> list[float]:
        if self._slots is None:
            await self._serve_now(instances)
        else:
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
            try:
                await self._serve_now(instances)
            finally:
                self._slots.release()
        return [self.profile.confidence(feature) for feature, _ in instances]

    async def _serve_now(self, instances: list[tuple[int, int]]) -> None:
        input_size = sum(size for _, size in instances)
        # Read before counting ourselves, as the prototype did.
        delay = self.profile.delay_s(input_size, self._active, self.rng, time_scale=self.time_scale)
        self._active += 1
        try:
            await self._sleep(delay)
        finally:
            self._active -= 1


def _feature(value: Any, where: str) -> int:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # tf.Example style: features are lists
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            f"JSON Value: {json_snippet(value)} Type: {json_type_name(value)} is not of expected "
            f"type: int64 ({where})"
        )
    return value


def _data_size(value: Any, where: str) -> int:
    if value is None:
        return 1
    if not isinstance(value, list):
        raise BadRequest(f"'data' of {where} must be a list, got {json_type_name(value)}")
    return len(value)


def _synthetic_instance(value: Any, where: str) -> tuple[int, int]:
    """(feature, input elements) of one instance."""
    if isinstance(value, list):
        return 0, len(value)
    if isinstance(value, dict) and not is_b64(value):
        return _feature(value.get("feature", 0), where), _data_size(value.get("data"), where)
    return _feature(value, where), 1


def _synthetic_instances(payload: Any, *, row: bool) -> list[tuple[int, int]]:
    if row:
        return [_synthetic_instance(v, f"item {i} of 'instances'") for i, v in enumerate(payload)]
    if isinstance(payload, list):
        return [_synthetic_instance(v, f"item {i} of 'inputs'") for i, v in enumerate(payload)]
    if not isinstance(payload, dict) or is_b64(payload):
        return [_synthetic_instance(payload, "'inputs'")]
    if "feature" not in payload and "data" not in payload:
        raise BadRequest("Missing named input: feature in 'inputs' object.")
    features = payload.get("feature", 0)
    data = payload.get("data")
    if not isinstance(features, list):
        return [(_feature(features, "'inputs'"), _data_size(data, "'inputs'"))]
    if data is None:
        return [(_feature(f, f"'inputs' feature {i}"), 1) for i, f in enumerate(features)]
    if not isinstance(data, list) or len(data) != len(features):
        raise BadRequest(f"'inputs' data must be a list of {len(features)} lists, one per feature")
    return [
        (_feature(f, f"'inputs' feature {i}"), _data_size(d, f"'inputs' data {i}"))
        for i, (f, d) in enumerate(zip(features, data, strict=True))
    ]


def _synthetic_examples(
    examples: list[dict[str, Any]], context: dict[str, Any]
) -> list[tuple[int, int]]:
    result = []
    for i, example in enumerate(examples):
        merged = {**context, **example}
        where = f"example {i}"
        result.append(
            (_feature(merged.get("feature", 0), where), _data_size(merged.get("data"), where))
        )
    return result


def synthetic_models(
    profiles: Iterable[SyntheticProfile],
    *,
    time_scale: float = 1.0,
    seed: int | None = None,
    version: int = 1,
) -> dict[str, ServedModel]:
    """One :class:`SyntheticModel` per profile, keyed by profile name.

    With ``seed``, model ``i`` gets ``random.Random(seed + i)`` so runs repeat.
    """
    models: dict[str, ServedModel] = {}
    for i, profile in enumerate(profiles):
        if profile.name in models:
            raise ConfigurationError(f"duplicate profile name {profile.name!r}")
        models[profile.name] = SyntheticModel(
            profile,
            version,
            time_scale,
            seed=None if seed is None else seed + i,
        )
    return models
