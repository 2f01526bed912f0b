"""What an :class:`~mulambda.emulator.server.ExecutorServer` serves: the model contract.

:class:`ServedModel` is one version of one model: its state for the status endpoint,
its signatures for the metadata endpoint, and the inference verbs. Implementations are
:class:`~mulambda.emulator.synthetic.SyntheticModel` (the prototype's dummy models) and
:class:`~mulambda.emulator.savedmodel.SavedModelModel` (a real TensorFlow SavedModel).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Final

from mulambda.errors import ConfigurationError
from mulambda.protocols.tfserving import ModelVersionStatus, Unimplemented
from mulambda.wire.events import InferenceVerb, ModelState

__all__ = ["DEFAULT_SIGNATURE", "VERBS", "ServedModel", "tensor_info"]

DEFAULT_SIGNATURE: Final = "serving_default"
"""Signature used when a request names none (or an empty one), as in TF Serving."""

VERBS: Final[tuple[InferenceVerb, ...]] = ("predict", "classify", "regress")
"""The inference verbs of the REST API."""


def tensor_info(dtype: str, dims: Sequence[int] | None, name: str) -> dict[str, Any]:
    """A TensorInfo as TF Serving's metadata JSON writes it (``dims`` None: unknown rank)."""
    shape: dict[str, Any] = (
        {"dim": [], "unknown_rank": True}
        if dims is None
        else {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}
    )
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


class ServedModel(abc.ABC):
    """One version of one model an :class:`ExecutorServer` serves.

    Subclasses implement :meth:`predict` (and :meth:`classify`/:meth:`regress` when they
    list them in ``verbs``), :meth:`signature_defs` and, when loading takes work,
    :meth:`load`. Models raise :class:`mulambda.protocols.tfserving.TFServingError`
    subclasses; the server turns them into ``{"error": ...}`` answers with their ``status``.

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
