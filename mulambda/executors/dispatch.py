"""One inference call to an executor in the protocol it speaks.

:func:`infer_on` is what the router calls per candidate: it picks the client for the
candidate's :class:`~mulambda.wire.events.ExecutorProtocol` and converts the request's
body into that protocol and the answer back (:mod:`mulambda.protocols.oip`), so
the result's ``output`` is in the request's own dialect whichever executor answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from mulambda.executors.oip import OIPClient
from mulambda.executors.tfserving import TFServingClient
from mulambda.protocols.oip import is_oip_body, oip_response_from_tf, tf_request_from_oip
from mulambda.wire.events import ExecutorProtocol, InferenceVerb

__all__ = ["infer_on"]


async def infer_on(
    protocol: ExecutorProtocol,
    endpoint: str,
    session: aiohttp.ClientSession | None,
    verb: InferenceVerb,
    model: str,
    body: Mapping[str, Any],
    *,
    version: int | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Call ``model`` at ``endpoint`` over ``session`` (shared, left open) in ``protocol``.

    Raises the typed executor errors of :mod:`mulambda.protocols.tfserving` (and
    :class:`~mulambda.protocols.oip.UnsupportedByProtocol`, retriable, for what
    the protocol cannot express).
    """
    if protocol is ExecutorProtocol.OIP_V2:
        return await OIPClient(endpoint, session=session).infer(
            verb, model, body, version=version, timeout_s=timeout_s
        )
    client = TFServingClient(endpoint, session=session)
    if is_oip_body(body):
        answer = await client.infer(
            "predict",
            model,
            tf_request_from_oip(verb, body),
            version=version,
            timeout_s=timeout_s,
        )
        return oip_response_from_tf(model, answer)
    return await client.infer(verb, model, body, version=version, timeout_s=timeout_s)
