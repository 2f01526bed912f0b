"""TensorFlow SavedModels served over TF Serving's REST API (needs the ``tensorflow`` extra).

:class:`SavedModelModel` loads one SavedModel version and runs its signatures;
:func:`saved_model_versions` finds the versions under a TF Serving
``--model_base_path``. How JSON becomes input tensors and output arrays become JSON is
in :mod:`mulambda.emulator.tensor_json`; this module holds the TensorFlow calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from mulambda.emulator.payloads import json_snippet
from mulambda.emulator.served import ServedModel, tensor_info
from mulambda.emulator.tensor_json import columnar_feeds, decode_b64, outputs_json, row_feeds
from mulambda.errors import ConfigurationError
from mulambda.protocols.tfserving import (
    BadRequest,
    DeadlineExceeded,
    ExecutorInternalError,
    ExecutorUnavailable,
    ModelNotFound,
    ResourceExhausted,
    Unimplemented,
)
from mulambda.wire.events import ModelState

__all__ = ["SavedModelModel", "saved_model_versions"]

log = logging.getLogger(__name__)


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
                    key: tensor_info(dtype_name(spec.dtype), dims(spec.shape), f"{name}_{key}:0")
                    for key, spec in sorted(kwargs.items())
                },
                "outputs": {
                    key: tensor_info(
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
        feeds = row_feeds(payload, specs) if row else columnar_feeds(payload, specs)
        tensors: dict[str, Any] = {}
        for name, value in feeds.items():
            spec = specs[name]
            if spec.dtype == tf.string:
                value = decode_b64(value, name)
            try:
                tensor = tf.convert_to_tensor(value, dtype=spec.dtype)
            except (TypeError, ValueError) as exc:
                raise BadRequest(
                    f"JSON Value: {json_snippet(value)} for input '{name}' is not of expected "
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
        return outputs_json(arrays, row=row)


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
