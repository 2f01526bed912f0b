"""A blocking facade over :class:`~mulambda.routing.client.Client` for scripts and notebooks.

:class:`SyncClient` runs an event loop in a background thread, builds the Client on it and
hands each call over with ``asyncio.run_coroutine_threadsafe``; it works where an event
loop already runs in the calling thread (Jupyter) because it never touches that loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from mulambda.routing.client import Client, ClientClosed

T = TypeVar("T")
P = ParamSpec("P")


def _blocking(
    method: Callable[Concatenate[Client, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncClient, P], T]:
    """``method`` of Client as a SyncClient method that blocks until it finished."""

    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self.client, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = f"Like :meth:`Client.{method.__name__}`, blocking until it finished."
    return call


class SyncClient:
    """``with SyncClient(bootstrap_servers=..., client_id=...) as client: client.infer(...)``.

    Arguments are those of :class:`Client`; ``infer`` and ``submit`` take the same
    arguments as the Client's and raise the same errors. Thread-safe: several threads
    may call at once (the calls run concurrently on the background loop).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Client:
        """The asynchronous client underneath (its methods run on the background loop)."""
        if self._client is None:
            raise ClientClosed("the client is not started")
        return self._client

    def start(self) -> None:
        """Start the background loop and the client; a second call does nothing."""
        with self._lock:
            if self._client is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="mulambda-sync", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread

            async def build() -> Client:
                client = Client(*self._args, **self._kwargs)
                await client.start()
                return client

            try:
                self._client = asyncio.run_coroutine_threadsafe(build(), loop).result()
            except BaseException:
                self._close_loop()
                raise

    def stop(self) -> None:
        """Stop the client and the background loop; idempotent."""
        with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            try:
                self._run(client.stop())
            finally:
                self._close_loop()

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop, self._thread = None, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join()
        loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise ClientClosed("the client is not started")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    infer = _blocking(Client.infer)
    """:meth:`Client.infer`, blocking until its result (or error); same arguments."""
    submit = _blocking(Client.submit)
    """:meth:`Client.submit`, blocking until Kafka acknowledged the request."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["SyncClient"]
