"""Client of the TensorFlow Serving REST API, and the typed errors its answers map onto.

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
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from mulambda.errors import ConfigurationError, ExecutorError
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.codec import non_finite_path
from mulambda.wire.events import InferenceVerb, ModelState

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ERROR_BY_STATUS",
    "BadRequest",
    "DeadlineExceeded",
    "ExecutorInternalError",
    "ExecutorUnavailable",
    "GarbageResponse",
    "ModelNotFound",
    "ModelVersionStatus",
    "NonFiniteOutput",
    "ResourceExhausted",
    "TFServingClient",
    "TFServingError",
    "Unimplemented",
    "decode_json",
    "encode_json",
    "error_for_status",
    "model_path",
    "parse_model_status",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 10.0
"""Per-call bound on a whole request (connect, send, wait, read)."""

DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
"""Responses larger than this are refused as garbage rather than buffered."""

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


# --- client --------------------------------------------------------------------------


_RESPONSE_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "predict": ("predictions", "outputs"),
    "classify": ("results",),
    "regress": ("results",),
}


class TFServingClient(Lifecycle):
    """Pooled async client of one TF Serving REST endpoint.

    ``base_url`` is the REST root, e.g. ``http://10.0.0.5:8501`` (a path prefix is kept).
    Pass ``session`` to share one connection pool among many clients (the router talks to
    many executors); the client then never closes it. Otherwise ``start()`` opens a
    session whose connector holds at most ``limit`` connections (``limit_per_host`` per
    host; 0 means no per-host bound), kept alive between calls.

    Every call takes an optional ``timeout_s`` overriding ``timeout_s`` of the client; the
    bound covers the whole call, and running over it raises :class:`DeadlineExceeded` with
    ``status`` None.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float | None = None,
        limit: int = 100,
        limit_per_host: int = 0,
        keepalive_timeout_s: float = 30.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be http(s)://..., not {base_url!r}")
        if timeout_s <= 0 or (connect_timeout_s is not None and connect_timeout_s <= 0):
            raise ConfigurationError("timeouts must be positive")
        if limit < 0 or limit_per_host < 0 or max_response_bytes <= 0:
            raise ConfigurationError("connection limits must be >= 0, max_response_bytes > 0")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.limit = limit
        self.limit_per_host = limit_per_host
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_response_bytes = max_response_bytes
        self._external_session = session
        self._session: aiohttp.ClientSession | None = session

    # lifecycle

    @property
    def started(self) -> bool:
        """Whether calls can be made (a session is open)."""
        return self._session is not None and not self._session.closed

    async def start(self) -> None:
        """Open the pooled session (no-op when started or given a session)."""
        if self.started:
            return
        if self._external_session is not None:
            raise ConfigurationError("the shared session given to TFServingClient is closed")
        connector = aiohttp.TCPConnector(
            limit=self.limit,
            limit_per_host=self.limit_per_host,
            keepalive_timeout=self.keepalive_timeout_s,
        )
        self._session = aiohttp.ClientSession(connector=connector)

    async def stop(self) -> None:
        """Close the session this client opened; idempotent; a shared session stays open."""
        session, self._session = self._session, self._external_session
        if session is not None and session is not self._external_session:
            await session.close()

    # inference

    async def predict(
        self,
        model: str,
        body: Mapping[str, Any] | None = None,
        *,
        instances: Sequence[Any] | None = None,
        inputs: Any = None,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """``:predict``; give a whole ``body`` or exactly one of ``instances``/``inputs``.

        Returns the response document (``predictions`` for row requests, ``outputs`` for
        columnar ones). A given ``body`` is sent as is (plus ``signature_name`` if given).
        """
        if body is None:
            if (instances is None) == (inputs is None):
                raise ConfigurationError("predict needs exactly one of instances= or inputs=")
            body = {"instances": list(instances)} if instances is not None else {"inputs": inputs}
        elif instances is not None or inputs is not None:
            raise ConfigurationError("give predict a body or instances=/inputs=, not both")
        return await self.infer(
            "predict",
            model,
            _with_signature(body, signature_name),
            version=version,
            label=label,
            timeout_s=timeout_s,
        )

    async def classify(
        self,
        model: str,
        body: Mapping[str, Any] | None = None,
        *,
        examples: Sequence[Mapping[str, Any]] | None = None,
        context: Mapping[str, Any] | None = None,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """``:classify``; give a ``body`` or ``examples`` (and optional ``context``).

        Returns the response document; ``results`` holds per example a list of
        ``[label, score]`` pairs.
        """
        body = _examples_body("classify", body, examples, context)
        return await self.infer(
            "classify",
            model,
            _with_signature(body, signature_name),
            version=version,
            label=label,
            timeout_s=timeout_s,
        )

    async def regress(
        self,
        model: str,
        body: Mapping[str, Any] | None = None,
        *,
        examples: Sequence[Mapping[str, Any]] | None = None,
        context: Mapping[str, Any] | None = None,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """``:regress``; like :meth:`classify`, ``results`` holds one value per example."""
        body = _examples_body("regress", body, examples, context)
        return await self.infer(
            "regress",
            model,
            _with_signature(body, signature_name),
            version=version,
            label=label,
            timeout_s=timeout_s,
        )

    async def infer(
        self,
        verb: InferenceVerb,
        model: str,
        body: Mapping[str, Any],
        *,
        version: int | None = None,
        label: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """POST ``body`` to ``:{verb}`` and return the response document.

        The generic form the router uses with an ``InferenceRequest``'s verb and body.
        """
        if verb not in _RESPONSE_KEYS:
            raise ConfigurationError(f"unknown TF Serving verb {verb!r}")
        path = model_path(model, version=version, label=label, suffix=f":{verb}")
        try:
            data = encode_json(body)
        except TypeError as exc:
            raise ConfigurationError(f"{verb} body is not JSON-serialisable: {exc}") from None
        document = await self._call("POST", path, data, timeout_s, finite=True)
        if not isinstance(document, dict) or not any(k in document for k in _RESPONSE_KEYS[verb]):
            raise GarbageResponse(
                f"{verb} response from {self.base_url} lacks "
                f"{' or '.join(repr(k) for k in _RESPONSE_KEYS[verb])}: {document!r:.200}",
                status=200,
                url=self.base_url + path,
            )
        return document

    # model management

    async def status(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> list[ModelVersionStatus]:
        """``GET /v1/models/{model}[...]``: the state of each (or the given) version."""
        path = model_path(model, version=version, label=label)
        document = await self._call("GET", path, None, timeout_s)
        try:
            return parse_model_status(document)
        except GarbageResponse as exc:
            raise GarbageResponse(
                f"{exc} (from {self.base_url + path})", status=200, url=self.base_url + path
            ) from None

    async def metadata(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """``GET .../metadata``: ``model_spec`` and ``metadata.signature_def`` as sent."""
        path = model_path(model, version=version, label=label, suffix="/metadata")
        document = await self._call("GET", path, None, timeout_s)
        if not isinstance(document, dict) or "model_spec" not in document:
            raise GarbageResponse(
                f"metadata response lacks 'model_spec': {document!r:.200}",
                status=200,
                url=self.base_url + path,
            )
        return document

    # transport

    async def _read_bounded(self, response: aiohttp.ClientResponse, url: str) -> bytes:
        """The body, read in chunks and refused once past ``max_response_bytes``: a body
        without a length (chunked, or endless) must not fill memory before the timeout."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise GarbageResponse(
                    f"response from {url} exceeds {self.max_response_bytes} bytes",
                    status=response.status,
                    url=url,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _call(
        self,
        method: Literal["GET", "POST"],
        path: str,
        data: bytes | None,
        timeout_s: float | None,
        *,
        finite: bool = False,
    ) -> Any:
        """One HTTP exchange; every aiohttp failure is translated here. ``finite``: an
        answer holding NaN or ±Infinity raises :class:`NonFiniteOutput` (inference
        outputs, which results carry as JSON)."""
        session = self._session
        if session is None or session.closed:
            raise ConfigurationError("TFServingClient is not started")
        total = self.timeout_s if timeout_s is None else timeout_s
        if total <= 0:
            raise DeadlineExceeded(
                "no time left for the call", status=None, url=self.base_url + path
            )
        connect = total if self.connect_timeout_s is None else min(self.connect_timeout_s, total)
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=connect)
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            # No redirects: an executor is called only at its registered (and vetted)
            # endpoint, never sent on to wherever its answer points.
            async with session.request(
                method,
                URL(url, encoded=True),
                data=data,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                if (
                    response.content_length is not None
                    and response.content_length > self.max_response_bytes
                ):
                    raise GarbageResponse(
                        f"response of {response.content_length} bytes from {url} exceeds "
                        f"{self.max_response_bytes}",
                        status=status,
                        url=url,
                    )
                if 300 <= status < 400:
                    target = response.headers.get("Location", "?")[:200]
                    raise GarbageResponse(
                        f"HTTP {status} from {url}: redirect to {target} not followed "
                        "(executors answer at their registered endpoint)",
                        status=status,
                        url=url,
                    )
                raw = await self._read_bounded(response, url)
        except TFServingError:
            raise
        except TimeoutError:
            # Checked first: aiohttp's timeout errors are also connection errors.
            raise DeadlineExceeded(
                f"{method} {url}: no answer within {total:g}s", status=None, url=url
            ) from None
        except aiohttp.InvalidURL as exc:
            raise ConfigurationError(f"invalid executor URL {url!r}: {exc}") from exc
        except aiohttp.ClientResponseError as exc:
            # The server spoke broken HTTP (bad status line, oversized headers).
            raise GarbageResponse(
                f"{method} {url}: malformed HTTP response: {exc}", status=None, url=url
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ExecutorUnavailable(
                f"{method} {url}: {type(exc).__name__}: {exc}", status=None, url=url
            ) from exc

        if status >= 400:
            raise error_for_status(status, _error_message(raw), url=url)
        try:
            return decode_finite_json(raw) if finite else decode_json(raw)
        except NonFiniteOutput as exc:
            raise NonFiniteOutput(
                f"HTTP {status} from {url}: {exc}", status=status, url=url
            ) from None
        except ValueError:
            raise GarbageResponse(
                f"HTTP {status} from {url} is not JSON: {raw[:200]!r}", status=status, url=url
            ) from None


def _with_signature(body: Mapping[str, Any], signature_name: str | None) -> Mapping[str, Any]:
    if signature_name is None:
        return body
    return {**body, "signature_name": signature_name}


def _examples_body(
    verb: str,
    body: Mapping[str, Any] | None,
    examples: Sequence[Mapping[str, Any]] | None,
    context: Mapping[str, Any] | None,
) -> Mapping[str, Any]:
    if body is not None:
        if examples is not None or context is not None:
            raise ConfigurationError(f"give {verb} a body or examples=/context=, not both")
        return body
    if examples is None:
        raise ConfigurationError(f"{verb} needs a body or examples=")
    built: dict[str, Any] = {"examples": [dict(e) for e in examples]}
    if context is not None:
        built["context"] = dict(context)
    return built


def _error_message(raw: bytes) -> str:
    """The ``error`` text of an error body, or the body itself when it is not that JSON."""
    try:
        document = decode_json(raw)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    text = raw[:500].decode("utf-8", errors="replace").strip()
    return text or "(empty body)"
