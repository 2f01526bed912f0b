"""Client of the Open Inference Protocol v2 REST API (MLServer, Triton, KServe).

Endpoints used: ``GET /v2/health/ready`` (server), ``GET /v2/models/{name}[/versions/
{v}]/ready`` (model), ``GET /v2/models/{name}[/versions/{v}]`` (metadata) and
``POST /v2/models/{name}[/versions/{v}]/infer`` with typed tensors.

Failures are the typed errors of :mod:`mulambda.executors.tfserving` (same statuses,
same ``retriable``): the transport is that module's, so a refused connection, a timeout
or a 503 mean the same whichever protocol an executor speaks. :meth:`OIPClient.infer`
takes and returns bodies in either dialect, converting per
:mod:`mulambda.executors.oip_tensors`; :meth:`OIPClient.status` reads readiness into
TF-Serving-style version states, so the companion watches both kinds alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from mulambda.errors import ConfigurationError
from mulambda.executors.oip_tensors import (
    is_oip_body,
    oip_request_from_tf,
    tf_output_from_oip,
)
from mulambda.executors.tfserving import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    BadRequest,
    ExecutorUnavailable,
    GarbageResponse,
    ModelVersionStatus,
    TFServingClient,
    encode_json,
)
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.events import ModelState

__all__ = ["OIPClient", "oip_model_path"]

_NOT_READY_STATUSES: Final = (400, 503)
"""Answers of a ready endpoint that mean "not ready" rather than "broken"."""


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


class OIPClient(Lifecycle):
    """Pooled async client of one OIP v2 REST endpoint; arguments as
    :class:`~mulambda.executors.tfserving.TFServingClient`'s (``session`` shared, never
    closed; ``timeout_s`` bounds each whole call)."""

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
        # The HTTP exchange and its error mapping are TF Serving's client's, so both
        # protocols fail alike.
        self._http = TFServingClient(
            base_url,
            session=session,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            limit=limit,
            limit_per_host=limit_per_host,
            keepalive_timeout_s=keepalive_timeout_s,
            max_response_bytes=max_response_bytes,
        )
        self.base_url = self._http.base_url

    @property
    def started(self) -> bool:
        """Whether calls can be made."""
        return self._http.started

    async def start(self) -> None:
        """Open the pooled session (no-op when started or given a session)."""
        await self._http.start()

    async def stop(self) -> None:
        """Close the session this client opened; idempotent."""
        await self._http.stop()

    async def _get(self, path: str, timeout_s: float | None) -> Any:
        return await self._http._call("GET", path, None, timeout_s)

    # --- inference ---------------------------------------------------------------

    async def infer_tensors(
        self,
        model: str,
        body: Mapping[str, Any],
        *,
        version: int | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """POST an OIP infer ``body`` and return the response document (with ``outputs``)."""
        path = oip_model_path(model, version=version, suffix="/infer")
        try:
            data = encode_json(body)
        except TypeError as exc:
            raise ConfigurationError(f"infer body is not JSON-serialisable: {exc}") from None
        document = await self._http._call("POST", path, data, timeout_s, finite=True)
        if not isinstance(document, dict) or not isinstance(document.get("outputs"), list):
            raise GarbageResponse(
                f"infer response from {self.base_url} lacks 'outputs': {document!r:.200}",
                status=200,
                url=self.base_url + path,
            )
        return document

    async def infer(
        self,
        verb: str,
        model: str,
        body: Mapping[str, Any],
        *,
        version: int | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Infer with a body in either dialect; the answer is in the body's dialect.

        An OIP body goes as is (``verb`` must be predict); a TF Serving body is converted
        to tensors and the OIP outputs back to ``predictions``/``outputs``.
        """
        if is_oip_body(body):
            if verb != "predict":
                raise BadRequest(f"an OIP tensor body cannot be sent as {verb!r}")
            return await self.infer_tensors(model, body, version=version, timeout_s=timeout_s)
        response = await self.infer_tensors(
            model, oip_request_from_tf(verb, body), version=version, timeout_s=timeout_s
        )
        return tf_output_from_oip(body, response)

    # --- health and metadata -----------------------------------------------------

    async def server_ready(self, *, timeout_s: float | None = None) -> bool:
        """``GET /v2/health/ready``: whether the server is ready to infer."""
        return await self._ready("/v2/health/ready", timeout_s)

    async def model_ready(
        self, model: str, version: int | None = None, *, timeout_s: float | None = None
    ) -> bool:
        """``GET /v2/models/{model}[/versions/{v}]/ready``: whether the model is ready."""
        return await self._ready(oip_model_path(model, version=version, suffix="/ready"), timeout_s)

    async def _ready(self, path: str, timeout_s: float | None) -> bool:
        # Ready endpoints answer 200 (ready) or an error status (not ready), the body
        # being optional: MLServer sends an empty one. An unknown model stays
        # ModelNotFound, as on TF Serving.
        try:
            await self._http._call("GET", path, None, timeout_s)
        except GarbageResponse as exc:
            if exc.status == 200:
                return True
            raise
        except (BadRequest, ExecutorUnavailable) as exc:
            if exc.status in _NOT_READY_STATUSES:
                return False
            raise
        return True

    async def metadata(
        self, model: str, version: int | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """``GET /v2/models/{model}[/versions/{v}]``: name, versions, platform, inputs,
        outputs as the server sends them."""
        path = oip_model_path(model, version=version)
        document = await self._get(path, timeout_s)
        if not isinstance(document, dict) or "name" not in document:
            raise GarbageResponse(
                f"model metadata lacks 'name': {document!r:.200}",
                status=200,
                url=self.base_url + path,
            )
        return document

    async def status(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> list[ModelVersionStatus]:
        """Readiness as TF Serving's version states: one entry, AVAILABLE when the server
        and the model are ready, LOADING when the server is but the model is not.

        ``label`` exists for the companion's sake and must be None (OIP has no labels).
        An unreachable server raises, as TF Serving's status read does.
        """
        if label is not None:
            raise ConfigurationError("the Open Inference Protocol has no version labels")
        number = version if version is not None else 0
        if not await self.server_ready(timeout_s=timeout_s):
            return [
                ModelVersionStatus(
                    number, ModelState.UNKNOWN, "UNAVAILABLE", "server is not ready (v2/health)"
                )
            ]
        if await self.model_ready(model, version, timeout_s=timeout_s):
            return [ModelVersionStatus(number, ModelState.AVAILABLE)]
        return [ModelVersionStatus(number, ModelState.LOADING, "UNAVAILABLE", "model not ready")]
