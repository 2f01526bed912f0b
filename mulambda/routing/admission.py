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
    With every slot busy, a slot frees up each time a route ends, on average every
    ``mean hold / concurrency`` seconds (``mean hold``: an EWMA of how long routes held
    their slots, sheds by the selector included, since they free slots too). A request
    with ``ahead`` requests queued before it (FIFO) gets a slot after ``ahead + 1``
    releases, so it is expected to wait ``(ahead + 1) * mean hold / concurrency``. Once
    it has a slot it needs about a mean hold itself (its selection and call), and at
    least ``margin_s``: it is shed when the wait leaves less than that before its
    deadline. Otherwise it would reach a slot only to time out in its executor call,
    after waiting out its whole deadline, and load the executor for nothing. Until a
    first route has ended nothing is known, and nothing is shed.
"""

from __future__ import annotations

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

    def __init__(self, concurrency: int, *, margin_s: float = 0.5, ewma_alpha: float = 0.1) -> None:
        """``concurrency``: the router's slots. ``margin_s``: the least time a request
        must have left once it gets a slot (more when routes take longer).
        ``ewma_alpha``: weight of the latest hold time in the mean."""
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        if not 0 < ewma_alpha <= 1:
            raise ConfigurationError(f"ewma_alpha must be in (0, 1], got {ewma_alpha}")
        self.concurrency = concurrency
        self.margin_s = margin_s
        self._alpha = ewma_alpha
        self.mean_hold_s: float | None = None
        """EWMA of the time routes held a slot; None until one ended."""
        self.waiting = 0
        """Requests waiting for a slot now (the router counts them in and out)."""

    def held(self, seconds: float) -> None:
        """A route released its slot after ``seconds``."""
        seconds = max(0.0, seconds)
        mean = self.mean_hold_s
        self.mean_hold_s = seconds if mean is None else mean + self._alpha * (seconds - mean)

    def expected_wait_s(self, ahead: int) -> float | None:
        """Seconds until a slot frees for a request with ``ahead`` queued before it, all
        slots busy; None while no route has ended."""
        mean = self.mean_hold_s
        if mean is None:
            return None
        return (ahead + 1) * mean / self.concurrency

    def shed(self, remaining_s: float) -> Shed | None:
        """For a request that finds every slot busy with ``remaining_s`` to its deadline:
        a :class:`Shed` when the queue cannot reach it in time, None to queue it."""
        wait = self.expected_wait_s(self.waiting)
        if wait is None or self.mean_hold_s is None:
            return None
        if wait <= remaining_s - max(self.margin_s, self.mean_hold_s):
            return None
        return Shed(wait, remaining_s, self.waiting, self.concurrency)
