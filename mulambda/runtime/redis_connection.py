"""How to reach Redis/DragonflyDB: URL, ACL user and password, TLS files.

:class:`RedisConfig` is built from settings by runners and handed to the store and the
answered-requests filter, which build their clients through :meth:`RedisConfig.client`;
:func:`access_error` turns the server's refusals into AuthenticationError and
AuthorizationError. The password is never part of a repr or a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import AuthenticationWrongNumberOfArgsError, NoPermissionError

from mulambda.errors import (
    AuthenticationError,
    AuthorizationError,
    ConfigurationError,
    MulambdaError,
)
from mulambda.runtime.settings import Settings


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """A Redis/DragonflyDB endpoint and its credentials."""

    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisConfig:
        """The Redis fields of the process settings."""
        secret = settings.redis_password
        return cls(
            url=settings.redis_url,
            username=settings.redis_username,
            password=secret.get_secret_value() if secret is not None else None,
            ssl_cafile=settings.redis_ssl_cafile,
            ssl_certfile=settings.redis_ssl_certfile,
            ssl_keyfile=settings.redis_ssl_keyfile,
        )

    @property
    def tls(self) -> bool:
        """Whether the URL asks for TLS (``rediss://``)."""
        return self.url.startswith("rediss://")

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments for ``Redis.from_url`` besides the URL; ConfigurationError when TLS
        files are given for a plain ``redis://`` URL (they would silently do nothing)."""
        kwargs: dict[str, Any] = {}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        files = {
            "ssl_ca_certs": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        given = {k: v for k, v in files.items() if v}
        if given and not self.tls:
            raise ConfigurationError(
                f"Redis TLS files given for {self.safe_url}: use a rediss:// URL for TLS"
            )
        if self.tls:
            kwargs |= {"ssl_cert_reqs": "required", **given}
        return kwargs

    def client(self, **options: Any) -> Redis:
        """A new client (connecting lazily); ConfigurationError for a malformed URL."""
        try:
            client: Redis = Redis.from_url(self.url, **self.client_kwargs(), **options)
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {self.safe_url}: {exc}") from exc
        return client

    @property
    def safe_url(self) -> str:
        """The URL with any password in it replaced by ``***``, fit for logs."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """``url`` with the password of its user-info part (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def access_error(exc: BaseException, what: str) -> MulambdaError | None:
    """The AuthenticationError / AuthorizationError a Redis refusal stands for, if any."""
    if isinstance(exc, RedisAuthenticationError | AuthenticationWrongNumberOfArgsError):
        return AuthenticationError(f"{what}: Redis refused the credentials ({exc})")
    if isinstance(exc, NoPermissionError):
        return AuthorizationError(f"{what}: not allowed by the Redis user's ACL ({exc})")
    return None
