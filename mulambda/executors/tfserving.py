"""Client of the TensorFlow Serving REST API.

The protocol (errors per status, JSON codec, status documents, URLs) is
:mod:`mulambda.protocols.tfserving`; the HTTP exchange is :class:`~mulambda.executors.
http.HttpClient`'s, shared with the OIP client. This module adds TF Serving's calls:
``:predict``/``:classify``/``:regress``, version status and metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mulambda.errors import ConfigurationError
from mulambda.executors.http import HttpClient
from mulambda.protocols.tfserving import (
    RESPONSE_KEYS,
    GarbageResponse,
    ModelVersionStatus,
    model_path,
    parse_model_status,
)
from mulambda.wire.events import InferenceVerb

__all__ = ["TFServingClient"]


class TFServingClient(HttpClient):
    """Pooled async client of one TF Serving REST endpoint; arguments, session sharing
    and timeouts as :class:`~mulambda.executors.http.HttpClient`'s."""

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
        if verb not in RESPONSE_KEYS:
            raise ConfigurationError(f"unknown TF Serving verb {verb!r}")
        keys = RESPONSE_KEYS[verb]
        return await self._document(
            "POST",
            model_path(model, version=version, label=label, suffix=f":{verb}"),
            body,
            timeout_s,
            accept=lambda document: any(k in document for k in keys),
            lacks=f"{verb} response from {self.base_url} lacks "
            f"{' or '.join(repr(k) for k in keys)}",
            what=verb,
        )

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
        return await self._document(
            "GET",
            model_path(model, version=version, label=label, suffix="/metadata"),
            None,
            timeout_s,
            accept=lambda document: "model_spec" in document,
            lacks="metadata response lacks 'model_spec'",
        )


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
