"""What the producer SDK decides about results, without I/O.

- :class:`InferenceFailed`: the typed error an error result becomes
  (:func:`raise_for_result`), with the router's reason and the executor's HTTP status.
- :class:`SeenIds`: a bounded memory of request ids, oldest forgotten first.
- :class:`ResultSieve`: what becomes of a result no call awaits: yielded, dropped as a
  duplicate (results are delivered at least once; see the README's "Delivery
  guarantees"), or dropped as late (its call timed out).
- :func:`seconds_until` and :func:`request_body`: the SDK's ``deadline`` and
  ``body``/``inputs``/``instances`` arguments turned into what the wire models want.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

from mulambda.errors import ConfigurationError, MulambdaError
from mulambda.wire.codec import non_finite_path
from mulambda.wire.events import InferenceResult, InferenceStatus, utcnow

SEEN_MEMORY = 100_000
"""Result ids remembered for duplicate suppression (about 10 MB at most)."""

RETRIABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Executor HTTP statuses after which the same request may succeed when sent again."""


class InferenceFailed(MulambdaError):
    """The router answered with an error result: no candidate, every executor failed,
    the deadline passed, or the request was invalid.

    ``reason`` is the router's ``error``; ``error_code`` the executor's HTTP status when
    one answered; ``result`` the whole InferenceResult. ``retriable`` when the executor
    status says trying again may help (408, 429, 5xx).
    """

    def __init__(self, result: InferenceResult) -> None:
        reason = result.error or "inference failed without a reason"
        super().__init__(reason, retriable=result.error_code in RETRIABLE_STATUSES)
        self.result = result
        """The error result as the router published it."""
        self.error_code = result.error_code
        """HTTP status from the executor, when there was one."""
        self.request_id = result.request_id
        """The request's message_id."""


def raise_for_result(result: InferenceResult) -> InferenceResult:
    """``result`` when its status is ok; InferenceFailed otherwise."""
    if result.status is InferenceStatus.OK:
        return result
    raise InferenceFailed(result)


def seconds_until(deadline: float | timedelta | datetime, now: datetime | None = None) -> float:
    """Seconds left until ``deadline`` (seconds from now, a duration, or an aware time).

    ConfigurationError when that is not positive or the time has no UTC offset.
    """
    if isinstance(deadline, datetime):
        if deadline.tzinfo is None or deadline.utcoffset() is None:
            raise ConfigurationError("deadline needs a UTC offset (an aware datetime)")
        seconds = (deadline - (now or utcnow())).total_seconds()
    elif isinstance(deadline, timedelta):
        seconds = deadline.total_seconds()
    else:
        seconds = float(deadline)
    if not seconds > 0:
        raise ConfigurationError(f"deadline must lie in the future, got {seconds:g}s from now")
    return seconds


def request_body(
    body: dict[str, Any] | None, inputs: Any | None, instances: Any | None
) -> dict[str, Any]:
    """The TF Serving body: ``body`` as given, or ``{"inputs": ...}`` / ``{"instances": ...}``.

    Exactly one of the three must be given, and it must not hold NaN or Infinity
    (ConfigurationError otherwise: sent, they would arrive as ``null``).
    """
    given = [
        name
        for name, value in (("body", body), ("inputs", inputs), ("instances", instances))
        if value is not None
    ]
    if len(given) != 1:
        raise ConfigurationError(
            f"give exactly one of body, inputs or instances (got {', '.join(given) or 'none'})"
        )
    if body is not None:
        chosen = body
    elif inputs is not None:
        chosen = {"inputs": inputs}
    else:
        chosen = {"instances": instances}
    try:
        # orjson writes null for NaN and Infinity: only a body with a null can hold one.
        suspect = b"null" in orjson.dumps(chosen)
    except TypeError:
        suspect = False  # not JSON at all: the request's validation says so
    where = non_finite_path(chosen) if suspect else None
    if where is not None:
        raise ConfigurationError(
            f"the body holds a non-finite number, which JSON on Kafka cannot carry: {where}"
        )
    return chosen


class SeenIds:
    """The last ``capacity`` ids seen; :meth:`first_time` is True once per id.

    An id forgotten (more than ``capacity`` newer ids since) counts as new again: the
    memory bounds duplicate suppression to the most recent results.
    """

    def __init__(self, capacity: int = SEEN_MEMORY) -> None:
        if capacity < 1:
            raise ConfigurationError(f"seen-id memory must be >= 1, got {capacity}")
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        """Remember ``key`` (as the newest)."""
        self._ids[key] = None
        self._ids.move_to_end(key)
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def first_time(self, key: str) -> bool:
        """Whether ``key`` is new; it is remembered either way."""
        new = key not in self._ids
        self.add(key)
        return new


class Fate(StrEnum):
    """What :class:`ResultSieve` decides for a result no call awaits."""

    DELIVER = "deliver"
    """New: yield it from ``results()``."""
    DUPLICATE = "duplicate"
    """A second copy of a result already returned by ``infer`` or yielded."""
    LATE = "late"
    """The result of an ``infer`` call that already raised RequestTimeout."""


class ResultSieve:
    """Tells new results from duplicates and late ones, by ``request_id``.

    The client tells it which request ids ``infer`` calls sent (:meth:`awaiting`, before
    sending: the result may be read before the send returns) and which of those timed
    out (:meth:`abandoned`); :meth:`judge` then decides each result no call awaits. A
    result without ``request_id`` (builds before it existed) cannot be told apart and is
    always delivered. Each memory holds the last ``memory`` ids.
    """

    def __init__(self, memory: int = SEEN_MEMORY) -> None:
        self._awaited = SeenIds(memory)
        self._abandoned = SeenIds(memory)
        self._delivered = SeenIds(memory)

    def awaiting(self, request_id: str) -> None:
        """An ``infer`` call sends the request ``request_id`` and awaits its result."""
        self._awaited.add(request_id)

    def abandoned(self, request_id: str) -> None:
        """The ``infer`` call for ``request_id`` gave up (RequestTimeout)."""
        self._abandoned.add(request_id)

    def judge(self, result: InferenceResult) -> Fate:
        """The fate of ``result``, which no call awaits; a delivered id is remembered."""
        request_id = result.request_id
        if request_id is None:
            return Fate.DELIVER
        if request_id in self._abandoned:
            return Fate.LATE
        if request_id in self._awaited or not self._delivered.first_time(request_id):
            return Fate.DUPLICATE
        return Fate.DELIVER


__all__ = [
    "RETRIABLE_STATUSES",
    "SEEN_MEMORY",
    "Fate",
    "InferenceFailed",
    "ResultSieve",
    "SeenIds",
    "raise_for_result",
    "request_body",
    "seconds_until",
]
