"""The lifecycle every I/O component shares: ``start()``, idempotent ``stop()``, ``async with``.

Subclasses implement ``start`` and ``stop``; ``async with component:`` starts it and
always stops it, the way aiokafka's producer works.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


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
