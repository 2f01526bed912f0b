"""How one inference request is routed, decided without doing any I/O.

:class:`Route` is a small state machine the router worker drives. It says what to do
next as a :data:`Step` (:class:`Select` candidates, :class:`Call` one of them, or
:class:`Finished` with the result) and is told how each step went (``selected``,
``selection_failed``, ``call_failed``, ``call_succeeded``). It decides everything
between receipt and the result: error results for a passed deadline, no candidate or a
failed selection; each call's timeout from the remaining deadline; failover down the
ranked candidates on retriable errors and the stop on the first non-retriable one; the
final :class:`~mulambda.wire.events.InferenceResult` with its attempts, error code,
reason and where its ranking came from. The worker only sends and receives.

Selection
    The first try waits at most ``selection_timeout_s`` (less when the deadline is
    nearer). When a try fails, a recent ranking for the same kind of request (a
    :class:`~mulambda.routing.rankings.RankingCache`) is used at once (the result says
    ``selection="cached"``), so requests keep being served while the selector fails
    over. Without one, a retriable failure (no reply in time, Kafka unavailable) is
    retried while the deadline allows: each try waits at most ``selection_timeout_s``
    and ends ``call_margin_s`` before the deadline, leaving that for the executor call;
    a try starts at least :data:`SELECTION_RETRY_INTERVAL_S` after the one before (a
    quick failure does not spin). A ranking the selector sent is remembered for later
    requests and says ``selection="fresh"``; one the router's selection lease gave
    (:meth:`Route.leased`, no round trip) says ``selection="leased"``.

Failover across processes
    A call refused or dropped without a response makes its endpoint suspect
    (:class:`~mulambda.routing.suspects.SuspectEndpoints`, shared by the router's
    routes): the next call goes to the best candidate behind an endpoint that is not
    suspect, and only when none is left to the ones behind suspect endpoints. A dead
    process serving several of the ranked executors so costs one failed attempt.

Also here: :func:`input_size_of` (the input size the selection is asked for) and
:func:`error_result`, the one builder of error results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from mulambda.errors import ExecutorError, MulambdaError
from mulambda.routing.rankings import RankingCache
from mulambda.routing.suspects import SuspectEndpoints, endpoint_of, is_unreachable
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
    if isinstance(inputs, list):
        rows = _oip_rows(inputs)
        return len(inputs) if rows is None else rows
    return 1


def _oip_rows(inputs: list[Any]) -> int | None:
    """Rows of an OIP v2 body (``inputs``: typed tensors {name, shape, datatype, data}):
    the first dimension of the first tensor's shape, 1 for a scalar; None when the list
    is not OIP tensors (a TF Serving row list, say)."""
    first = inputs[0] if inputs else None
    if not isinstance(first, dict):
        return None
    shape = first.get("shape")
    if not isinstance(shape, list):
        return None
    if not shape:
        return 1  # a scalar tensor: one element
    rows = shape[0]
    # bool is an int subclass; a negative or boolean dimension is not a row count.
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        return None
    return rows


Selection = Literal["fresh", "leased", "cached"]
"""Where the candidates of a route came from (``InferenceResult.selection``)."""

CALL_MARGIN_S = 0.5
"""Default time a selection retry leaves before the deadline for the executor call."""

MIN_SELECTION_TRY_S = 0.05
"""A selection retry that could wait less than this is not made."""

SELECTION_RETRY_INTERVAL_S = 0.25
"""Least time between the starts of two selection tries of one request."""


def error_result(
    correlation_id: str,
    reason: str,
    *,
    code: int | None = None,
    attempts: int = 0,
    selection: Selection | None = None,
) -> InferenceResult:
    """The error answer to request ``correlation_id``: ``reason``, the executor's HTTP
    status ``code`` when one answered, the executors tried and where their ranking came
    from."""
    return InferenceResult(
        correlation_id=correlation_id,
        status=InferenceStatus.ERROR,
        error=reason,
        error_code=code,
        attempts=attempts,
        selection=selection,
    )


@dataclass(frozen=True, slots=True)
class Select:
    """Ask the selector for candidates for ``input_size`` elements, within ``timeout_s``,
    after waiting ``delay_s`` (a retry soon after a quick failure)."""

    input_size: int
    timeout_s: float
    delay_s: float = 0.0


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
    ``rankings`` and ``suspects`` are the router's memory across requests (see the
    module docstring); without them a route remembers nothing beyond itself.
    Outcomes reported out of turn (a call outcome while selecting, anything once
    finished) raise MulambdaError: they are bugs in the caller.
    """

    def __init__(
        self,
        request: InferenceRequest,
        *,
        selection_timeout_s: float,
        call_timeout_s: float,
        call_margin_s: float = CALL_MARGIN_S,
        rankings: RankingCache | None = None,
        suspects: SuspectEndpoints | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.request = request
        """The request being routed."""
        self.input_size = input_size_of(request)
        """Elements in its input, as the selection and latency feedback report it."""
        self.attempts = 0
        """Executors called so far."""
        self.selection_tries = 0
        """Selections asked for so far."""
        self.selection: Selection | None = None
        """Where the candidates came from, once there are candidates."""
        self._selection_timeout_s = selection_timeout_s
        self._call_timeout_s = call_timeout_s
        self._call_margin_s = call_margin_s
        self._rankings = rankings
        # Without the router's, suspicion still steers this route's own failover.
        self._suspects = suspects if suspects is not None else SuspectEndpoints(expiry_s=math.inf)
        self._now = now
        self._candidates: list[Candidate] = []
        self._last_error: MulambdaError | None = None
        self._selecting_since = now()
        if request.expired(self._selecting_since):
            self._step: Step = self._error("deadline passed before the request was routed")
        else:
            remaining = self._remaining_s(self._selecting_since)
            self.selection_tries = 1
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
            if self._rankings is not None:
                self._rankings.forget(self.request)
            self._step = self._error(
                f"no candidate (eliminated by {reply.eliminated_by or 'unknown'}): "
                f"{reply.error or 'no executor passed the criteria'}"
            )
        elif reply.status is not SelectionStatus.OK or not reply.candidates:
            self._step = self._error(f"selection failed: {reply.error or 'no candidates returned'}")
        else:
            if self._rankings is not None:
                self._rankings.remember(self.request, reply.candidates, self._clock_s())
            self._use(list(reply.candidates), "fresh")

    def leased(self, candidates: Sequence[Candidate]) -> None:
        """A slot of the router's selection lease ranked ``candidates`` for this request
        (routing/leases.py): call the best, as for a fresh selection."""
        self._expect(Select, "a leased ranking")
        if not candidates:
            raise MulambdaError(f"route of {self.request.correlation_id}: an empty lease slot")
        self._use(list(candidates), "leased")

    def selection_failed(self, error: MulambdaError) -> None:
        """No selection reply (timeout, an undecodable reply, Kafka down): use a recent
        ranking, else retry while the deadline allows, else finish with why."""
        self._expect(Select, "a selection failure")
        now = self._now()
        cached = (
            self._rankings.recall(self.request, now.timestamp())
            if self._rankings is not None
            else None
        )
        if cached:
            self._use(list(cached), "cached")
            return
        retry = self._next_selection(now) if error.retriable else None
        if retry is not None:
            self._step = retry
            return
        # The client hears why now rather than waiting out its deadline.
        tries = self.selection_tries
        prefix = "selection failed" if tries == 1 else f"selection failed after {tries} tries"
        self._step = self._error(f"{prefix}: {error.reason}")

    def call_failed(self, error: MulambdaError) -> bool:
        """The current candidate failed with ``error``; True when that fails over.

        ExecutorError says whether another executor may succeed; any other error (a
        registration TF Serving cannot address) is not retriable. A retriable error
        moves on to the next candidate while one is left and the deadline has not
        passed; a non-retriable one ends the route. A refused or dropped connection
        also makes the candidate's endpoint suspect.
        """
        call = self._expect(Call, "a call failure")
        self._last_error = error
        if is_unreachable(error):
            self._suspects.mark(endpoint_of(call.candidate.endpoint), self._clock_s())
        if not error.retriable:
            self._step = self._failed()
            return False
        self._step = self._next_call()
        return True

    def call_succeeded(self, output: dict[str, Any], call_ms: float | None = None) -> None:
        """The current candidate answered with ``output`` (in ``call_ms``): the route is
        done."""
        call = self._expect(Call, "a call success")
        candidate = call.candidate
        self._suspects.clear(endpoint_of(candidate.endpoint))
        self._step = Finished(
            InferenceResult(
                correlation_id=self.request.correlation_id,
                status=InferenceStatus.OK,
                executor_id=candidate.executor_id,
                model_name=candidate.model_name,
                output=output,
                call_ms=call_ms,
                attempts=self.attempts,
                selection=self.selection,
            )
        )

    # --- decisions ---------------------------------------------------------------

    def _use(self, candidates: list[Candidate], selection: Selection) -> None:
        self._candidates = candidates
        self.selection = selection
        self._step = self._next_call()

    def _next_selection(self, now: datetime) -> Select | None:
        since_last = (now - self._selecting_since).total_seconds()
        delay = max(0.0, SELECTION_RETRY_INTERVAL_S - since_last)
        timeout = min(
            self._remaining_s(now) - delay - self._call_margin_s, self._selection_timeout_s
        )
        if timeout < MIN_SELECTION_TRY_S:
            return None
        self.selection_tries += 1
        self._selecting_since = now + timedelta(seconds=delay)  # when the try begins
        return Select(self.input_size, timeout, delay)

    def _next_call(self) -> Step:
        now = self._now()
        remaining = self._remaining_s(now)
        if not self._candidates or remaining <= 0:
            return self._failed()
        index = self._suspects.pick(self._candidates, now.timestamp())
        if index is None:
            return self._failed()
        candidate = self._candidates.pop(index)
        self.attempts += 1
        return Call(candidate, min(remaining, self._call_timeout_s), self.attempts)

    def _remaining_s(self, now: datetime) -> float:
        return (self.request.deadline - now).total_seconds()

    def _clock_s(self) -> float:
        return self._now().timestamp()

    def _failed(self) -> Finished:
        last = self._last_error
        reason = last.reason if last is not None else "deadline passed during failover"
        return self._error(
            f"all {self.attempts} candidate(s) failed; last: {reason}",
            code=last.status if isinstance(last, ExecutorError) else None,
        )

    def _error(self, reason: str, *, code: int | None = None) -> Finished:
        return Finished(
            error_result(
                self.request.correlation_id,
                reason,
                code=code,
                attempts=self.attempts,
                selection=self.selection,
            )
        )

    def _expect(self, kind: type[_S], outcome: str) -> _S:
        step = self._step
        if not isinstance(step, kind):
            raise MulambdaError(
                f"route of {self.request.correlation_id}: {outcome} reported "
                f"while the step is {type(step).__name__}"
            )
        return step
