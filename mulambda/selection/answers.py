"""Answers to selection requests: the reply, whether it can be delivered, the load it adds.

The decisions behind the selector worker's request stream, without Kafka:
:class:`Answerer` turns a :class:`~mulambda.wire.events.SelectionRequest` and the view
into a :class:`~mulambda.wire.events.SelectionReply` and counts the selection as load;
:class:`ReplyTargets` vets the address a reply goes to. The worker sends the reply.

Replies
    A request whose deadline passed before the selector read it gets an ``error`` reply
    without running a policy; any other gets what
    :func:`~mulambda.selection.policies.select` answers (``ok``, ``no_candidate`` or
    ``error``), with the request's policy or the selector's default.

Leases
    A request with a :class:`~mulambda.wire.events.LeaseAsk` of ``n`` slots gets the
    rankings of ``n`` selections in one reply: slot ``i`` is ranked as of ``i *
    spacing`` from now, after the load of the slots before it was counted (and what
    expired by then swept), which is what ``n`` such requests arriving ``spacing``
    apart would have been answered. Every slot's first candidate counts as
    outstanding, as any selection's does, but not as a pending dispatch (its request
    has not come yet); the slots a router releases unused stop counting at once
    (:meth:`Answerer.release`).

Load
    Each selection counts as outstanding on the executor it ranked first until its
    estimated latency has passed twice over (1 s when it has no estimate), bounded by
    the request's deadline. Several selectors each count their own (``source`` = the
    selector id); the view takes ``max(in_flight from heartbeats, sum of outstanding)``
    and remembers each dispatch as pending until its observation comes back.

Reply addresses
    A request whose reply topic or partition does not exist cannot be answered: the
    worker dead-letters it with the reason (:class:`UndeliverableReply`), checked
    against cached partition counts instead of stalling the request loop for Kafka's
    metadata timeout or failing inside aiokafka.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from mulambda.errors import ConfigurationError, SelectionError
from mulambda.selection.policies import DEFAULT_POLICY, POLICIES, PolicyState, select
from mulambda.selection.view import ExecutorView
from mulambda.wire.codec import ReplyAddress
from mulambda.wire.events import Candidate, SelectionReply, SelectionRequest, SelectionStatus

_UNKNOWN_ESTIMATE_MS = 1000.0
"""Latency a top candidate without an estimate is expected to take."""


class UndeliverableReply(SelectionError):
    """A request whose reply topic or partition does not exist; it is dead-lettered."""


def reply_problem(address: ReplyAddress, partition_counts: Mapping[str, int]) -> str | None:
    """Why a reply cannot go to ``address`` given every topic's partition count, or None
    when it can."""
    count = partition_counts.get(address.topic)
    if count is None:
        return f"reply topic {address.topic!r} does not exist"
    if address.partition is not None and address.partition >= count:
        return (
            f"reply partition {address.partition} does not exist "
            f"({address.topic} has {count} partitions)"
        )
    return None


class ReplyTargets:
    """Partition counts of every topic, to vet reply addresses without blocking.

    aiokafka's producer waits up to its request timeout for metadata of a topic it does
    not know, so one request naming a missing reply topic would stall the request loop
    for seconds, and it asserts on a partition out of range. ``fetch`` returns every
    topic's partition count in one metadata round trip; a miss refreshes at most every
    ``min_refresh_s`` of ``clock`` (a flood of made-up topic names costs a few fetches a
    second).
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, int]]],
        *,
        min_refresh_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._fetched_at = -float("inf")
        self._refreshing: asyncio.Future[None] | None = None

    async def refresh(self) -> None:
        """Fetch the partition counts now (concurrent callers share one fetch)."""
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        self._refreshing = asyncio.get_running_loop().create_future()
        try:
            self._counts = dict(await self._fetch())
            self._fetched_at = self._clock()
        finally:
            self._refreshing.set_result(None)
            self._refreshing = None

    async def problem(self, address: ReplyAddress) -> str | None:
        """Why a reply cannot go to ``address``, or None when it can.

        A miss on counts older than ``min_refresh_s`` refreshes them first (a topic or
        partitions created since).
        """
        stale = self._clock() - self._fetched_at >= self._min_refresh_s
        if stale and reply_problem(address, self._counts) is not None:
            await self.refresh()
        return reply_problem(address, self._counts)


class Outstanding:
    """Selections not yet expected to be done, per executor (expiry times)."""

    def __init__(self) -> None:
        self._pending: dict[str, deque[float]] = {}

    def add(self, executor_id: str, until: float) -> int:
        """Count one more until ``until``; return the executor's current count."""
        queue = self._pending.setdefault(executor_id, deque())
        queue.append(until)
        return len(queue)

    def drop_latest(self, executor_id: str, count: int) -> int | None:
        """Drop the ``count`` entries expiring last; the executor's new count, or None
        when it has none."""
        queue = self._pending.get(executor_id)
        if not queue:
            return None
        for _ in range(min(count, len(queue))):
            queue.pop()
        if not queue:
            del self._pending[executor_id]
            return 0
        return len(queue)

    def sweep(self, now: float) -> dict[str, int]:
        """Drop expired entries; return the new count of every executor that changed."""
        changed: dict[str, int] = {}
        for executor_id, queue in list(self._pending.items()):
            before = len(queue)
            # Expiry times are appended in roughly increasing order; a rare late short
            # one only lingers until the longer ones before it expire.
            while queue and queue[0] <= now:
                queue.popleft()
            if len(queue) != before:
                changed[executor_id] = len(queue)
            if not queue:
                del self._pending[executor_id]
        return changed


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply and what the worker's metrics want to know about how it came about."""

    reply: SelectionReply
    compute_s: float | None
    """Time the policy took; None when none ran (the deadline had passed)."""
    candidates: int | None
    """Executors that passed the hard criteria, for an ``ok`` reply; else None."""


class Answerer:
    """Answers selection requests from a view and counts them as load (module doc)."""

    def __init__(
        self,
        *,
        selector_id: str,
        default_policy: str = DEFAULT_POLICY,
        state: PolicyState | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``state``: the policies' state across selections (round robin, RNG).
        ``timer``: the clock a policy's compute time is measured on."""
        if default_policy not in POLICIES:
            raise ConfigurationError(f"unknown default policy {default_policy!r}")
        self.selector_id = selector_id
        self.default_policy = default_policy
        self.state = state or PolicyState()
        self.outstanding = Outstanding()
        self._timer = timer

    def answer(self, view: ExecutorView, request: SelectionRequest, now: float) -> Answer:
        """The reply to ``request`` at ``now`` (epoch seconds); an ``ok`` reply's top
        candidate counts as outstanding in ``view`` from then on."""
        if request.expired(datetime.fromtimestamp(now, UTC)):
            reply = SelectionReply(
                correlation_id=request.correlation_id,
                status=SelectionStatus.ERROR,
                error="deadline passed before the selector read the request",
                selector_id=self.selector_id,
            )
            return Answer(reply, None, None)
        started = self._timer()
        reply = select(
            view,
            request,
            now,
            self.default_policy,
            state=self.state,
            selector_id=self.selector_id,
        )
        self._count_outstanding(view, request, reply, now)
        lease = request.lease
        if lease is not None and lease.slots > 1 and reply.status is SelectionStatus.OK:
            reply = self._lease(view, request, reply, now, lease.slots, lease.spacing_ms / 1000)
        compute_s = self._timer() - started
        candidates = None
        if reply.status is SelectionStatus.OK:
            candidates = len(view.candidates(request.traits, now))
        return Answer(reply, compute_s, candidates)

    def _lease(
        self,
        view: ExecutorView,
        request: SelectionRequest,
        first: SelectionReply,
        now: float,
        slots: int,
        spacing_s: float,
    ) -> SelectionReply:
        """``first`` extended to a lease: slot ``i`` ranked as of ``now + i * spacing_s``,
        with the outstanding load of the slots before it (the selections those requests
        would have had, had each asked when it came), until ``slots`` or a slot without
        an ``ok`` answer."""
        rankings = [first.candidates]
        for i in range(1, slots):
            at = now + i * spacing_s
            self.sweep(view, at)
            reply = select(
                view,
                request,
                at,
                self.default_policy,
                state=self.state,
                selector_id=self.selector_id,
            )
            if reply.status is not SelectionStatus.OK or not reply.candidates:
                break
            self._count_outstanding(view, request, reply, at, leased=True)
            rankings.append(reply.candidates)
        union: dict[str, int] = {}
        candidates: list[Candidate] = []
        for ranking in rankings:
            for candidate in ranking:
                if candidate.executor_id not in union:
                    union[candidate.executor_id] = len(candidates)
                    candidates.append(candidate)
        lease = [[union[c.executor_id] for c in ranking] for ranking in rankings]
        return first.model_copy(update={"candidates": candidates, "lease": lease})

    def sweep(self, view: ExecutorView, now: float) -> None:
        """Selections expected to be done by ``now`` stop counting as outstanding."""
        for executor_id, count in self.outstanding.sweep(now).items():
            view.set_outstanding(executor_id, count, source=self.selector_id)

    def release(self, view: ExecutorView, executor_id: str, slots: int) -> None:
        """A router will not use ``slots`` leased slots of ``executor_id``: the ones
        expected last stop counting as outstanding now."""
        count = self.outstanding.drop_latest(executor_id, slots)
        if count is not None:
            view.set_outstanding(executor_id, count, source=self.selector_id)

    def _count_outstanding(
        self,
        view: ExecutorView,
        request: SelectionRequest,
        reply: SelectionReply,
        now: float,
        *,
        leased: bool = False,
    ) -> None:
        """Count ``reply``'s top candidate as outstanding from ``now``, at most until the
        selection request's deadline. A ``leased`` slot's request comes later, with a
        deadline of its own, and is no dispatch yet (the view does not wait for its
        observation)."""
        if not reply.candidates:
            return
        top = reply.candidates[0]
        expected_s = 2 * (top.estimated_latency_ms or _UNKNOWN_ESTIMATE_MS) / 1000
        until = now + expected_s
        if not leased:
            until = min(until, request.deadline.timestamp())
        count = self.outstanding.add(top.executor_id, until)
        view.set_outstanding(top.executor_id, count, source=self.selector_id, dispatched=not leased)
