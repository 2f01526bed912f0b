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
    A route's time is a low quantile (the 10th percentile) of the last
    ``2 * concurrency`` holds of a slot. With every slot busy, a slot frees up on
    average every ``route / concurrency`` seconds, so a request with ``ahead`` requests
    queued before it (FIFO) expects to wait ``(ahead + 1) * route / concurrency``. Once
    it has a slot it needs about a route's time itself (its selection and call), and at
    least ``margin_s``: it is shed when the wait leaves less than that before its
    deadline. Otherwise it would reach a slot only to time out in its executor call,
    after waiting out its whole deadline, and load the executor for nothing. Until a
    route has ended nothing is known, and nothing is shed.

    The low quantile makes shedding conservative about stalls. In a broker failover or
    a selector restart every route waits a few seconds, then the queue drains at the
    usual pace; the routes before the stall keep the quantile short, so the requests
    queued meanwhile wait instead of failing. A mean of the holds took the stall for
    the executors' pace, and the measured rate of releases is the arrival rate, not the
    capacity, while slots are idle: each shed requests the drained queue would have
    served (24, 29 and 117 errors, most with more than 5 s left, in broker failovers).
    Under a sustained overload every recent route is slow, and the quantile is the
    executors' real pace.
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
        self._holds: deque[float] = deque(maxlen=2 * concurrency)
        self.waiting = 0
        """Requests waiting for a slot now (the router counts them in and out)."""

    def held(self, seconds: float) -> None:
        """A route released its slot after holding it ``seconds``."""
        self._holds.append(max(0.0, seconds))

    @property
    def route_s(self) -> float | None:
        """A short route's time: the 10th percentile of the recent holds."""
        if not self._holds:
            return None
        ordered = sorted(self._holds)
        return ordered[(len(ordered) - 1) // 10]

    def expected_wait_s(self, ahead: int) -> float | None:
        """Seconds until a slot frees for a request with ``ahead`` queued before it, all
        slots busy; None while no route has ended."""
        route = self.route_s
        if route is None:
            return None
        return (ahead + 1) * route / self.concurrency

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
