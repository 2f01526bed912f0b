"""Settings read from the environment (prefix ``MULAMBDA_``).

Only runners and the CLI read settings; library classes take explicit arguments so
they can be built in tests and embedded in other programs without an environment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Connection settings shared by every MuLambda process."""

    model_config = SettingsConfigDict(env_prefix="MULAMBDA_", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated ``host:port`` list of Kafka brokers."""

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka security protocol; PLAINTEXT locally, SASL_SSL in most clusters."""

    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism when the protocol is SASL_*."""

    kafka_sasl_username: str | None = None
    """SASL user name."""

    kafka_sasl_password: SecretStr | None = None
    """SASL password."""

    kafka_ssl_cafile: str | None = None
    """CA bundle for verifying brokers when the protocol uses SSL."""

    kafka_ssl_certfile: str | None = None
    """Client certificate for mutual TLS."""

    kafka_ssl_keyfile: str | None = None
    """Private key of the client certificate."""

    kafka_request_timeout_s: float = Field(default=10.0, gt=0)
    """Bound on connecting to Kafka and on admin calls; commands fail after it."""

    kafka_group_instance_id: str | None = None
    """Static group membership id of this worker instance (e.g. the pod name): a worker
    restarted with the same id resumes its partitions without a rebalance. Unique per
    instance; unset means dynamic membership."""

    kafka_session_timeout_s: float = Field(default=6.0, gt=0)
    """Group session timeout: a worker that stops heartbeating loses its partitions after
    this long (brokers refuse values below their ``group.min.session.timeout.ms``, 6 s by
    default; the local broker allows 1 s)."""

    kafka_heartbeat_interval_s: float = Field(default=1.0, gt=0)
    """Group heartbeat interval; keep it under a third of the session timeout."""

    kafka_linger_ms: int = Field(default=0, ge=0, le=1000)
    """Router producer linger. aiokafka sends a produce request at once when none is in
    flight and holds the next until the one before is acknowledged and this long after
    it started: with 0, records batch only under load (while a request is in flight),
    and a result never waits behind a linger (at 100 requests/s, linger 2 ms measured
    p50 13 ms end to end, 0 ms 8 ms)."""

    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    """Event loop of the router and selector workers: ``asyncio`` (default) or ``uvloop``
    (asyncio where the package is missing). Not the default: in paired runs of
    ``bench_selector.py --only latency`` the selector's round trip was slower with uvloop
    (p99 47-71 ms against 23-42 ms with asyncio, on a loaded machine)."""

    delivery_mode: Literal["at-least-once", "exactly-once"] = "at-least-once"
    """How routers publish results. ``at-least-once`` (default, fastest): results are
    acknowledged before the request's offset commits and redeliveries are filtered by
    answered marks in Redis; a rare second copy carries the same ``request_id``.
    ``exactly-once``: results and offsets commit in Kafka transactions, so readers with
    ``isolation.level=read_committed`` see one result per request, at the cost of about a
    transaction interval plus a commit (tens of ms) per result."""

    transaction_timeout_s: float = Field(default=10.0, gt=0)
    """Exactly-once mode: the broker aborts a dead router's open transaction after this;
    until then ``read_committed`` readers of the partitions it wrote wait."""

    answered_ttl_margin_s: float = Field(default=300.0, ge=0)
    """How long past a request's deadline the router remembers (in Redis) that it was
    answered, so a redelivery after a crash or rebalance is not executed or answered again."""

    topic_prefix: str = ""
    """Prefix on every topic name, so tests and deployments can share a broker."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis/DragonflyDB URL of the metadata store (DB 0 only: Dragonfly clusters use it)."""

    minio_endpoint: str = "127.0.0.1:9000"
    """``host:port`` of the MinIO/S3 endpoint holding saved models."""

    minio_access_key: str = "mulambda"
    """S3 access key."""

    minio_secret_key: SecretStr = SecretStr("mulambda-secret")
    """S3 secret key."""

    minio_secure: bool = False
    """Use HTTPS towards MinIO."""

    minio_bucket: str = "mulambda-models"
    """Bucket holding ``models/{name}/{version}/`` trees."""

    log_level: str = "INFO"
    """Root log level of runners."""

    metrics_host: str = Field(default="127.0.0.1", min_length=1)
    """Interface a worker's /metrics, /healthz and /readyz server binds: loopback locally,
    ``0.0.0.0`` (or ``::``) in containers, where kubelet probes and Prometheus dial the
    pod IP."""

    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of a worker's /metrics, /healthz and /readyz server (0 picks a free port)."""

    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """How long a stopping worker lets in-flight work finish before closing."""

    selector_default_policy: str = "adaptive"
    """Policy for requests that name none: adaptive, weighted, round-robin, random,
    plain-net-latency. Adaptive won the prototype matrix where load matters and ties
    weighted where per-element compute dominates (benchmarks/README.md)."""

    selector_missed_heartbeats: float = Field(default=3.0, gt=0)
    """An executor is excluded after this many heartbeat intervals without one."""

    selector_group_id: str = "mulambda-selector"
    """Consumer group the selectors share for selection requests."""

    redis_key_prefix: str = "mulambda:"
    """Prefix of every key in the metadata store (one per deployment)."""

    # --- router ----------------------------------------------------------------------

    router_top_k: int = Field(default=8, ge=1, le=100)
    """Ranked candidates a router asks the selector for per request: its failover list.
    Larger than the executors one process serves for the same traits, so a dead process
    leaves candidates elsewhere in the list."""

    router_call_margin_s: float = Field(default=0.5, ge=0)
    """Time a selection retry leaves before the request's deadline for the executor call."""

    router_ranking_max_age_s: float = Field(default=30.0, ge=0)
    """How long a router may route on the last good ranking for the same client, traits,
    weights, policy and SLO when a selection fails (0: never)."""

    router_ranking_cache_entries: int = Field(default=10_000, ge=1)
    """Rankings a router remembers at most (least recently used forgotten first)."""

    router_suspect_expiry_s: float = Field(default=5.0, ge=0)
    """How long an executor endpoint that refused or dropped a connection is tried last
    (a successful call to it ends that sooner; 0: never suspect)."""

    router_reply_topics: str = ""
    """Comma-separated topics results may be sent to: names, or prefixes ending in ``*``.
    Empty: the inference-results topic and names starting with ``topic_prefix``. The
    catalog's other topics are never allowed."""

    router_metadata_timeout_s: float = Field(default=1.0, gt=0)
    """Longest a request waits for cluster metadata to vet its reply address."""
