"""A secured private broker (SASL_SSL, SCRAM users per role, ACLs from the catalog),
started once per session through ``deploy/local/infra.sh`` on free ports; the shared
plaintext broker is never touched."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from mulambda.harness.infra import PrivateInfra, free_ports
from mulambda.kafka import Admin
from mulambda.runtime.redis_connection import RedisConfig
from mulambda.wire.catalog import Catalog, load_catalog

BROKER_USER = "mulambda-broker"
"""The secured broker's super user (deploy/local/infra.sh)."""


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def secured() -> AsyncIterator[PrivateInfra]:
    async with PrivateInfra(("kafka",), kafka_security="sasl_ssl") as infra:
        yield infra


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def secured_catalog(secured: PrivateInfra) -> Catalog:
    """The catalog's topics (no prefix: infra.sh applied the ACLs for that), created by
    the administrator role: its ACLs must allow it."""
    catalog = load_catalog()
    async with Admin(secured.kafka_as("administrator")) as admin:
        await admin.apply(catalog)
    return catalog


@dataclass(frozen=True)
class SecuredRedis:
    """A private redis-server with a password on its default user, an ACL user limited
    to keys under ``key_pattern``, and a TLS port (the secured broker's certificate)."""

    port: int
    tls_port: int
    default_password: str
    username: str
    password: str
    key_prefix: str
    ca_file: str

    def config(self, *, tls: bool = False, **overrides: str | None) -> RedisConfig:
        fields: dict[str, str | None] = {
            "url": f"rediss://127.0.0.1:{self.tls_port}/0"
            if tls
            else f"redis://127.0.0.1:{self.port}/0",
            "username": self.username,
            "password": self.password,
            "ssl_cafile": self.ca_file if tls else None,
        }
        fields.update(overrides)
        return RedisConfig(**fields)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def secured_redis(
    secured: PrivateInfra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SecuredRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (deploy/local/infra.sh install redis)")
    home = tmp_path_factory.mktemp("secured-redis")
    tls = secured.require_home() / "kafka" / "tls"
    port, tls_port = free_ports(2)
    server = SecuredRedis(
        port=port,
        tls_port=tls_port,
        default_password=secrets.token_hex(16),
        username="mulambda-test",
        password=secrets.token_hex(16),
        key_prefix="mulambda-sec:",
        ca_file=str(tls / "ca.pem"),
    )
    conf = home / "redis.conf"
    # A config file rather than arguments: passwords stay out of the process list.
    conf.write_text(
        f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {home}\n'
        f"tls-port {tls_port}\ntls-cert-file {tls / 'broker.pem'}\n"
        f"tls-key-file {tls / 'broker.key'}\ntls-ca-cert-file {tls / 'ca.pem'}\n"
        "tls-auth-clients no\n"
        f"requirepass {server.default_password}\n"
        f"user {server.username} on >{server.password} ~{server.key_prefix}* +@all\n"
    )
    conf.chmod(0o600)
    process = await asyncio.create_subprocess_exec(
        binary,
        str(conf),
        stdout=(home / "redis.log").open("w"),
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(
                f"redis-server did not listen on {port}: {(home / 'redis.log').read_text()}"
            )
        yield server
    finally:
        process.terminate()
        await process.wait()


def cli_env(secured: PrivateInfra, user: str, password: str | None = None) -> dict[str, str]:
    """The environment of a ``mulambda`` command run as ``user`` on the secured broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULAMBDA_")}
    env |= {
        "MULAMBDA_KAFKA_BOOTSTRAP_SERVERS": secured.bootstrap_servers,
        "MULAMBDA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "MULAMBDA_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "MULAMBDA_KAFKA_SASL_USERNAME": user,
        "MULAMBDA_KAFKA_SSL_CAFILE": str(secured.kafka_ca_file()),
    }
    if password is None:
        env["MULAMBDA_KAFKA_SASL_PASSWORD_FILE"] = str(secured.kafka_user_password_file(user))
    else:
        env["MULAMBDA_KAFKA_SASL_PASSWORD"] = password
    return env


def mulambda(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mulambda", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
