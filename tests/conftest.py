"""Session fixtures: real Kafka, Redis and MinIO, started once, and a unique topic prefix.

Where the servers come from, in order:
1. ``MULAMBDA_KAFKA_BOOTSTRAP_SERVERS`` (and the Redis/MinIO variables) already set: use them.
2. ``deploy/local/infra.sh``: reuse what it already runs, else start it (and stop it at the
   end of the session, since we started it).
Every test run gets its own topic prefix, so runs can share a broker.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from mulambda.kafka import Admin, KafkaConfig
from mulambda.wire.catalog import Catalog, load_catalog
from tests.kube import KubeApi, kube_installed, running_kube_api

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
INFRA = REPO / "deploy" / "local" / "infra.sh"


def pytest_configure(config: pytest.Config) -> None:
    # The fault and hostile-input suites' summaries print in the process that reports
    # (xdist's controller loads no conftest below this one).
    from tests.faults import summary as fault_summary
    from tests.fuzz import summary as fuzz_summary

    for plugin, name in (
        (fault_summary, "tests.faults.summary"),
        (fuzz_summary, "tests.fuzz.summary"),
    ):
        if not config.pluginmanager.is_registered(plugin):
            config.pluginmanager.register(plugin, name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # One event loop for the session: session fixtures hold clients bound to it.
    marker = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if pytest_asyncio.is_async_test(item):
            item.add_marker(marker, append=False)
        kind = suite_of(item.path)
        if kind is not None and not item.get_closest_marker(kind):
            item.add_marker(getattr(pytest.mark, kind))


SUITES = ("unit", "integration", "faults", "fuzz")
"""Top-level folders of ``tests/``, each also the marker of the tests under it."""


def suite_of(path: Path) -> str | None:
    """The suite a test file belongs to: its first folder below ``tests/``.

    Read from the path relative to this directory, so a checkout under ``/home/unit/`` or
    ``/srv/integration/`` does not mark every test as both.
    """
    try:
        first = path.resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in SUITES else None


@dataclass(frozen=True)
class Infra:
    """Where the real servers of this session listen."""

    kafka_bootstrap: str
    redis_url: str
    minio_endpoint: str
    minio_access_key: str
    minio_secret_key: str

    def kafka(self, client_id: str = "mulambda-test") -> KafkaConfig:
        """A KafkaConfig for these servers."""
        return KafkaConfig(
            bootstrap_servers=self.kafka_bootstrap, request_timeout_s=15.0, client_id=client_id
        )

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (CLI tests)."""
        return {
            "MULAMBDA_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "MULAMBDA_REDIS_URL": self.redis_url,
            "MULAMBDA_MINIO_ENDPOINT": self.minio_endpoint,
            "MULAMBDA_MINIO_ACCESS_KEY": self.minio_access_key,
            "MULAMBDA_MINIO_SECRET_KEY": self.minio_secret_key,
        }


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value.strip("'\"")
    return values


def _from_environment() -> Infra | None:
    env = os.environ
    if not env.get("MULAMBDA_KAFKA_BOOTSTRAP_SERVERS"):
        return None
    return Infra(
        kafka_bootstrap=env["MULAMBDA_KAFKA_BOOTSTRAP_SERVERS"],
        redis_url=env.get("MULAMBDA_REDIS_URL", "redis://127.0.0.1:6379/0"),
        minio_endpoint=env.get("MULAMBDA_MINIO_ENDPOINT", "127.0.0.1:9000"),
        minio_access_key=env.get("MULAMBDA_MINIO_ACCESS_KEY", "mulambda"),
        minio_secret_key=env.get("MULAMBDA_MINIO_SECRET_KEY", "mulambda-secret"),
    )


def _infra_home() -> Path:
    return Path(os.environ.get("MULAMBDA_HOME", REPO / ".mulambda"))


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """The session's Kafka, Redis and MinIO (see the module docstring)."""
    found = _from_environment()
    if found is not None:
        yield found
        return
    if INFRA.exists():
        running = (
            subprocess.run(
                ["bash", str(INFRA), "status"], capture_output=True, check=False
            ).returncode
            == 0
        )
        if not running:
            subprocess.run(["bash", str(INFRA), "start"], check=True, timeout=900)
        values = _read_env_file(_infra_home() / "env")
        try:
            yield Infra(
                kafka_bootstrap=values["MULAMBDA_KAFKA_BOOTSTRAP_SERVERS"],
                redis_url=values["MULAMBDA_REDIS_URL"],
                minio_endpoint=values["MULAMBDA_MINIO_ENDPOINT"],
                minio_access_key=values["MULAMBDA_MINIO_ACCESS_KEY"],
                minio_secret_key=values["MULAMBDA_MINIO_SECRET_KEY"],
            )
        finally:
            if not running:
                subprocess.run(["bash", str(INFRA), "stop"], check=False, timeout=120)
        return
    pytest.fail(
        "no servers: set MULAMBDA_KAFKA_BOOTSTRAP_SERVERS (and the Redis/MinIO variables)"
        f" or run from a checkout with {INFRA.relative_to(REPO)}"
    )


@pytest.fixture(scope="session")
def topic_prefix() -> str:
    """A prefix unique to this test run."""
    return f"test-{uuid.uuid4().hex[:8]}."


@pytest_asyncio.fixture(loop_scope="session")
async def own_catalog(infra: Infra, topic_prefix: str) -> AsyncIterator[Catalog]:
    """A catalog of this test's own (for tests that read a topic from its beginning)."""
    cat = load_catalog(f"{topic_prefix}{uuid.uuid4().hex[:6]}.")
    async with Admin(infra.kafka("mulambda-test-admin")) as admin:
        await admin.apply(cat)
        yield cat
        await admin.delete([cat.name(t) for t in cat.specs])


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def catalog(infra: Infra, topic_prefix: str) -> AsyncIterator[Catalog]:
    """The topic catalog applied under this run's prefix; topics deleted at the end."""
    cat = load_catalog(topic_prefix)
    async with Admin(infra.kafka("mulambda-test-admin")) as admin:
        await admin.apply(cat)
        yield cat
        await admin.delete([cat.name(t) for t in cat.specs])


@pytest.fixture(scope="session")
def kube_api() -> Iterator[KubeApi]:
    """A real Kubernetes API server (kube-apiserver on kine, tests/kube.py): the one this
    ``MULAMBDA_HOME`` runs, else started for the session and stopped at its end.

    A failure naming the install step when ``infra.sh install kube`` has not built it
    (``deploy/local/test.sh`` runs that step first): never a silent skip.
    """
    if not kube_installed():
        pytest.fail(
            "no Kubernetes API server: kube-apiserver, kubectl, kine or the CRDs are not built;"
            " run: bash deploy/local/infra.sh install kube"
        )
    yield from running_kube_api()


def remove_bucket(infra: Infra, bucket: str) -> None:
    """Empty and remove a bucket a test made (nothing when it does not exist)."""
    from minio import Minio
    from minio.deleteobjects import DeleteObject

    raw = Minio(
        infra.minio_endpoint,
        access_key=infra.minio_access_key,
        secret_key=infra.minio_secret_key,
        secure=False,
    )
    if raw.bucket_exists(bucket):
        keys = [o.object_name for o in raw.list_objects(bucket, recursive=True)]
        errors = list(raw.remove_objects(bucket, [DeleteObject(k) for k in keys if k]))
        assert not errors, errors
        raw.remove_bucket(bucket)
