"""How one inference request is routed, decided without doing any I/O.

:class:`Route` is a small state machine the router worker drives. It says what to do
next as a :data:`Step` (:class:`Select` candidates, :class:`Call` one of them, or
:class:`Finished` with the result) and is told how each step went (``selected``,
``selection_failed``, ``call_failed``, ``call_succeeded``). It decides everything
between the selection reply and the result: error results for a passed deadline, no
candidate or a failed selection; each call's timeout from the remaining deadline;
failover down the ranked candidates on retriable errors and the stop on the first
non-retriable one; the final :class:`~mulambda.wire.events.InferenceResult` with its
attempts, error code and reason. The worker only sends and receives.

Also here: :func:`input_size_of` (the input size the selection is asked for) and
:func:`error_result`, the one builder of error results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from mulambda.errors import ExecutorError, MulambdaError
from mulambda.wire.events import (
    Candidate,
    InferenceRequest,
    InferenceResult,
    InferenceStatus,
    SelectionReply,
    SelectionStatus,
    utcnow,
)


def input_size_of(request: InferenceRequest) -> int:
    """Elements in the request's input: the explicit size, else rows in the body."""
    if request.input_size is not None:
        return request.input_size
    body = request.body
    for key in ("instances", "examples"):
        rows = body.get(key)
        if isinstance(rows, list):
            return len(rows)
    inputs = body.get("inputs")
    if isinstance(inputs, dict):
        first = next(iter(inputs.values()), None)
        return len(first) if isinstance(first, list) else 1
    return len(inputs) if isinstance(inputs, list) else 1


def error_result(
    correlation_id: str, reason: str, *, code: int | None = None, attempts: int = 0
) -> InferenceResult:
    """The error answer to request ``correlation_id``: ``reason``, the executor's HTTP
    status ``code`` when one answered, and the executors tried."""
    return InferenceResult(
        correlation_id=correlation_id,
        status=InferenceStatus.ERROR,
        error=reason,
        error_code=code,
        attempts=attempts,
    )


@dataclass(frozen=True, slots=True)
class Select:
    """Ask the selector for candidates for ``input_size`` elements, within ``timeout_s``."""

    input_size: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Call:
    """Call ``candidate`` with the request, within ``timeout_s``; the ``attempt``-th call."""

    candidate: Candidate
    timeout_s: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Finished:
    """Routing is over: publish ``result``."""

    result: InferenceResult


Step = Select | Call | Finished
"""What the worker does next for a route."""

_S = TypeVar("_S", Select, Call)


class Route:
    """The routing of one request: a state machine from receipt to result.

    Read :attr:`step`, do it, report its outcome, repeat until the step is
    :class:`Finished`. ``now`` is the clock deadlines are measured against (UTC).
    Outcomes reported out of turn (a call outcome while selecting, anything once
    finished) raise MulambdaError: they are bugs in the caller.
    """

    def __init__(
        self,
        request: InferenceRequest,
        *,
        selection_timeout_s: float,
        call_timeout_s: float,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.request = request
        """The request being routed."""
        self.input_size = input_size_of(request)
        """Elements in its input, as the selection and latency feedback report it."""
        self.attempts = 0
        """Executors called so far."""
        self._call_timeout_s = call_timeout_s
        self._now = now
        self._candidates: list[Candidate] = []
        self._next_candidate = 0
        self._last_error: MulambdaError | None = None
        started = now()
        if request.expired(started):
            self._step: Step = self._error("deadline passed before the request was routed")
        else:
            remaining = (request.deadline - started).total_seconds()
            self._step = Select(self.input_size, min(remaining, selection_timeout_s))

    @property
    def step(self) -> Step:
        """What to do now."""
        return self._step

    # --- outcomes ----------------------------------------------------------------

    def selected(self, reply: SelectionReply) -> None:
        """The selector answered: call its best candidate, or finish with why not."""
        self._expect(Select, "a selection reply")
        if reply.status is SelectionStatus.NO_CANDIDATE:
            self._step = self._error(
                f"no candidate (eliminated by {reply.eliminated_by or 'unknown'}): "
                f"{reply.error or 'no executor passed the criteria'}"
            )
        elif reply.status is not SelectionStatus.OK or not reply.candidates:
            self._step = self._error(f"selection failed: {reply.error or 'no candidates returned'}")
        else:
            self._candidates = list(reply.candidates)
            self._step = self._next_call()

    def selection_failed(self, error: MulambdaError) -> None:
        """No selection reply (timeout, an undecodable reply, Kafka down)."""
        self._expect(Select, "a selection failure")
        # The client hears why now rather than waiting out its deadline.
        self._step = self._error(f"selection failed: {error.reason}")

    def call_failed(self, error: MulambdaError) -> bool:
        """The current candidate failed with ``error``; True when that fails over.

        ExecutorError says whether another executor may succeed; any other error (a
        registration TF Serving cannot address) is not retriable. A retriable error
        moves on to the next candidate while one is left and the deadline has not
        passed; a non-retriable one ends the route.
        """
        self._expect(Call, "a call failure")
        self._last_error = error
        if not error.retriable:
            self._step = self._failed()
            return False
        self._step = self._next_call()
        return True

    def call_succeeded(self, output: dict[str, Any]) -> None:
        """The current candidate answered with ``output``: the route is done."""
        call = self._expect(Call, "a call success")
        candidate = call.candidate
        self._step = Finished(
            InferenceResult(
                correlation_id=self.request.correlation_id,
                status=InferenceStatus.OK,
                executor_id=candidate.executor_id,
                model_name=candidate.model_name,
                output=output,
                attempts=self.attempts,
            )
        )

    # --- decisions ---------------------------------------------------------------

    def _next_call(self) -> Step:
        if self._next_candidate >= len(self._candidates):
            return self._failed()
        remaining = (self.request.deadline - self._now()).total_seconds()
        if remaining <= 0:
            return self._failed()
        candidate = self._candidates[self._next_candidate]
        self._next_candidate += 1
        self.attempts += 1
        return Call(candidate, min(remaining, self._call_timeout_s), self.attempts)

    def _failed(self) -> Finished:
        last = self._last_error
        reason = last.reason if last is not None else "deadline passed during failover"
        return self._error(
            f"all {self.attempts} candidate(s) failed; last: {reason}",
            code=last.status if isinstance(last, ExecutorError) else None,
        )

    def _error(self, reason: str, *, code: int | None = None) -> Finished:
        return Finished(
            error_result(self.request.correlation_id, reason, code=code, attempts=self.attempts)
        )

    def _expect(self, kind: type[_S], outcome: str) -> _S:
        step = self._step
        if not isinstance(step, kind):
            raise MulambdaError(
                f"route of {self.request.correlation_id}: {outcome} reported "
                f"while the step is {type(step).__name__}"
            )
        return step
