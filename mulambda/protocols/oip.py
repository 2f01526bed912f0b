"""Open Inference Protocol v2 REST: URLs, tensors, bodies translated to/from TF Serving.

Pure (no HTTP). Errors are TF Serving's (:mod:`mulambda.protocols.tfserving`: same
statuses, same ``retriable``), plus :class:`UnsupportedByProtocol`. The OIP client
(:mod:`mulambda.executors.oip`) and the router's per-candidate call
(:mod:`mulambda.executors.dispatch`) use this module.

An :class:`~mulambda.wire.events.InferenceRequest` body is in one of two dialects:

* **TF Serving** (the default): ``instances`` (rows) or ``inputs`` (columns), as
  ``:predict`` takes them;
* **OIP v2**: ``inputs`` as a list of typed tensors
  (``{"name", "shape", "datatype", "data"}``), as ``/v2/models/{name}/infer`` takes it.

Each executor is called in its own protocol, so a body is converted when the dialects
differ, and the executor's answer is converted back: the result's ``output`` is always
in the dialect of the request (``predictions``/``outputs`` for a TF Serving body, an OIP
response document for an OIP body). What no conversion can express (``classify``/
``regress``, ``examples``) raises :class:`UnsupportedByProtocol`, which is retriable: a
candidate speaking the request's own protocol may still answer it.

Conversions (row-major, as both protocols are):

====================================  =========================================
TF Serving                            OIP v2
====================================  =========================================
``instances: [row, ...]``             one tensor ``input``, shape [rows, ...]
``instances: [{name: row}, ...]``     one tensor per name, stacked along rows
``inputs: nested``                    one tensor ``input``
``inputs: {name: nested}``            one tensor per name
``predictions``/``outputs`` nested    the single output tensor
``predictions: [{name: row}]``,       one output tensor per name
``outputs: {name: nested}``
====================================  =========================================

A TF Serving ``signature_name`` is not sent to OIP executors (OIP has no signatures).
Datatypes are inferred from the values: BOOL, INT64, FP64 (any float among ints), BYTES
for strings; OIP tensors are written with flat ``data``, read flat or nested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

from mulambda.errors import ConfigurationError
from mulambda.protocols.tfserving import (
    BadRequest,
    GarbageResponse,
    NonFiniteOutput,
    TFServingError,
)
from mulambda.wire.codec import non_finite_path

__all__ = [
    "DEFAULT_INPUT_NAME",
    "DEFAULT_OUTPUT_NAME",
    "UnsupportedByProtocol",
    "is_oip_body",
    "oip_model_path",
    "oip_request_from_tf",
    "oip_response_from_tf",
    "tensor_from_nested",
    "tensor_to_nested",
    "tf_output_from_oip",
    "tf_request_from_oip",
]


def oip_model_path(model: str, *, version: int | str | None = None, suffix: str = "") -> str:
    """The encoded path ``/v2/models/{model}[/versions/{version}]{suffix}``."""
    if not isinstance(model, str) or not model or "/" in model:
        raise ConfigurationError(f"model name {model!r} is empty or contains '/'")
    path = f"/v2/models/{quote(model, safe='')}"
    if version is not None:
        if isinstance(version, bool) or (isinstance(version, int) and version < 0):
            raise ConfigurationError(f"model version must be >= 0 or a name, not {version!r}")
        path += f"/versions/{quote(str(version), safe='')}"
    return path + suffix


DEFAULT_INPUT_NAME: Final = "input"
"""Name of the OIP tensor made from an unnamed TF Serving input."""

DEFAULT_OUTPUT_NAME: Final = "output"
"""Name of the OIP tensor made from an unnamed TF Serving output."""

_TENSOR_KEYS: Final = frozenset({"name", "shape", "datatype"})

_INT_TYPES: Final = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
_FLOAT_TYPES: Final = frozenset({"FP16", "FP32", "FP64"})


class UnsupportedByProtocol(TFServingError):
    """The executor's protocol cannot express this request; one speaking the request's own
    protocol may answer it, so (unlike a plain 501) it is worth failing over. ``status`` is
    None: the executor was never asked."""

    default_status = None
    retriable = True


# --- dialects ------------------------------------------------------------------------


def is_oip_body(body: Mapping[str, Any]) -> bool:
    """Whether ``body`` is an OIP v2 infer body: ``inputs`` is a list of typed tensors."""
    inputs = body.get("inputs")
    return (
        isinstance(inputs, list)
        and bool(inputs)
        and all(isinstance(t, dict) and t.keys() >= _TENSOR_KEYS for t in inputs)
    )


# --- tensors -------------------------------------------------------------------------


def _shape_of(value: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _flatten(value: Any, shape: Sequence[int], depth: int, out: list[Any]) -> None:
    if depth == len(shape):
        if isinstance(value, list):
            raise BadRequest(f"ragged tensor: a value nests deeper than shape {list(shape)}")
        out.append(value)
        return
    if not isinstance(value, list) or len(value) != shape[depth]:
        raise BadRequest(f"ragged tensor: not every row matches shape {list(shape)}")
    for item in value:
        _flatten(item, shape, depth + 1, out)


def _datatype_of(flat: Sequence[Any]) -> str:
    kinds = set()
    for item in flat:
        if isinstance(item, bool):
            kinds.add("BOOL")
        elif isinstance(item, int):
            kinds.add("INT64")
        elif isinstance(item, float):
            kinds.add("FP64")
        elif isinstance(item, str):
            kinds.add("BYTES")
        else:
            raise BadRequest(f"tensor value {item!r:.50} is not a number, bool or string")
    if not kinds:
        return "FP64"
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {"INT64", "FP64"}:
        return "FP64"
    raise BadRequest(f"tensor mixes value types {sorted(kinds)}")


def tensor_from_nested(name: str, value: Any) -> dict[str, Any]:
    """The OIP tensor ``{"name", "shape", "datatype", "data"}`` of a nested list (or a
    scalar, shape ``[]``); raises :class:`BadRequest` for ragged or mixed values."""
    shape = _shape_of(value)
    flat: list[Any] = []
    _flatten(value, shape, 0, flat)
    datatype = _datatype_of(flat)
    if datatype == "FP64":
        flat = [float(v) for v in flat]
    return {"name": name, "shape": shape, "datatype": datatype, "data": flat}


def _flat_data(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def tensor_to_nested(tensor: Any) -> Any:
    """The nested list (row-major) an OIP tensor holds; ``data`` may be flat or nested.

    Raises :class:`GarbageResponse` when the tensor is malformed.
    """
    if not isinstance(tensor, dict) or not isinstance(tensor.get("shape"), list):
        raise GarbageResponse(f"not an OIP tensor: {tensor!r:.200}")
    shape = tensor["shape"]
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise GarbageResponse(f"OIP tensor shape {shape!r:.100} is not a list of sizes")
    flat = _flat_data(tensor.get("data"))
    size = 1
    for dim in shape:
        size *= dim
    if len(flat) != size:
        raise GarbageResponse(
            f"OIP tensor {tensor.get('name')!r} has {len(flat)} values for shape {shape}"
        )
    datatype = tensor.get("datatype")
    try:
        if datatype in _FLOAT_TYPES:
            flat = [float(v) for v in flat]
        elif datatype in _INT_TYPES:
            flat = [int(v) for v in flat]
    except (TypeError, ValueError, OverflowError):
        raise GarbageResponse(
            f"OIP tensor {tensor.get('name')!r:.100} holds values that are not {datatype}"
        ) from None
    if not shape:
        return flat[0]
    return _nest(flat, shape)


def _nest(flat: list[Any], shape: Sequence[int]) -> Any:
    rows: list[Any] = flat
    for dim in reversed(shape[1:]):
        rows = [rows[i : i + dim] for i in range(0, len(rows), dim)] if dim else []
    return rows if shape[0] else []


# --- requests ------------------------------------------------------------------------


def _check_verb(verb: str) -> None:
    if verb != "predict":
        raise UnsupportedByProtocol(
            f"verb {verb!r} has no Open Inference Protocol equivalent (only predict has)"
        )


def oip_request_from_tf(verb: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The OIP infer body for a TF Serving ``:predict`` body (see the module table)."""
    _check_verb(verb)
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise BadRequest("'instances' must be a list of rows")
        if rows and all(isinstance(r, dict) for r in rows):
            names = list(rows[0])
            if any(list(r) != names for r in rows):
                raise BadRequest("every instance must name the same inputs")
            tensors = [tensor_from_nested(n, [r[n] for r in rows]) for n in names]
        else:
            tensors = [tensor_from_nested(DEFAULT_INPUT_NAME, rows)]
    elif "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict):
            tensors = [tensor_from_nested(str(n), v) for n, v in inputs.items()]
        else:
            tensors = [tensor_from_nested(DEFAULT_INPUT_NAME, inputs)]
    else:
        raise UnsupportedByProtocol(
            "only 'instances'/'inputs' bodies convert to Open Inference Protocol tensors"
        )
    return {"inputs": tensors}


def tf_output_from_oip(body: Mapping[str, Any], response: Any) -> dict[str, Any]:
    """TF Serving's ``predictions`` (rows, for an ``instances`` body) or ``outputs``
    (columns, for an ``inputs`` body) from an OIP infer response."""
    outputs = response.get("outputs") if isinstance(response, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise GarbageResponse(f"OIP infer response lacks 'outputs': {response!r:.200}")
    named = {
        str(t.get("name", i) if isinstance(t, dict) else i): tensor_to_nested(t)
        for i, t in enumerate(outputs)
    }
    # A float tensor may carry "NaN" as a string, which float() reads: report it as an
    # answer with NaN tokens is (a JSON result cannot carry it).
    where = non_finite_path(named)
    if where is not None:
        raise NonFiniteOutput(f"OIP answer holds a non-finite number: {where}")
    if "instances" in body:
        if len(named) == 1:
            return {"predictions": next(iter(named.values()))}
        # Rows need every output batched alike; TF Serving refuses otherwise too.
        batches = {n: len(c) if isinstance(c, list) else "scalar" for n, c in named.items()}
        lengths = set(batches.values())
        if len(lengths) != 1 or "scalar" in lengths:
            raise GarbageResponse(f"OIP outputs do not share a batch dimension: {batches!r:.200}")
        count = len(next(iter(named.values())))
        return {"predictions": [{n: c[i] for n, c in named.items()} for i in range(count)]}
    if len(named) == 1:
        return {"outputs": next(iter(named.values()))}
    return {"outputs": named}


def tf_request_from_oip(verb: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The TF Serving ``:predict`` body (columnar ``inputs``) for an OIP infer body."""
    _check_verb(verb)
    try:
        tensors = {str(t["name"]): tensor_to_nested(t) for t in body["inputs"]}
    except GarbageResponse as exc:
        raise BadRequest(f"request tensor: {exc.reason}") from None
    if len(tensors) == 1:
        return {"inputs": next(iter(tensors.values()))}
    return {"inputs": tensors}


def oip_response_from_tf(model: str, response: Mapping[str, Any]) -> dict[str, Any]:
    """The OIP infer response for a TF Serving ``:predict`` answer to a columnar body."""
    if "outputs" in response:
        outputs = response["outputs"]
    elif "predictions" in response:
        outputs = response["predictions"]
    else:
        raise GarbageResponse(f"predict response lacks outputs: {response!r:.200}")
    try:
        if isinstance(outputs, dict):
            tensors = [tensor_from_nested(str(n), v) for n, v in outputs.items()]
        else:
            tensors = [tensor_from_nested(DEFAULT_OUTPUT_NAME, outputs)]
    except BadRequest as exc:
        raise GarbageResponse(f"predict outputs are no tensor: {exc.reason}") from None
    return {"model_name": model, "outputs": tensors}
