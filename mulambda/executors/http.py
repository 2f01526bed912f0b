"""The HTTP exchange both executor clients share: pooling, bounds, the error mapping.

:class:`HttpClient` is the base of :class:`~mulambda.executors.tfserving.TFServingClient`
and :class:`~mulambda.executors.oip.OIPClient`: one request/response path (timeouts,
size bound, no redirects, every aiohttp failure translated into the typed errors of
:mod:`mulambda.protocols.tfserving`), so a refused connection, a timeout or a 503 mean
the same whichever protocol an executor speaks. The subclasses add the protocol: paths,
bodies, and what an answer document must hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import aiohttp
from yarl import URL

from mulambda.errors import ConfigurationError
from mulambda.protocols.tfserving import (
    DeadlineExceeded,
    ExecutorUnavailable,
    GarbageResponse,
    NonFiniteOutput,
    TFServingError,
    decode_finite_json,
    decode_json,
    encode_json,
    error_for_status,
    error_message,
)
from mulambda.runtime.lifecycle import Lifecycle

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "DEFAULT_TIMEOUT_S", "HttpClient"]

DEFAULT_TIMEOUT_S: Final = 10.0
"""Per-call bound on a whole request (connect, send, wait, read)."""

DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
"""Responses larger than this are refused as garbage rather than buffered."""


class HttpClient(Lifecycle):
    """Pooled async client of one executor's REST root.

    ``base_url`` is the REST root, e.g. ``http://10.0.0.5:8501`` (a path prefix is kept).
    Pass ``session`` to share one connection pool among many clients (the router talks to
    many executors); the client then never closes it. Otherwise ``start()`` opens a
    session whose connector holds at most ``limit`` connections (``limit_per_host`` per
    host; 0 means no per-host bound), kept alive between calls.

    Every call takes an optional ``timeout_s`` overriding ``timeout_s`` of the client; the
    bound covers the whole call, and running over it raises :class:`DeadlineExceeded` with
    ``status`` None.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float | None = None,
        limit: int = 100,
        limit_per_host: int = 0,
        keepalive_timeout_s: float = 30.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be http(s)://..., not {base_url!r}")
        if timeout_s <= 0 or (connect_timeout_s is not None and connect_timeout_s <= 0):
            raise ConfigurationError("timeouts must be positive")
        if limit < 0 or limit_per_host < 0 or max_response_bytes <= 0:
            raise ConfigurationError("connection limits must be >= 0, max_response_bytes > 0")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.limit = limit
        self.limit_per_host = limit_per_host
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_response_bytes = max_response_bytes
        self._external_session = session
        self._session: aiohttp.ClientSession | None = session

    # lifecycle

    @property
    def started(self) -> bool:
        """Whether calls can be made (a session is open)."""
        return self._session is not None and not self._session.closed

    async def start(self) -> None:
        """Open the pooled session (no-op when started or given a session)."""
        if self.started:
            return
        if self._external_session is not None:
            raise ConfigurationError(f"the shared session given to {type(self).__name__} is closed")
        connector = aiohttp.TCPConnector(
            limit=self.limit,
            limit_per_host=self.limit_per_host,
            keepalive_timeout=self.keepalive_timeout_s,
        )
        self._session = aiohttp.ClientSession(connector=connector)

    async def stop(self) -> None:
        """Close the session this client opened; idempotent; a shared session stays open."""
        session, self._session = self._session, self._external_session
        if session is not None and session is not self._external_session:
            await session.close()

    # transport

    async def _read_bounded(self, response: aiohttp.ClientResponse, url: str) -> bytes:
        """The body, read in chunks and refused once past ``max_response_bytes``: a body
        without a length (chunked, or endless) must not fill memory before the timeout."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise GarbageResponse(
                    f"response from {url} exceeds {self.max_response_bytes} bytes",
                    status=response.status,
                    url=url,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _call(
        self,
        method: Literal["GET", "POST"],
        path: str,
        data: bytes | None,
        timeout_s: float | None,
        *,
        finite: bool = False,
    ) -> Any:
        """One HTTP exchange; every aiohttp failure is translated here. ``finite``: an
        answer holding NaN or ±Infinity raises :class:`NonFiniteOutput` (inference
        outputs, which results carry as JSON)."""
        session = self._session
        if session is None or session.closed:
            raise ConfigurationError(f"{type(self).__name__} is not started")
        total = self.timeout_s if timeout_s is None else timeout_s
        if total <= 0:
            raise DeadlineExceeded(
                "no time left for the call", status=None, url=self.base_url + path
            )
        connect = total if self.connect_timeout_s is None else min(self.connect_timeout_s, total)
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=connect)
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            # No redirects: an executor is called only at its registered (and vetted)
            # endpoint, never sent on to wherever its answer points.
            async with session.request(
                method,
                URL(url, encoded=True),
                data=data,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                if (
                    response.content_length is not None
                    and response.content_length > self.max_response_bytes
                ):
                    raise GarbageResponse(
                        f"response of {response.content_length} bytes from {url} exceeds "
                        f"{self.max_response_bytes}",
                        status=status,
                        url=url,
                    )
                if 300 <= status < 400:
                    target = response.headers.get("Location", "?")[:200]
                    raise GarbageResponse(
                        f"HTTP {status} from {url}: redirect to {target} not followed "
                        "(executors answer at their registered endpoint)",
                        status=status,
                        url=url,
                    )
                raw = await self._read_bounded(response, url)
        except TFServingError:
            raise
        except TimeoutError:
            # Checked first: aiohttp's timeout errors are also connection errors.
            raise DeadlineExceeded(
                f"{method} {url}: no answer within {total:g}s", status=None, url=url
            ) from None
        except aiohttp.InvalidURL as exc:
            raise ConfigurationError(f"invalid executor URL {url!r}: {exc}") from exc
        except aiohttp.ClientResponseError as exc:
            # The server spoke broken HTTP (bad status line, oversized headers).
            raise GarbageResponse(
                f"{method} {url}: malformed HTTP response: {exc}", status=None, url=url
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ExecutorUnavailable(
                f"{method} {url}: {type(exc).__name__}: {exc}", status=None, url=url
            ) from exc

        if status >= 400:
            raise error_for_status(status, error_message(raw), url=url)
        try:
            return decode_finite_json(raw) if finite else decode_json(raw)
        except NonFiniteOutput as exc:
            raise NonFiniteOutput(
                f"HTTP {status} from {url}: {exc}", status=status, url=url
            ) from None
        except ValueError:
            raise GarbageResponse(
                f"HTTP {status} from {url} is not JSON: {raw[:200]!r}", status=status, url=url
            ) from None

    async def _document(
        self,
        method: Literal["GET", "POST"],
        path: str,
        body: Mapping[str, Any] | None,
        timeout_s: float | None,
        *,
        accept: Callable[[dict[str, Any]], bool],
        lacks: str,
        what: str = "request",
    ) -> dict[str, Any]:
        """The JSON object answering ``body`` (None for a GET) at ``path``; an answer
        that is not an object ``accept`` takes is a :class:`GarbageResponse` saying
        ``lacks``. POST answers are inference outputs, so they must be finite."""
        data: bytes | None = None
        if body is not None:
            try:
                data = encode_json(body)
            except TypeError as exc:
                raise ConfigurationError(f"{what} body is not JSON-serialisable: {exc}") from None
        document = await self._call(method, path, data, timeout_s, finite=method == "POST")
        if not isinstance(document, dict) or not accept(document):
            raise GarbageResponse(
                f"{lacks}: {document!r:.200}", status=200, url=self.base_url + path
            )
        return document
