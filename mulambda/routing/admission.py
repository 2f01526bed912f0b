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
    slot after ``ahead + 1`` releases. How fast slots are released is measured: the rate
    over each run of ``concurrency`` consecutive releases, and the estimate takes the
    best such rate of the last ``memory_s`` seconds. Once it has a slot a request needs
    about a route's time itself (its selection and call), and at least ``margin_s``: it
    is shed when the wait leaves less than that before its deadline. Otherwise it would
    reach a slot only to time out in its executor call, after waiting out its whole
    deadline, and load the executor for nothing. A route's time is a low quantile (the
    10th percentile) of the last ``2 * concurrency`` holds.

    Best rate and low quantile make shedding conservative about stalls: in a broker
    failover or a selector restart every route waits a few seconds, then the queue drains
    at the usual pace. The current pace (or a mean of hold times) takes the stall for the
    executors' speed and sheds requests the drained queue would have served: it did, 24
    and 29 errors, each with more than 5 s left, in exactly-once failovers. A sustained
    overload is slow in every recent window, so after ``memory_s`` both figures are the
    executors' real pace. Until a run of releases is measured nothing is shed.
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

    def __init__(self, concurrency: int, *, margin_s: float = 0.5, memory_s: float = 5.0) -> None:
        """``concurrency``: the router's slots. ``margin_s``: the least time a request
        must have left once it gets a slot (more when routes take longer). ``memory_s``:
        how long a release rate counts towards the best one."""
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        if not memory_s > 0:
            raise ConfigurationError(f"memory_s must be positive, got {memory_s}")
        self.concurrency = concurrency
        self.margin_s = margin_s
        self.memory_s = memory_s
        self._released_at: deque[float] = deque(maxlen=max(2, concurrency))
        self._holds: deque[float] = deque(maxlen=2 * concurrency)
        # (time, rate) with rates decreasing from the left: the best of the memory is
        # the leftmost that is still recent (a sliding-window maximum, O(1) per release).
        self._best: deque[tuple[float, float]] = deque()
        self.waiting = 0
        """Requests waiting for a slot now (the router counts them in and out)."""

    def held(self, seconds: float, *, released_at: float) -> None:
        """A route released its slot at ``released_at`` (a monotonic clock's seconds)
        after holding it ``seconds``."""
        self._holds.append(max(0.0, seconds))
        times = self._released_at
        times.append(released_at)
        if len(times) == times.maxlen and times[-1] > times[0]:
            rate = (len(times) - 1) / (times[-1] - times[0])
            best = self._best
            while best and best[-1][1] <= rate:
                best.pop()
            best.append((released_at, rate))
        self._forget(released_at)

    def _forget(self, now: float) -> None:
        best = self._best
        while len(best) > 1 and best[0][0] < now - self.memory_s:
            best.popleft()

    @property
    def release_rate(self) -> float | None:
        """The best release rate of the memory (module doc); None before a run of
        ``concurrency`` releases was measured. The last one measured stays until a
        newer one replaces it: without releases there is nothing newer to go by."""
        return self._best[0][1] if self._best else None

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
