"""The lifecycle every I/O component shares: ``start()``, idempotent ``stop()``, ``async with``.

Subclasses implement ``start`` and ``stop``; ``async with component:`` starts it and
always stops it, the way aiokafka's producer works.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, Self

from mulambda.errors import MulambdaError


class Lifecycle(ABC):
    """Base of components with ``start``/``stop``, usable as an async context manager."""

    @abstractmethod
    async def start(self) -> None:
        """Connect or bind and begin work; a second call does nothing."""

    @abstractmethod
    async def stop(self) -> None:
        """Release everything ``start`` acquired; safe to call twice."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def wait_ended(ended: asyncio.Event, follow: asyncio.Task[Any] | None, what: str) -> None:
    """A worker's ``wait``: return once ``ended`` is set; raise MulambdaError when the
    background task ``follow`` (a consumer loop) finished first, naming ``what`` it did."""
    waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(ended.wait())}
    if follow is not None:
        waiters.add(follow)
    try:
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            if waiter is not follow:
                waiter.cancel()
    if follow is not None and follow in done and not ended.is_set():
        exc = None if follow.cancelled() else follow.exception()
        raise MulambdaError(f"{what} ended: {exc!r}")
