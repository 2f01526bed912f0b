"""Client of the Open Inference Protocol v2 REST API (MLServer, Triton, KServe).

Endpoints used: ``GET /v2/health/ready`` (server), ``GET /v2/models/{name}[/versions/
{v}]/ready`` (model), ``GET /v2/models/{name}[/versions/{v}]`` (metadata) and
``POST /v2/models/{name}[/versions/{v}]/infer`` with typed tensors.

The protocol (paths, tensors, conversions) is :mod:`mulambda.protocols.oip`; the HTTP
exchange and its errors are :class:`~mulambda.executors.http.HttpClient`'s, shared with
the TF Serving client, so a refused connection, a timeout or a 503 mean the same
whichever protocol an executor speaks. :meth:`OIPClient.infer` takes and returns bodies
in either dialect; :meth:`OIPClient.status` reads readiness into TF-Serving-style
version states, so the companion watches both kinds alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from mulambda.errors import ConfigurationError
from mulambda.executors.http import HttpClient
from mulambda.protocols.oip import (
    is_oip_body,
    oip_model_path,
    oip_request_from_tf,
    tf_output_from_oip,
)
from mulambda.protocols.tfserving import (
    BadRequest,
    ExecutorUnavailable,
    GarbageResponse,
    ModelVersionStatus,
)
from mulambda.wire.events import ModelState

__all__ = ["OIPClient"]

_NOT_READY_STATUSES: Final = (400, 503)
"""Answers of a ready endpoint that mean "not ready" rather than "broken"."""


class OIPClient(HttpClient):
    """Pooled async client of one OIP v2 REST endpoint; arguments, session sharing and
    timeouts as :class:`~mulambda.executors.http.HttpClient`'s."""

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
        return await self._document(
            "POST",
            oip_model_path(model, version=version, suffix="/infer"),
            body,
            timeout_s,
            accept=lambda document: isinstance(document.get("outputs"), list),
            lacks=f"infer response from {self.base_url} lacks 'outputs'",
            what="infer",
        )

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
            await self._call("GET", path, None, timeout_s)
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
        return await self._document(
            "GET",
            oip_model_path(model, version=version),
            None,
            timeout_s,
            accept=lambda document: "name" in document,
            lacks="model metadata lacks 'name'",
        )

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
