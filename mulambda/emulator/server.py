"""A local model executor speaking TensorFlow Serving's REST API (``mulambda executor serve``).

:class:`ExecutorServer` answers the REST contract of ``tfserving_rest.md`` the way TF
Serving's REST handler does, for any :class:`~mulambda.emulator.served.ServedModel`:
synthetic ones (the prototype's dummy models, ``synthetic.py``) or real TensorFlow
SavedModels (``savedmodel.py``, needs the ``tensorflow`` extra). Production executors run
the real ``tensorflow/serving`` image; this server stands in for it in tests, benchmarks
and laptops, so a router or companion that works against it works against TF Serving.
This module holds the HTTP side: URL grammar, model lookup, status and metadata
documents, counters; request bodies are read by ``payloads.py``.

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

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote

import orjson
from aiohttp import web

from mulambda.emulator.payloads import (
    examples_payload,
    json_snippet,
    parse_document,
    predict_payload,
)
from mulambda.emulator.served import DEFAULT_SIGNATURE, ServedModel
from mulambda.errors import ConfigurationError
from mulambda.protocols.tfserving import (
    BadRequest,
    ModelNotFound,
    ModelVersionStatus,
    TFServingError,
    Unimplemented,
    encode_json,
)
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.events import ModelState

__all__ = ["STATS_PATH", "ExecutorServer"]

log = logging.getLogger(__name__)

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
        document = parse_document(raw)
        signature = document.get("signature_name", "")
        if not isinstance(signature, str):
            raise BadRequest(
                f"JSON Value: {json_snippet(document)} not formatted correctly. "
                "'signature_name' key must be a string value."
            )
        signature = signature or DEFAULT_SIGNATURE
        model = self._servable(name, version, label)
        if verb == "predict":
            _check_signature(model, signature)
            payload, row = predict_payload(document)
            value = await self._run(model, model.predict(signature, payload, row=row))
            return {"predictions": value} if row else {"outputs": value}
        context, examples = examples_payload(document, verb)
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
