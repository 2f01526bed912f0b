from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from mulambda.errors import ConfigurationError, MulambdaError
from mulambda.runtime.runner import run_loop, serve

pytestmark = pytest.mark.unit


class FakeService:
    """A service double for the runner (pure control flow, no I/O)."""

    def __init__(self, *, fail_start: bool = False, crash: bool = False) -> None:
        self.fail_start = fail_start
        self.crash = crash
        self.started = False
        self.stops = 0
        self._ended = asyncio.Event()

    async def start(self) -> None:
        if self.fail_start:
            raise ConfigurationError("no broker configured")
        self.started = True
        if self.crash:
            self._ended.set()

    async def stop(self) -> None:
        self.stops += 1

    async def wait(self) -> None:
        await self._ended.wait()
        if self.crash:
            raise RuntimeError("consumer died")


async def test_sigterm_stops_the_service_gracefully() -> None:
    service = FakeService()
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
    assert await serve(service, grace_s=1) == 0
    assert service.started
    assert service.stops == 1


async def test_failed_start_exits_one() -> None:
    service = FakeService(fail_start=True)
    assert await serve(service, grace_s=1) == 1
    assert service.stops == 1


async def test_crashed_service_exits_one_after_stopping() -> None:
    service = FakeService(crash=True)
    assert await serve(service, grace_s=1) == 1
    assert service.stops == 1


async def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.parametrize(("name", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_run_loop_runs_the_coroutine_in_the_named_event_loop(name: str, module: str) -> None:
    pytest.importorskip(module)
    # A thread of its own: no event loop of the test session runs there.
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(run_loop, _loop_name(), name).result().startswith(module)


def test_run_loop_refuses_an_unknown_event_loop() -> None:
    coroutine = _loop_name()
    with pytest.raises(MulambdaError, match="unknown event loop 'tokio'"):
        run_loop(coroutine, "tokio")
