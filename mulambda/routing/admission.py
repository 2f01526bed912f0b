"""Whether a request can still get one of the router's routing slots in time.

Pure logic, no clock and no I/O: the router tells a :class:`SlotAdmission` how long each
route held its slot and how many requests wait for one, and asks it, for a request that
finds every slot taken, whether to queue it or answer it with an error at once.

Why shed at once
    A router routes ``concurrency`` requests at once; the others wait for a slot, each at
    most until its deadline. When the executors cannot keep up, the queue grows until
    requests reach the end of their deadline in it: every one of them then waits out its
    whole deadline for an error (issue 17: most of 1,135 errors after the full 10 s), and
    one that gets a slot just before has too little time left to be served, so its call
    only adds load. A request that the queue cannot reach before its deadline is better
    told so now: the client learns it in milliseconds and can go elsewhere.

The estimate
    With every slot busy, a request with ``ahead`` requests queued before it (FIFO) gets a
    slot after ``ahead + 1`` releases. How fast slots are released is measured, not
    derived from hold times: the rate over the last ``concurrency`` releases (their
    count over the time they spanned). Once it has a slot a request needs about a route's
    time itself (its selection and call), and at least ``margin_s``: it is shed when the
    wait leaves less than that before its deadline. Otherwise it would reach a slot only
    to time out in its executor call, after waiting out its whole deadline, and load the
    executor for nothing. A route's time is a low quantile (the 10th percentile) of the
    last ``2 * concurrency`` holds.

    Both are robust to a stall that is over (a broker failover, a selector restart):
    routes stuck in it end together with long holds, but their releases come in a burst,
    so the measured rate is high, and the routes before the stall keep the low quantile
    short. A mean of hold times would take the stall for the executors' speed and shed
    requests that the drained queue would have served (it did, 24 errors in an
    exactly-once failover). Under a sustained overload every recent route is slow, and
    both figures are the executors' real pace. Until two routes have ended nothing is
    known, and nothing is shed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mulambda.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Shed:
    """A request answered at once: the queue cannot reach it before its deadline."""

    expected_wait_s: float
    remaining_s: float
    waiting: int
    concurrency: int

    @property
    def reason(self) -> str:
        """The error result's reason."""
        return (
            f"router overloaded: all {self.concurrency} routing slots busy and "
            f"{self.waiting} requests queued; the expected wait of "
            f"{self.expected_wait_s:.2f} s leaves too little of the "
            f"{max(0.0, self.remaining_s):.2f} s before the deadline"
        )


class SlotAdmission:
    """The router's view of its routing slots (module doc); one per router."""

    def __init__(self, concurrency: int, *, margin_s: float = 0.5) -> None:
        """``concurrency``: the router's slots. ``margin_s``: the least time a request
        must have left once it gets a slot (more when routes take longer)."""
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self.margin_s = margin_s
        self._released_at: deque[float] = deque(maxlen=max(2, concurrency))
        self._holds: deque[float] = deque(maxlen=2 * concurrency)
        self.waiting = 0
        """Requests waiting for a slot now (the router counts them in and out)."""

    def held(self, seconds: float, *, released_at: float) -> None:
        """A route released its slot at ``released_at`` (a monotonic clock's seconds)
        after holding it ``seconds``."""
        self._holds.append(max(0.0, seconds))
        self._released_at.append(released_at)

    @property
    def release_rate(self) -> float | None:
        """Slots released per second over the recent releases; None while fewer than two
        are known (or they came at one instant: no rate to tell)."""
        times = self._released_at
        if len(times) < 2:
            return None
        span = times[-1] - times[0]
        if span <= 0:
            return None
        return (len(times) - 1) / span

    @property
    def route_s(self) -> float | None:
        """A short route's time: the 10th percentile of the recent holds."""
        if not self._holds:
            return None
        ordered = sorted(self._holds)
        return ordered[(len(ordered) - 1) // 10]

    def expected_wait_s(self, ahead: int) -> float | None:
        """Seconds until a slot frees for a request with ``ahead`` queued before it, all
        slots busy; None while the release rate is unknown."""
        rate = self.release_rate
        if rate is None:
            return None
        return (ahead + 1) / rate

    def shed(self, remaining_s: float) -> Shed | None:
        """For a request that finds every slot busy with ``remaining_s`` to its deadline:
        a :class:`Shed` when the queue cannot reach it in time, None to queue it."""
        wait = self.expected_wait_s(self.waiting)
        route = self.route_s
        if wait is None or route is None:
            return None
        if wait <= remaining_s - max(self.margin_s, route):
            return None
        return Shed(wait, remaining_s, self.waiting, self.concurrency)
