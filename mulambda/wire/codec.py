"""Bytes ↔ messages: JSON via orjson and pydantic, validated against the event models.

Pure: no Kafka here. Decoding failures raise :class:`~mulambda.errors.DecodeError` whose
message is the dead-letter reason.

Decoding is strict about JSON types: ``"5"`` is not an integer, ``5.0`` not a count, a
number not a timestamp. What the published JSON Schemas (``topics/schemas``) accept is
what :func:`decode` accepts, bar the few rules a schema cannot state (a deadline's UTC
offset, a body's payload key), which ``tests/unit/wire/test_schemas.py`` lists.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from mulambda.errors import DecodeError, OversizeError
from mulambda.wire.events import WireModel

M = TypeVar("M", bound=WireModel)

DEFAULT_MAX_RECORD_BYTES = 1_048_576
"""Kafka's default ``max.message.bytes``; larger bodies are refused before parsing."""

MAX_STATE_RECORD_BYTES = 64 * 1024
"""Bound on state records (registrations, status, latencies): they are small (a
registration's longest fields are its 500-character endpoint and 200-character ids);
larger ones are refused unread by every reader, live and on replay alike."""


def encode(message: WireModel) -> bytes:
    """Serialise a message to compact JSON bytes."""
    return message.__pydantic_serializer__.to_json(message)


def encode_key(key: str | bytes | None) -> bytes | None:
    """Record keys travel as UTF-8."""
    if key is None or isinstance(key, bytes):
        return key
    return key.encode()


def decode(model: type[M], data: bytes | None, *, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> M:
    """Parse and validate ``data`` as ``model``; raise DecodeError with a readable reason."""
    if data is None:
        raise DecodeError(f"empty record: expected a {model.type_name}")
    if len(data) > max_bytes:
        raise OversizeError(f"record of {len(data)} bytes exceeds the {max_bytes}-byte bound")
    try:
        return model.model_validate_json(data, strict=True)
    except ValidationError as exc:
        raise DecodeError(describe_validation_error(model, exc)) from exc


def describe_validation_error(model: type[WireModel], exc: ValidationError) -> str:
    """One line naming every failing field, or saying the bytes are not JSON at all."""
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return f"not valid JSON: {errors[0]['msg']}"
    if any(e["type"] == "model_type" and not e["loc"] for e in errors):
        return f"not a JSON object: expected a {model.type_name}"
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors]
    return f"invalid {model.type_name}: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class ReplyAddress:
    """Where the answer to a request goes, read from a body that may be invalid."""

    topic: str
    partition: int | None
    correlation_id: str
    message_id: str | None = None
    """The request's own id, when readable (echoed as the answer's ``request_id``)."""


def peek_reply_address(
    data: bytes | None, *, max_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> ReplyAddress | None:
    """Best-effort read of reply_topic/partition/correlation_id from a rejected request.

    An invalid request still gets an error reply when these three can be read; otherwise
    the caller dead-letters it.
    """
    if data is None or len(data) > max_bytes:
        return None
    try:
        body: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        # pydantic accepts NaN/Infinity tokens (then rejects the value, e.g. a NaN
        # weight); orjson refuses them. Such a request is still answerable.
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            return None
    if not isinstance(body, dict):
        return None
    topic, corr, part = (
        body.get("reply_topic"),
        body.get("correlation_id"),
        body.get("reply_partition"),
    )
    if not (isinstance(topic, str) and topic and isinstance(corr, str) and corr):
        return None
    if len(topic) > 249 or len(corr) > 64:
        return None
    partition = part if isinstance(part, int) and not isinstance(part, bool) and part >= 0 else None
    message_id = body.get("message_id")
    if not (isinstance(message_id, str) and 0 < len(message_id) <= 64):
        message_id = None
    return ReplyAddress(topic, partition, corr, message_id)


def non_finite_path(value: Any, path: str = "") -> str | None:
    """Where the first NaN or ±Infinity in a decoded JSON document is (``a.b[2]``: the
    path and the value), or None when every number is finite. JSON cannot carry them:
    pydantic and orjson would write ``null`` instead, silently."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path or '<root>'} = {value}"
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_path(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = non_finite_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
