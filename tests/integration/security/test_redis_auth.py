"""The metadata store against a real redis-server with a password, an ACL user and TLS:
the right credentials work, wrong ones are an AuthenticationError, a key outside the
user's ACL an AuthorizationError, neither retriable and neither showing the password."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from mulambda.errors import AuthenticationError, AuthorizationError, ConfigurationError
from mulambda.routing.answered import AnsweredRequests
from mulambda.runtime.redis_connection import RedisConfig, redact_url
from mulambda.runtime.settings import Settings
from mulambda.selection.store import ViewStore
from mulambda.wire.events import deadline_in
from tests.factories import registration
from tests.integration.security.conftest import SecuredRedis

pytestmark = pytest.mark.integration


def prefix(server: SecuredRedis) -> str:
    return f"{server.key_prefix}{uuid.uuid4().hex[:8]}:"


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_the_acl_user_reads_and_writes_its_keys(
    secured_redis: SecuredRedis, tls: bool
) -> None:
    async with ViewStore(secured_redis.config(tls=tls), key_prefix=prefix(secured_redis)) as store:
        await store.apply_batch([registration("ex-auth")])
        assert await store.executor_ids() == ["ex-auth"]
        await store.clear()


async def test_a_wrong_password_is_an_authentication_error(secured_redis: SecuredRedis) -> None:
    wrong = "not-" + secured_redis.password
    with pytest.raises(AuthenticationError, match="Redis refused the credentials") as caught:
        async with ViewStore(
            secured_redis.config(password=wrong), key_prefix=prefix(secured_redis)
        ):
            pass
    assert not caught.value.retriable
    assert wrong not in str(caught.value)


async def test_no_password_is_refused_too(secured_redis: SecuredRedis) -> None:
    with pytest.raises((AuthenticationError, AuthorizationError)):
        async with ViewStore(
            RedisConfig(f"redis://127.0.0.1:{secured_redis.port}/0"), key_prefix="x:"
        ):
            pass


async def test_keys_outside_the_users_acl_are_an_authorization_error(
    secured_redis: SecuredRedis,
) -> None:
    async with ViewStore(secured_redis.config(), key_prefix="elsewhere:") as store:
        with pytest.raises(AuthorizationError, match="not allowed by the Redis user's ACL") as e:
            await store.apply_batch([registration("ex-outside")])
    assert not e.value.retriable


async def test_the_answered_filter_authenticates(secured_redis: SecuredRedis) -> None:
    async with AnsweredRequests(
        secured_redis.config(), key_prefix=prefix(secured_redis)
    ) as answered:
        await answered.mark("m-1", deadline_in(5))
        assert await answered.seen("m-1")
        assert answered.failures == 0


async def test_tls_files_need_a_rediss_url(secured_redis: SecuredRedis) -> None:
    with pytest.raises(ConfigurationError, match="rediss://"):
        await ViewStore(
            secured_redis.config(ssl_cafile=secured_redis.ca_file), key_prefix="x:"
        ).start()


async def test_the_password_may_come_from_a_file(
    secured_redis: SecuredRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(secured_redis.password + "\n")
    monkeypatch.setenv("MULAMBDA_REDIS_URL", f"redis://127.0.0.1:{secured_redis.port}/0")
    monkeypatch.setenv("MULAMBDA_REDIS_USERNAME", secured_redis.username)
    monkeypatch.setenv("MULAMBDA_REDIS_PASSWORD_FILE", str(secret))
    config = RedisConfig.from_settings(Settings())
    assert secured_redis.password not in repr(config)
    async with ViewStore(config, key_prefix=prefix(secured_redis)) as store:
        assert await store.executor_ids() == []


def test_urls_are_logged_without_their_password() -> None:
    assert redact_url("redis://u:hunter2@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact_url("rediss://:hunter2@h/0") == "rediss://:***@h/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
