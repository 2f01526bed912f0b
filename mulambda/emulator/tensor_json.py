"""TF Serving's JSON ↔ tensor mapping for SavedModel signatures.

Pure: request values become per-input feeds (row ``instances`` stacked along a new 0th
dimension, columnar ``inputs`` by name), ``{"b64": ...}`` becomes bytes, and output
arrays become JSON values (``*_bytes`` string outputs base64-encoded, float32 in its
shortest round-trip text). Shapes that TF Serving refuses raise
:class:`~mulambda.protocols.tfserving.BadRequest` with its wording. numpy is imported
only when an output is converted, so this module loads without TensorFlow.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from mulambda.emulator.payloads import is_b64, json_snippet
from mulambda.protocols.tfserving import BadRequest

__all__ = ["columnar_feeds", "decode_b64", "outputs_json", "row_feeds"]


def row_feeds(instances: list[Any], specs: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Named input → list of per-instance values, following TF Serving's row rules."""
    first = instances[0]
    as_objects = isinstance(first, dict) and not is_b64(first)
    if not as_objects:
        if len(specs) > 1:
            raise BadRequest(
                "instances is a plain list, but expecting list of objects as multiple "
                "input tensors required as per tensorinfo_map"
            )
        for i, item in enumerate(instances):
            if isinstance(item, dict) and not is_b64(item):
                raise BadRequest(f"Expecting value/list but got object at item {i} of input list")
        return {next(iter(specs)): list(instances)}
    names = set(specs)
    feeds: dict[str, list[Any]] = {name: [] for name in specs}
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or is_b64(item):
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
                f"{json_snippet(item)} must only have keys: {','.join(sorted(names))}"
            )
        for key, value in item.items():
            feeds[key].append(value)
    return feeds


def columnar_feeds(inputs: Any, specs: Mapping[str, Any]) -> dict[str, Any]:
    """Named input → value, following TF Serving's columnar rules."""
    if not isinstance(inputs, dict) or is_b64(inputs):
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


def decode_b64(value: Any, name: str) -> Any:
    """``value`` (of string input ``name``) with every ``{"b64": ...}`` decoded to bytes."""
    if isinstance(value, list):
        return [decode_b64(v, name) for v in value]
    if isinstance(value, dict):
        if not is_b64(value):
            raise BadRequest(
                f"JSON Value: {json_snippet(value)} not formatted correctly for base64 data"
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


def outputs_json(arrays: Mapping[str, Any], *, row: bool) -> Any:
    """``predictions`` (``row``) or ``outputs`` of a predict answer from named arrays."""
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
