"""What the launcher tests read back: its reports, dead letters, and a bounded wait."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mulambda.kafka import Record, replay
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.events import DeadLetter, ExecutorStatus
from tests.conftest import Infra


async def until(check: Callable[[], Awaitable[Any] | Any], timeout_s: float, what: str) -> Any:
    """Poll ``check`` (sync or async) until it returns something true; return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.2)


async def launch_reports(
    infra: Infra, catalog: Catalog, launch_id: str | None = None
) -> list[ExecutorStatus]:
    """The launcher's status events (of one launch, or all), oldest first."""
    found: list[ExecutorStatus] = []

    def keep(record: Record[Any]) -> None:
        value = record.value
        if (
            isinstance(value, ExecutorStatus)
            and value.launch_action is not None
            and launch_id in (None, value.executor_id)
        ):
            found.append(value)

    await replay(infra.kafka(), {catalog.name(Topic.EXECUTOR_STATUS): ExecutorStatus}, keep)
    return sorted(found, key=lambda s: s.timestamp)


async def dead_letters(infra: Infra, catalog: Catalog, key: str) -> list[DeadLetter]:
    """The dead letters of records keyed ``key``."""
    found: list[DeadLetter] = []

    def keep(record: Record[Any]) -> None:
        if isinstance(record.value, DeadLetter) and record.value.original_key == key.encode():
            found.append(record.value)

    await replay(infra.kafka(), {catalog.name(Topic.DEAD_LETTERS): DeadLetter}, keep)
    return found
