"""A local model executor speaking TensorFlow Serving's REST API (``mulambda executor serve``).

:class:`ExecutorServer` answers the REST contract of ``tfserving_rest.md`` the way TF
Serving's REST handler does, for models that are either synthetic (the prototype's dummy
models, :class:`SyntheticModel`) or real TensorFlow SavedModels (:class:`SavedModelModel`,
needs the ``tensorflow`` extra). Production executors run the real ``tensorflow/serving``
image; this server stands in for it in tests, benchmarks and laptops, so a router or
companion that works against it works against TF Serving.

Served URLs (matched case-insensitively on the raw path, names and labels then
percent-decoded, versions ASCII digits only)::

    GET  /v1/models/{name}[/versions/{n}|/labels/{label}]            status
    GET  /v1/models/{name}[/versions/{n}|/labels/{label}]/metadata   metadata
    POST /v1/models/{name}[/versions/{n}|/labels/{label}]:predict|:classify|:regress

Errors are ``{"error": "<message>"}`` with TF Serving's status codes and, where TF Serving
has a fixed wording, its messages (e.g. ``Malformed request: POST /v1/...``, ``Missing
'inputs' or 'instances' key``, ``Servable not found for request: Latest(name)``).

Beyond TF Serving, ``GET /mulambda/stats`` returns ``{"in_flight", "errors", "requests",
"models"}`` for local runs. Real TF Serving has no such endpoint, so nothing may *need* it:
a companion uses it only to enrich heartbeats when it is there.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import logging
import math
import os
import random
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote

import orjson
from aiohttp import web

from mulambda.emulator.profiles import SyntheticProfile
from mulambda.errors import ConfigurationError
from mulambda.executors.tfserving import (
    BadRequest,
    DeadlineExceeded,
    ExecutorInternalError,
    ExecutorUnavailable,
    ModelNotFound,
    ModelVersionStatus,
    ResourceExhausted,
    TFServingError,
    Unimplemented,
    decode_json,
    encode_json,
)
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.events import InferenceVerb, ModelState

__all__ = [
    "DEFAULT_SIGNATURE",
    "STATS_PATH",
    "VERBS",
    "ExecutorServer",
    "SavedModelModel",
    "ServedModel",
    "SyntheticModel",
    "saved_model_versions",
    "synthetic_models",
]

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE: Final = "serving_default"
"""Signature used when a request names none (or an empty one), as in TF Serving."""

VERBS: Final[tuple[InferenceVerb, ...]] = ("predict", "classify", "regress")
"""The inference verbs of the REST API."""

STATS_PATH: Final = "/mulambda/stats"
"""MuLambda's own counters endpoint (not part of TF Serving)."""

_INT64_MAX: Final = 2**63 - 1

# TF Serving's own URL grammar (http_rest_api_util.cc), with ASCII digits for versions.
_V1_RE: Final = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_PREDICT_RE: Final = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_RE: Final = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?",
    re.IGNORECASE,
)


def _snippet(value: Any, limit: int = 200) -> str:
    """A JSON rendering of ``value`` for error messages, cut to ``limit`` characters."""
    try:
        text = encode_json(value).decode()
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value: Any) -> str:
    """RapidJSON's type name of a decoded value (as TF Serving's messages use them)."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _tensor_info(dtype: str, dims: Sequence[int] | None, name: str) -> dict[str, Any]:
    """A TensorInfo as TF Serving's metadata JSON writes it (``dims`` None: unknown rank)."""
    shape: dict[str, Any] = (
        {"dim": [], "unknown_rank": True}
        if dims is None
        else {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}
    )
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


# --- served models -------------------------------------------------------------------


class ServedModel(abc.ABC):
    """One version of one model an :class:`ExecutorServer` serves.

    Subclasses implement :meth:`predict` (and :meth:`classify`/:meth:`regress` when they
    list them in ``verbs``), :meth:`signature_defs` and, when loading takes work,
    :meth:`load`. Models raise :class:`mulambda.executors.tfserving.TFServingError` subclasses; the
    server turns them into ``{"error": ...}`` answers with their ``status``.

    ``state``/``error_code``/``error_message`` feed the status endpoint; ``in_flight`` is
    kept by the server (requests of this version being served now).
    """

    verbs: frozenset[str] = frozenset({"predict"})
    """Verbs this model implements; the others answer 501."""

    def __init__(self, version: int) -> None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ConfigurationError(f"model version must be an integer >= 0, not {version!r}")
        self.version = version
        self.state = ModelState.START
        self.error_code = "OK"
        self.error_message = ""
        self.in_flight = 0

    async def load(self) -> None:
        """Make the model servable; sets ``state`` (AVAILABLE, or END with a message)."""
        self.state = ModelState.AVAILABLE

    async def unload(self) -> None:
        """Release the model (server stop)."""
        self.state = ModelState.END

    def status(self) -> ModelVersionStatus:
        """This version's entry of the status endpoint."""
        return ModelVersionStatus(
            version=self.version,
            state=self.state,
            error_code=self.error_code,
            error_message=self.error_message,
        )

    @abc.abstractmethod
    def signature_defs(self) -> dict[str, Any]:
        """Signature name → SignatureDef JSON (``inputs``, ``outputs``, ``method_name``)."""

    def has_signature(self, name: str) -> bool:
        """Whether ``name`` is one of the model's signatures."""
        return name in self.signature_defs()

    @abc.abstractmethod
    async def predict(self, signature_name: str, payload: Any, *, row: bool) -> Any:
        """Value of ``predictions`` (``row``: payload is the instances list) or ``outputs``
        (columnar: payload is the ``inputs`` value)."""

    async def classify(
        self, signature_name: str, examples: list[dict[str, Any]], context: dict[str, Any]
    ) -> list[Any]:
        """``results`` of a classify request: per example a list of ``[label, score]``."""
        raise Unimplemented(f"{type(self).__name__} does not implement classify")

    async def regress(
        self, signature_name: str, examples: list[dict[str, Any]], context: dict[str, Any]
    ) -> list[Any]:
        """``results`` of a regress request: one value per example."""
        raise Unimplemented(f"{type(self).__name__} does not implement regress")


Sleep = Callable[[float], Awaitable[Any]]


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

    @property
    def name(self) -> str:
        """The profile's name."""
        return self.profile.name

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
                    "feature": _tensor_info("DT_INT64", [-1], "feature:0"),
                    "data": _tensor_info("DT_FLOAT", [-1, -1], "data:0"),
                },
                "outputs": {
                    "confidence": _tensor_info("DT_FLOAT", [-1], "confidence:0"),
                    "model": _tensor_info("DT_STRING", [-1], "model:0"),
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
        input_size = sum(size for _, size in instances)
        # Read before counting ourselves, as the prototype did.
        delay = self.profile.delay_s(input_size, self._active, self.rng, time_scale=self.time_scale)
        self._active += 1
        try:
            await self._sleep(delay)
        finally:
            self._active -= 1
        return [self.profile.confidence(feature) for feature, _ in instances]


def _feature(value: Any, where: str) -> int:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # tf.Example style: features are lists
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            f"JSON Value: {_snippet(value)} Type: {_json_type(value)} is not of expected "
            f"type: int64 ({where})"
        )
    return value


def _data_size(value: Any, where: str) -> int:
    if value is None:
        return 1
    if not isinstance(value, list):
        raise BadRequest(f"'data' of {where} must be a list, got {_json_type(value)}")
    return len(value)


def _synthetic_instance(value: Any, where: str) -> tuple[int, int]:
    """(feature, input elements) of one instance."""
    if isinstance(value, list):
        return 0, len(value)
    if isinstance(value, dict) and not _is_b64(value):
        return _feature(value.get("feature", 0), where), _data_size(value.get("data"), where)
    return _feature(value, where), 1


def _synthetic_instances(payload: Any, *, row: bool) -> list[tuple[int, int]]:
    if row:
        return [_synthetic_instance(v, f"item {i} of 'instances'") for i, v in enumerate(payload)]
    if isinstance(payload, list):
        return [_synthetic_instance(v, f"item {i} of 'inputs'") for i, v in enumerate(payload)]
    if not isinstance(payload, dict) or _is_b64(payload):
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


# --- SavedModel ----------------------------------------------------------------------


class SavedModelModel(ServedModel):
    """A TensorFlow SavedModel served through its signatures (``serving_default`` first).

    TensorFlow is imported on :meth:`load` only, so this module works without it; when
    it is missing the version ends in END with a message saying so. Loading and every
    call run in a worker thread, so the event loop keeps answering status probes.

    Predict follows TF Serving's JSON mapping: row ``instances`` are stacked along a new
    0th dimension (a plain list when the signature has one input, objects keyed by input
    name otherwise); columnar ``inputs`` is a value (one input) or an object of named
    inputs. ``{"b64": ...}`` is decoded for string inputs; string outputs whose name ends
    in ``_bytes`` are sent back base64-encoded. One output comes unnamed, several come
    as objects (row) or an object (columnar). Float32 outputs are written in their
    shortest round-trip form, as TF Serving does. Classify/regress are not implemented
    (501). Metadata tensor names are approximations of TF Serving's.
    """

    def __init__(self, path: str | os.PathLike[str], version: int = 1) -> None:
        super().__init__(version)
        self.path = os.fspath(path)
        self._loaded: Any = None
        self._tf: Any = None
        self._functions: dict[str, Any] = {}
        self._input_specs: dict[str, dict[str, Any]] = {}
        self._signature_defs: dict[str, Any] = {}

    async def load(self) -> None:
        """Load the SavedModel in a thread: LOADING, then AVAILABLE or END."""
        self.state = ModelState.LOADING
        try:
            await asyncio.to_thread(self._load_sync)
        except Exception as exc:  # why: any load failure is reported, as TF Serving does
            log.warning("loading SavedModel %s failed: %s", self.path, exc)
            self.state = ModelState.END
            self.error_code = "UNKNOWN"
            self.error_message = f"Loading SavedModel from {self.path} failed: {exc}"
        else:
            self.state = ModelState.AVAILABLE

    async def unload(self) -> None:
        """Drop the loaded objects."""
        self._loaded = None
        self._functions = {}
        self.state = ModelState.END

    def _load_sync(self) -> None:
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise RuntimeError(
                "tensorflow is not installed (install the 'tensorflow' extra)"
            ) from exc
        from tensorflow.core.framework import types_pb2

        loaded = tf.saved_model.load(self.path)
        functions = dict(loaded.signatures)
        if not functions:
            raise RuntimeError("the SavedModel has no serving signatures")
        input_specs: dict[str, dict[str, Any]] = {}
        defs: dict[str, Any] = {}

        def dtype_name(dtype: Any) -> str:
            return str(types_pb2.DataType.Name(dtype.as_datatype_enum))

        def dims(shape: Any) -> list[int] | None:
            if shape.rank is None:
                return None
            return [-1 if d is None else int(d) for d in shape.as_list()]

        for name, fn in functions.items():
            _, kwargs = fn.structured_input_signature
            input_specs[name] = dict(kwargs)
            outputs = fn.structured_outputs
            defs[name] = {
                "inputs": {
                    key: _tensor_info(dtype_name(spec.dtype), dims(spec.shape), f"{name}_{key}:0")
                    for key, spec in sorted(kwargs.items())
                },
                "outputs": {
                    key: _tensor_info(
                        dtype_name(spec.dtype), dims(spec.shape), f"StatefulPartitionedCall:{i}"
                    )
                    for i, (key, spec) in enumerate(sorted(outputs.items()))
                },
                "method_name": "tensorflow/serving/predict",
                "defaults": {},
            }
        self._tf = tf
        self._loaded = loaded
        self._functions = functions
        self._input_specs = input_specs
        self._signature_defs = defs

    def signature_defs(self) -> dict[str, Any]:
        """The loaded signatures as TF Serving's metadata describes them."""
        return self._signature_defs

    async def predict(self, signature_name: str, payload: Any, *, row: bool) -> Any:
        """Run the signature on the decoded tensors in a worker thread."""
        return await asyncio.to_thread(self._predict_sync, signature_name, payload, row)

    def _predict_sync(self, signature_name: str, payload: Any, row: bool) -> Any:
        tf = self._tf
        fn = self._functions.get(signature_name)
        if tf is None or fn is None:
            raise ModelNotFound(f"SavedModel {self.path} is not loaded")
        specs = self._input_specs[signature_name]
        feeds = _row_feeds(payload, specs) if row else _columnar_feeds(payload, specs)
        tensors: dict[str, Any] = {}
        for name, value in feeds.items():
            spec = specs[name]
            if spec.dtype == tf.string:
                value = _decode_b64(value, name)
            try:
                tensor = tf.convert_to_tensor(value, dtype=spec.dtype)
            except (TypeError, ValueError) as exc:
                raise BadRequest(
                    f"JSON Value: {_snippet(value)} for input '{name}' is not of expected "
                    f"type: {spec.dtype.name} ({exc})"
                ) from None
            if not spec.shape.is_compatible_with(tensor.shape):
                raise BadRequest(
                    f"input '{name}' has shape {tensor.shape.as_list()}, signature "
                    f"'{signature_name}' expects {spec.shape}"
                )
            tensors[name] = tensor
        try:
            outputs = fn(**tensors)
        except (tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError) as exc:
            raise BadRequest(exc.message) from None
        except tf.errors.OutOfRangeError as exc:
            raise BadRequest(exc.message) from None
        except tf.errors.ResourceExhaustedError as exc:
            raise ResourceExhausted(exc.message) from None
        except tf.errors.UnimplementedError as exc:
            raise Unimplemented(exc.message) from None
        except tf.errors.DeadlineExceededError as exc:
            raise DeadlineExceeded(exc.message) from None
        except tf.errors.UnavailableError as exc:
            raise ExecutorUnavailable(exc.message) from None
        except tf.errors.OpError as exc:
            raise ExecutorInternalError(exc.message) from None
        except (TypeError, ValueError) as exc:
            raise BadRequest(str(exc)) from None
        arrays = {name: tensor.numpy() for name, tensor in outputs.items()}
        return _outputs_json(arrays, row=row)


def saved_model_versions(
    base_path: str | os.PathLike[str], *, latest_only: bool = True
) -> list[SavedModelModel]:
    """SavedModels under a TF Serving ``--model_base_path``: one per numeric subfolder.

    ``latest_only`` mirrors TF Serving's default version policy (serve the highest
    version); pass False to serve every version found. Nothing is loaded here.
    """
    base = os.fspath(base_path)
    try:
        entries = os.listdir(base)
    except OSError as exc:
        raise ConfigurationError(f"cannot list model base path {base!r}: {exc}") from exc
    versions = sorted(
        (
            int(entry)
            for entry in entries
            if entry.isascii() and entry.isdigit() and os.path.isdir(os.path.join(base, entry))
        ),
        reverse=True,
    )
    if not versions:
        raise ConfigurationError(f"no numeric version folders under {base!r}")
    if latest_only:
        versions = versions[:1]
    return [SavedModelModel(os.path.join(base, str(v)), v) for v in versions]


def _row_feeds(instances: list[Any], specs: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Named input → list of per-instance values, following TF Serving's row rules."""
    first = instances[0]
    as_objects = isinstance(first, dict) and not _is_b64(first)
    if not as_objects:
        if len(specs) > 1:
            raise BadRequest(
                "instances is a plain list, but expecting list of objects as multiple "
                "input tensors required as per tensorinfo_map"
            )
        for i, item in enumerate(instances):
            if isinstance(item, dict) and not _is_b64(item):
                raise BadRequest(f"Expecting value/list but got object at item {i} of input list")
        return {next(iter(specs)): list(instances)}
    names = set(specs)
    feeds: dict[str, list[Any]] = {name: [] for name in specs}
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or _is_b64(item):
            raise BadRequest(f"Expecting object but got list at item {i} of input list")
        for key in item:
            if key not in names:
                raise BadRequest(
                    f"Failed to process element: {i} key: {key} of 'instances' list. "
                    f"Error: JSON object: does not have named input: {key}"
                )
        if set(item) != names:
            raise BadRequest(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{_snippet(item)} must only have keys: {','.join(sorted(names))}"
            )
        for key, value in item.items():
            feeds[key].append(value)
    return feeds


def _columnar_feeds(inputs: Any, specs: Mapping[str, Any]) -> dict[str, Any]:
    """Named input → value, following TF Serving's columnar rules."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(specs) > 1:
            raise BadRequest(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        return {next(iter(specs)): inputs}
    feeds = {}
    for name in specs:
        if name not in inputs:
            raise BadRequest(f"Missing named input: {name} in 'inputs' object.")
        feeds[name] = inputs[name]
    return feeds


def _decode_b64(value: Any, name: str) -> Any:
    if isinstance(value, list):
        return [_decode_b64(v, name) for v in value]
    if isinstance(value, dict):
        if not _is_b64(value):
            raise BadRequest(
                f"JSON Value: {_snippet(value)} not formatted correctly for base64 data"
            )
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise BadRequest("Unable to base64 decode") from None
    return value


def _output_value(name: str, array: Any) -> Any:
    """JSON-ready value of one output array."""
    import numpy as np

    if array.dtype.kind in ("O", "S"):
        as_b64 = name.endswith("_bytes")

        def convert(item: Any) -> Any:
            if isinstance(item, list):
                return [convert(i) for i in item]
            if isinstance(item, bytes):
                if as_b64:
                    return {"b64": base64.b64encode(item).decode("ascii")}
                return item.decode("utf-8", errors="replace")
            return item

        return convert(array.tolist())
    if array.dtype == np.float32:
        # Shortest text that round-trips as float32 (0.1, not 0.10000000149011612).
        flat = [float(str(x)) for x in array.ravel()]
        return np.asarray(flat, dtype=np.float64).reshape(array.shape).tolist()
    return array.tolist()


def _outputs_json(arrays: Mapping[str, Any], *, row: bool) -> Any:
    names = sorted(arrays)
    if not row:
        if len(names) == 1:
            return _output_value(names[0], arrays[names[0]])
        return {name: _output_value(name, arrays[name]) for name in names}
    batch = 0
    for name in names:
        shape = arrays[name].shape
        if len(shape) == 0:
            raise BadRequest(f"Tensor name: {name} has no shape information ")
        if shape[0] < 1:
            raise BadRequest(f"Tensor name: {name} has invalid batch size: {shape[0]}")
        if batch and shape[0] != batch:
            raise BadRequest(
                f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}"
            )
        batch = shape[0]
    values = {name: _output_value(name, arrays[name]) for name in names}
    if len(names) == 1:
        return values[names[0]]
    return [{name: values[name][i] for name in names} for i in range(batch)]


# --- server --------------------------------------------------------------------------


class ExecutorServer(Lifecycle):
    """An aiohttp server answering TF Serving's REST API for the given models.

    ``models`` maps a model name to one :class:`ServedModel` or several versions of it
    (distinct ``version``s; the highest AVAILABLE one answers unversioned requests).
    ``labels`` maps a model name to ``{label: version}`` as TF Serving's
    ``version_labels`` do. ``port`` 0 picks a free port (read :attr:`port` after
    :meth:`start`). ``network_delay_ms`` is added to every TF Serving request before it
    is handled, simulating a node's netem delay (it does not count as in flight).

    Models are loaded in the background on :meth:`start` (status shows START/LOADING
    meanwhile); :meth:`wait_loaded` waits for that.
    """

    def __init__(
        self,
        host: str,
        port: int,
        models: Mapping[str, ServedModel | Sequence[ServedModel]],
        network_delay_ms: float = 0.0,
        *,
        labels: Mapping[str, Mapping[str, int]] | None = None,
        max_body_bytes: int = 64 * 1024 * 1024,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be in [0, 65535], not {port}")
        if not math.isfinite(network_delay_ms) or network_delay_ms < 0:
            raise ConfigurationError(f"network_delay_ms must be >= 0, not {network_delay_ms}")
        self.host = host
        self._requested_port = port
        self.network_delay_ms = network_delay_ms
        self.max_body_bytes = max_body_bytes
        self.shutdown_timeout_s = shutdown_timeout_s
        self._models: dict[str, tuple[ServedModel, ...]] = {}
        for name, entry in models.items():
            if not name or "/" in name or ":" in name:
                raise ConfigurationError(f"model name {name!r} cannot appear in TF Serving URLs")
            versions = (entry,) if isinstance(entry, ServedModel) else tuple(entry)
            if not versions:
                raise ConfigurationError(f"model {name!r} has no versions")
            numbers = [m.version for m in versions]
            if len(set(numbers)) != len(numbers):
                raise ConfigurationError(f"model {name!r} has duplicate versions {numbers}")
            self._models[name] = tuple(sorted(versions, key=lambda m: m.version, reverse=True))
        self._labels: dict[str, dict[str, int]] = {}
        for name, mapping in (labels or {}).items():
            if name not in self._models:
                raise ConfigurationError(f"labels given for unknown model {name!r}")
            for label, version in mapping.items():
                if version not in {m.version for m in self._models[name]}:
                    raise ConfigurationError(
                        f"label {label!r} of {name!r} points at missing version {version}"
                    )
            self._labels[name] = dict(mapping)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._load_tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._errors = 0
        self._requests = 0
        self._errors_by_status: dict[int, int] = {}

    # properties

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise ConfigurationError("ExecutorServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the REST API (loopback when bound to all interfaces)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def in_flight(self) -> int:
        """Inference requests being served now."""
        return self._in_flight

    @property
    def errors(self) -> int:
        """Error answers (4xx and 5xx) given since start."""
        return self._errors

    @property
    def requests(self) -> int:
        """TF Serving API requests received since start."""
        return self._requests

    @property
    def models(self) -> Mapping[str, tuple[ServedModel, ...]]:
        """Model name → versions, highest first."""
        return dict(self._models)

    def stats(self) -> dict[str, Any]:
        """The ``/mulambda/stats`` document."""
        return {
            "in_flight": self._in_flight,
            "errors": self._errors,
            "requests": self._requests,
            "errors_by_status": {str(k): v for k, v in sorted(self._errors_by_status.items())},
            "models": {
                name: [
                    {"version": m.version, "state": m.state.value, "in_flight": m.in_flight}
                    for m in versions
                ]
                for name, versions in self._models.items()
            },
        }

    # lifecycle

    async def start(self) -> None:
        """Bind, start answering and begin loading every model (no-op when started)."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_get(STATS_PATH, self._handle_stats)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout_s)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._load_tasks = [
            asyncio.create_task(self._load(m), name=f"load-{name}-{m.version}")
            for name, versions in self._models.items()
            for m in versions
        ]
        log.info("executor serving %s on %s", sorted(self._models), self.url)

    async def wait_loaded(self, timeout_s: float | None = None) -> bool:
        """Wait until every model finished loading (either way); False on timeout."""
        if not self._load_tasks:
            return True
        _, pending = await asyncio.wait(self._load_tasks, timeout=timeout_s)
        return not pending

    async def stop(self) -> None:
        """Stop loading, let in-flight requests finish (bounded), close; idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in self._load_tasks:
            task.cancel()
        await asyncio.gather(*self._load_tasks, return_exceptions=True)
        self._load_tasks = []
        await runner.cleanup()
        for versions in self._models.values():
            for model in versions:
                await model.unload()

    @staticmethod
    async def _load(model: ServedModel) -> None:
        try:
            await model.load()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # why: a broken model must show END, not kill the server
            log.warning("loading model version %s failed: %s", model.version, exc)
            model.state = ModelState.END
            model.error_code = "UNKNOWN"
            model.error_message = str(exc)

    # HTTP

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def _handle(self, request: web.Request) -> web.Response:
        if self.network_delay_ms > 0:
            await asyncio.sleep(self.network_delay_ms / 1000.0)
        self._requests += 1
        try:
            document = await self._route(request)
        except TFServingError as exc:
            return self._error(exc.status or 500, str(exc))
        except Exception as exc:  # why: TF Serving answers internal faults as JSON 500s
            log.exception("executor failed on %s %s", request.method, request.rel_url)
            return self._error(500, f"Internal: {type(exc).__name__}: {exc}")
        return web.Response(body=encode_json(document), content_type="application/json")

    def _error(self, status: int, message: str) -> web.Response:
        self._errors += 1
        self._errors_by_status[status] = self._errors_by_status.get(status, 0) + 1
        return web.Response(
            status=status, body=orjson.dumps({"error": message}), content_type="application/json"
        )

    async def _route(self, request: web.Request) -> Any:
        path = request.rel_url.raw_path
        if not _V1_RE.fullmatch(path):
            raise ModelNotFound(f"Not found: {path}")
        method = request.method
        if method == "POST" and (match := _PREDICT_RE.fullmatch(path)):
            name, version, label = _model_spec(match.group(1), match.group(2), match.group(3))
            body = await self._read_body(request)
            return await self._infer(match.group(4).lower(), name, version, label, body)
        if method == "GET" and (match := _STATUS_RE.fullmatch(path)):
            if not match.group(1):
                raise BadRequest("Missing model name in request.")
            name, version, label = _model_spec(match.group(1), match.group(2), match.group(3))
            if match.group(4):
                return self._metadata(name, version, label)
            return {
                "model_version_status": [s.to_json() for s in self._status(name, version, label)]
            }
        raise BadRequest(f"Malformed request: {method} {path}")

    async def _read_body(self, request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(f"Request body is larger than {self.max_body_bytes} bytes") from None

    # model lookup

    def _label_version(self, name: str, label: str) -> int:
        version = self._labels.get(name, {}).get(label)
        if version is None:
            raise BadRequest(f"Unrecognized servable version label: {label}")
        return version

    def _servable(self, name: str, version: int | None, label: str | None) -> ServedModel:
        """The AVAILABLE version a request addresses, or TF Serving's 404/400."""
        if label is not None:
            version = self._label_version(name, label)
        versions = self._models.get(name, ())
        if version is not None:
            for model in versions:
                if model.version == version and model.state is ModelState.AVAILABLE:
                    return model
            raise ModelNotFound(f"Servable not found for request: Specific({name}, {version})")
        for model in versions:  # highest first
            if model.state is ModelState.AVAILABLE:
                return model
        raise ModelNotFound(f"Servable not found for request: Latest({name})")

    def _status(
        self, name: str, version: int | None, label: str | None
    ) -> list[ModelVersionStatus]:
        if label is not None:
            version = self._label_version(name, label)
        versions = self._models.get(name, ())
        if version is not None:
            for model in versions:
                if model.version == version:
                    return [model.status()]
            raise ModelNotFound(f"Could not find version {version} of model {name}")
        if not versions:
            raise ModelNotFound(f"Could not find any versions of model {name}")
        return [model.status() for model in versions]

    def _metadata(self, name: str, version: int | None, label: str | None) -> dict[str, Any]:
        model = self._servable(name, version, label)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": model.signature_defs()}},
        }

    # inference

    async def _infer(
        self, verb: str, name: str, version: int | None, label: str | None, raw: bytes
    ) -> dict[str, Any]:
        # Checks run in TF Serving's order: JSON, signature_name type, servable,
        # signature, payload keys.
        document = _parse_document(raw)
        signature = document.get("signature_name", "")
        if not isinstance(signature, str):
            raise BadRequest(
                f"JSON Value: {_snippet(document)} not formatted correctly. "
                "'signature_name' key must be a string value."
            )
        signature = signature or DEFAULT_SIGNATURE
        model = self._servable(name, version, label)
        if verb == "predict":
            _check_signature(model, signature)
            payload, row = _predict_payload(document)
            value = await self._run(model, model.predict(signature, payload, row=row))
            return {"predictions": value} if row else {"outputs": value}
        context, examples = _examples_payload(document, verb)
        if verb not in model.verbs:
            raise Unimplemented(f"Model {name} version {model.version} does not implement {verb}")
        _check_signature(model, signature)
        call = model.classify if verb == "classify" else model.regress
        return {"results": await self._run(model, call(signature, examples, context))}

    async def _run(self, model: ServedModel, call: Awaitable[Any]) -> Any:
        self._in_flight += 1
        model.in_flight += 1
        try:
            return await call
        finally:
            model.in_flight -= 1
            self._in_flight -= 1


def _check_signature(model: ServedModel, signature: str) -> None:
    if not model.has_signature(signature):
        raise BadRequest(f'Serving signature name: "{signature}" not found in signature def')


def _model_spec(
    raw_name: str, raw_version: str | None, raw_label: str | None
) -> tuple[str, int | None, str | None]:
    """Decoded name, version and label of a matched URL (TF Serving's ParseModelInfo)."""
    version = None
    if raw_version:
        version = int(raw_version)
        if version > _INT64_MAX:
            raise BadRequest(f"Failed to convert version: {raw_version} to numeric.")
    label = unquote(raw_label, errors="strict") if raw_label else None
    return unquote(raw_name), version, label


def _parse_document(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest("JSON Parse error: The document is empty")
    try:
        document = decode_json(raw)
    except ValueError as exc:
        raise BadRequest(f"JSON Parse error: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest(f"JSON Value: {_snippet(document)} Is not object")
    return document


def _predict_payload(document: dict[str, Any]) -> tuple[Any, bool]:
    """(payload, row?) of a predict body, with TF Serving's messages for bad shapes."""
    has_instances = "instances" in document
    has_inputs = "inputs" in document
    if has_instances and has_inputs:
        raise BadRequest(
            f"JSON Value: {_snippet(document)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            # sic: TF Serving's wording
            raise BadRequest(
                f"JSON Value: {_snippet(document)} Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise BadRequest(f"JSON Value: {_snippet(document)} No values in 'instances' array")
        return instances, True
    if has_inputs:
        return document["inputs"], False
    raise BadRequest("Missing 'inputs' or 'instances' key")


def _examples_payload(
    document: dict[str, Any], verb: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(context, examples) of a classify/regress body, validated as TF Serving does."""
    context: dict[str, Any] = {}
    if "context" in document:
        if not isinstance(document["context"], dict):
            raise BadRequest(
                f"Example must be JSON object but got JSON {_json_type(document['context'])}"
            )
        context = document["context"]
    if "examples" not in document:
        raise BadRequest(
            f"JSON Value: {_snippet(document)} When method is {verb}, key 'examples' is "
            "expected and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise BadRequest(
            f"JSON Value: {_snippet(document)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise BadRequest(f"JSON Value: {_snippet(document)} 'examples' value is an empty array")
    for example in examples:
        if not isinstance(example, dict):
            raise BadRequest(f"Example must be JSON object but got JSON {_json_type(example)}")
    return context, examples
