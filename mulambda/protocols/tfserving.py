"""TensorFlow Serving REST: the protocol's errors, JSON codec, status documents and URLs.

Pure (no HTTP): the client (:mod:`mulambda.executors.tfserving`), the OIP client and
the emulator (:mod:`mulambda.emulator`) all speak through this module, so a status means
the same error whichever side reads or writes it.

The contract is ``/work/shared/reference/tfserving_rest.md`` (TF Serving's REST handler):
``GET /v1/models/{name}[/versions/{n}|/labels/{label}][/metadata]`` and
``POST /v1/models/{name}[/versions/{n}|/labels/{label}]:predict|:classify|:regress``.

Every failure surfaces as a subclass of :class:`mulambda.errors.ExecutorError` carrying
``status`` (the HTTP status, or None when no response arrived) and ``retriable``, which
here means "another executor may well succeed": the router fails over on retriable errors
and replies with an error on the others.

====================  ======  =========  ===========================================
error                 status  retriable  when
====================  ======  =========  ===========================================
BadRequest            400     no         bad JSON/shape/type, unknown label, bad URL
                                         (also any other 4xx, with its own status)
ModelNotFound         404     yes        unknown model or version (another executor
                                         may serve it)
ResourceExhausted     429     yes        executor overloaded
ExecutorInternalError 500     yes        internal/unknown (also other 5xx)
Unimplemented         501     no         the model does not offer that verb
ExecutorUnavailable   503     yes        503/502, connection refused/reset (status
                                         None when no response arrived)
DeadlineExceeded      504     yes        504/408, or our own timeout (status None)
GarbageResponse       any     yes        a success status with a body that is not the
                                         expected JSON document
NonFiniteOutput       200     yes        an inference answer holding NaN or ±Infinity
                                         (a GarbageResponse: JSON results cannot carry
                                         them, and writing ``null`` would hide them)
====================  ======  =========  ===========================================
"""

from __future__ import annotations

import contextlib
import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final
from urllib.parse import quote

import orjson

from mulambda.errors import ConfigurationError, ExecutorError
from mulambda.wire.codec import non_finite_path
from mulambda.wire.events import ModelState

__all__ = [
    "ERROR_BY_STATUS",
    "RESPONSE_KEYS",
    "BadRequest",
    "DeadlineExceeded",
    "ExecutorInternalError",
    "ExecutorUnavailable",
    "GarbageResponse",
    "ModelNotFound",
    "ModelVersionStatus",
    "NonFiniteOutput",
    "ResourceExhausted",
    "TFServingError",
    "Unimplemented",
    "decode_finite_json",
    "decode_json",
    "encode_json",
    "error_for_status",
    "error_message",
    "model_path",
    "parse_model_status",
]

_NAME_RE: Final = re.compile(r"[^/:]+")
"""What TF Serving's URL regex accepts as a model name or label."""


# --- errors --------------------------------------------------------------------------


class _Unset(enum.Enum):
    UNSET = 0


_UNSET: Final = _Unset.UNSET


class TFServingError(ExecutorError):
    """Base of the errors a TF Serving endpoint (or the way to it) can produce.

    ``status`` is the HTTP status of the answer, or None when none arrived (connection
    refused, reset, our own timeout); ``url`` the URL called; ``server_message`` the
    ``{"error": ...}`` text the server sent, when it sent one.
    """

    default_status: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        status: int | _Unset | None = _UNSET,
        url: str | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(
            message, status=self.default_status if isinstance(status, _Unset) else status
        )
        self.url = url
        self.server_message = server_message


class BadRequest(TFServingError):
    """400 (and other 4xx): the request itself is wrong; retrying elsewhere will not help."""

    default_status = 400
    retriable = False


class ModelNotFound(TFServingError):
    """404: this executor does not serve that model/version (now); another one may."""

    default_status = 404
    retriable = True


class ResourceExhausted(TFServingError):
    """429: the executor is out of some resource; another one may have room."""

    default_status = 429
    retriable = True


class ExecutorInternalError(TFServingError):
    """500 (and other 5xx): the executor failed internally; another one may not."""

    default_status = 500
    retriable = True


class Unimplemented(TFServingError):
    """501: the model does not implement that verb; a same-trait replica will not either."""

    default_status = 501
    retriable = False


class ExecutorUnavailable(TFServingError):
    """503/502, or no connection (refused, reset, closed): the executor is not serving."""

    default_status = 503
    retriable = True


class DeadlineExceeded(TFServingError):
    """504/408, or no answer within our own timeout (then ``status`` is None)."""

    default_status = 504
    retriable = True


class GarbageResponse(TFServingError):
    """A success status whose body is not the JSON document the API promises."""

    default_status = None
    retriable = True


class NonFiniteOutput(GarbageResponse):
    """An inference answer with NaN or ±Infinity in it: the number's path is named.

    TF Serving writes such tokens; a JSON result (and orjson, pydantic's serialiser)
    cannot carry them and would write ``null`` instead, silently. Retriable like any
    garbage: another executor may answer with finite numbers.
    """


ERROR_BY_STATUS: Final[Mapping[int, type[TFServingError]]] = {
    400: BadRequest,
    404: ModelNotFound,
    408: DeadlineExceeded,
    429: ResourceExhausted,
    500: ExecutorInternalError,
    501: Unimplemented,
    502: ExecutorUnavailable,
    503: ExecutorUnavailable,
    504: DeadlineExceeded,
}
"""HTTP status → error class; other 4xx map to BadRequest, other 5xx to internal error."""


def error_for_status(status: int, message: str, *, url: str | None = None) -> TFServingError:
    """The typed error for an HTTP error ``status`` whose body said ``message``."""
    cls = ERROR_BY_STATUS.get(status)
    if cls is None:
        cls = ExecutorInternalError if status >= 500 else BadRequest
    where = f" from {url}" if url else ""
    return cls(f"HTTP {status}{where}: {message}", status=status, url=url, server_message=message)


# --- JSON ----------------------------------------------------------------------------


def encode_json(value: Any) -> bytes:
    """JSON bytes of ``value``; non-finite floats become ``NaN``/``Infinity`` tokens.

    TF Serving reads and writes those tokens, but orjson writes ``null`` for them, so a
    document in which orjson wrote any ``null`` is re-encoded with the standard library
    (rare, and only then paying its cost). Raises ``TypeError`` for values JSON cannot hold.
    """
    data = orjson.dumps(value)
    if b"null" in data:
        # Types only orjson knows (datetime, numpy...) make this fail: its output stands.
        with contextlib.suppress(TypeError, ValueError):
            data = json.dumps(value, allow_nan=True, separators=(",", ":")).encode()
    return data


def decode_json(data: bytes) -> Any:
    """Parse JSON bytes, accepting ``NaN``/``Infinity``/``-Infinity`` tokens.

    Raises ``ValueError`` when ``data`` is not JSON (or nested too deeply to parse).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses non-finite tokens (and a few other legal oddities); the standard
    # library accepts them, as TF Serving does.
    try:
        return json.loads(data)
    except RecursionError:
        # Nesting deeper than the interpreter's stack: garbage, not a crash.
        raise ValueError("JSON nested too deeply") from None


def decode_finite_json(data: bytes) -> Any:
    """:func:`decode_json`, but :class:`NonFiniteOutput` (naming where) for a document
    holding NaN or ±Infinity. Costs nothing extra on the common path: orjson refuses such
    numbers, so only a document it refused is searched."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        document = decode_json(data)
    try:
        where = non_finite_path(document)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if where is not None:
        raise NonFiniteOutput(f"answer holds a non-finite number, which JSON cannot carry: {where}")
    return document


# --- status documents ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelVersionStatus:
    """One entry of TF Serving's ``model_version_status`` list."""

    version: int
    state: ModelState
    error_code: str = "OK"
    error_message: str = ""

    def to_json(self) -> dict[str, Any]:
        """The entry as TF Serving writes it (version as a string, as proto3 JSON does)."""
        return {
            "version": str(self.version),
            "state": self.state.value,
            "status": {"error_code": self.error_code, "error_message": self.error_message},
        }


def parse_model_status(document: Any) -> list[ModelVersionStatus]:
    """Parse a status response body; raises :class:`GarbageResponse` on a wrong shape.

    Unknown state names become ``ModelState.UNKNOWN`` rather than failing, so a newer
    server cannot break an older companion.
    """
    if not isinstance(document, dict) or not isinstance(document.get("model_version_status"), list):
        raise GarbageResponse("status response has no 'model_version_status' list")
    result: list[ModelVersionStatus] = []
    for entry in document["model_version_status"]:
        if not isinstance(entry, dict):
            raise GarbageResponse(f"status entry is not an object: {entry!r:.200}")
        raw_version = entry.get("version")
        if isinstance(raw_version, bool) or not isinstance(raw_version, int | str):
            raise GarbageResponse(f"status entry has no usable version: {entry!r:.200}")
        try:
            version = int(raw_version)
        except ValueError:
            raise GarbageResponse(f"status version is not a number: {raw_version!r:.50}") from None
        raw_state = entry.get("state")
        try:
            state = ModelState(str(raw_state))
        except ValueError:
            state = ModelState.UNKNOWN
        status = entry.get("status")
        status = status if isinstance(status, dict) else {}
        result.append(
            ModelVersionStatus(
                version=version,
                state=state,
                error_code=str(status.get("error_code", "OK")),
                error_message=str(status.get("error_message", "")),
            )
        )
    return result


# --- URLs ----------------------------------------------------------------------------


def model_path(
    model: str,
    *,
    version: int | None = None,
    label: str | None = None,
    suffix: str = "",
) -> str:
    """The encoded path ``/v1/models/{model}[/versions/{n}|/labels/{label}]{suffix}``.

    ``suffix`` is ``""``, ``"/metadata"`` or ``":predict"`` etc. Raises
    :class:`ConfigurationError` for names TF Serving's URL grammar cannot carry.
    """
    if not isinstance(model, str) or not _NAME_RE.fullmatch(model):
        raise ConfigurationError(f"model name {model!r} is empty or contains '/' or ':'")
    path = f"/v1/models/{quote(model, safe='')}"
    if version is not None and label is not None:
        raise ConfigurationError("give a model version or a version label, not both")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ConfigurationError(f"model version must be an integer >= 0, not {version!r}")
        path += f"/versions/{version}"
    elif label is not None:
        if not isinstance(label, str) or not _NAME_RE.fullmatch(label):
            raise ConfigurationError(f"version label {label!r} is empty or contains '/' or ':'")
        path += f"/labels/{quote(label, safe='')}"
    return path + suffix


# --- answers -------------------------------------------------------------------------


RESPONSE_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "predict": ("predictions", "outputs"),
    "classify": ("results",),
    "regress": ("results",),
}
"""Per verb, the keys of which an answer document holds at least one."""


def error_message(raw: bytes) -> str:
    """The ``error`` text of an error body, or the body itself when it is not that JSON."""
    try:
        document = decode_json(raw)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    text = raw[:500].decode("utf-8", errors="replace").strip()
    return text or "(empty body)"
