"""The one place that handles signals: start a service, wait, then stop it gracefully.

On SIGTERM/SIGINT the service is asked to stop: it stops consuming, finishes in-flight
work within the grace period, flushes its producer and closes (the way arq's worker
shuts down). A second signal while stopping is ignored; the grace period bounds it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from mulambda.errors import MulambdaError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Service(Protocol):
    """What the runner drives."""

    async def start(self) -> None:
        """Connect and begin work; raise MulambdaError if that is impossible."""

    async def stop(self) -> None:
        """Stop gracefully; idempotent."""

    async def wait(self) -> None:
        """Return when the service ends on its own (finished or failed)."""


async def serve(service: Service, *, grace_s: float = 10.0) -> int:
    """Run ``service`` until a signal or its own end; return a process exit code."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop_requested.set)
    try:
        try:
            await service.start()
        except MulambdaError as exc:
            log.error("cannot start: %s", exc.reason)
            await service.stop()
            return 1
        waiter = asyncio.create_task(service.wait())
        stopper = asyncio.create_task(stop_requested.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if waiter in done and waiter.exception() is not None:
            log.error("service failed: %r", waiter.exception())
            code = 1
        for task in (waiter, stopper):
            task.cancel()
        try:
            await asyncio.wait_for(service.stop(), timeout=grace_s + 5)
        except TimeoutError:
            log.error("service did not stop within %.1fs", grace_s + 5)
            code = code or 1
        return code
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run(factory: Callable[[], Awaitable[Service]], *, grace_s: float = 10.0) -> int:
    """Build the service inside a fresh event loop and serve it."""

    async def main() -> int:
        try:
            service = await factory()
        except MulambdaError as exc:
            log.error("cannot start: %s", exc.reason)
            return 1
        return await serve(service, grace_s=grace_s)

    return asyncio.run(main())


def run_loop(main: Coroutine[Any, Any, T], event_loop: str = "asyncio") -> T:
    """Run ``main`` to completion in a fresh event loop: asyncio's, or uvloop's (faster
    transports and timers; asyncio's when the package is missing)."""
    if event_loop == "asyncio":
        return asyncio.run(main)
    if event_loop != "uvloop":
        main.close()
        raise MulambdaError(f"unknown event loop {event_loop!r}; known: asyncio, uvloop")
    try:
        import uvloop
    except ImportError:  # an optional speed-up: a platform without wheels runs asyncio
        log.info("uvloop is not installed; running the asyncio event loop")
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class Lifecycle(Protocol):
    """A component with start/stop but no end of its own (a server)."""

    async def start(self) -> None:
        """Begin serving."""

    async def stop(self) -> None:
        """Stop serving; idempotent."""


class UntilStopped:
    """Makes a server a Service: it ends only when stopped."""

    def __init__(self, component: Lifecycle) -> None:
        self.component = component
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Start the component."""
        await self.component.start()

    async def stop(self) -> None:
        """Stop the component; idempotent."""
        self._stopped.set()
        await self.component.stop()

    async def wait(self) -> None:
        """Wait until stopped."""
        await self._stopped.wait()
