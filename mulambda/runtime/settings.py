"""Settings read from the environment (prefix ``MULAMBDA_``).

Only runners and the CLI read settings; library classes take explicit arguments so
they can be built in tests and embedded in other programs without an environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mulambda.errors import ConfigurationError
from mulambda.wire.signatures import executor_key

SECRET_FILE_SUFFIX = "_file"  # noqa: S105 - a name suffix, not a secret
"""A setting ``<name>_file`` names a file whose content becomes setting ``<name>``."""


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

    kafka_sasl_password_file: str | None = None
    """File holding the SASL password (a mounted Secret); read at start, overrides
    ``kafka_sasl_password``."""

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
    transaction commit (a few round trips to the broker) per result."""

    transaction_interval_s: float = Field(default=0.0, ge=0, le=10)
    """Exactly-once mode: least time between two of a router's transactions. 0: a
    transaction starts as soon as a request is answered and the one before is done, so
    an idle router commits each answer at once and a busy one groups the answers made
    during a commit."""

    transaction_timeout_s: float = Field(default=3.0, gt=0)
    """Exactly-once mode: the broker aborts a dead router's open transaction after this
    (checked every ``transaction.abort.timed.out.transaction.cleanup.interval.ms``, 1 s
    on MuLambda's brokers); until then ``read_committed`` readers of the partitions it
    wrote, and the router that takes its partitions over, wait. A transaction normally
    lasts a commit (a few ms); 10 s held a killed router's partitions
    past the requests' deadlines."""

    answered_ttl_margin_s: float = Field(default=300.0, ge=0)
    """How long past a request's deadline the router remembers (in Redis) that it was
    answered, so a redelivery after a crash or rebalance is not executed or answered again."""

    topic_prefix: str = ""
    """Prefix on every topic name, so tests and deployments can share a broker."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis/DragonflyDB URL of the metadata store (DB 0 only: Dragonfly clusters use it);
    ``rediss://`` for TLS. Credentials belong in ``redis_username``/``redis_password``
    (a password in the URL is accepted, but the URL is no secret setting)."""

    redis_username: str | None = None
    """Redis ACL user (``AUTH username password``); unset: the default user."""

    redis_password: SecretStr | None = None
    """Password of the Redis ACL user (or of ``requirepass``)."""

    redis_password_file: str | None = None
    """File holding the Redis password (a mounted Secret); overrides ``redis_password``."""

    redis_ssl_cafile: str | None = None
    """CA bundle verifying the Redis server (``rediss://`` URLs only)."""

    redis_ssl_certfile: str | None = None
    """Client certificate for Redis mutual TLS (``rediss://`` only)."""

    redis_ssl_keyfile: str | None = None
    """Private key of the Redis client certificate."""

    minio_endpoint: str = "127.0.0.1:9000"
    """``host:port`` of the MinIO/S3 endpoint holding saved models."""

    minio_access_key: str = "mulambda"
    """S3 access key."""

    minio_secret_key: SecretStr = SecretStr("mulambda-secret")
    """S3 secret key."""

    minio_access_key_file: str | None = None
    """File holding the S3 access key (a mounted Secret); overrides ``minio_access_key``."""

    minio_secret_key_file: str | None = None
    """File holding the S3 secret key (a mounted Secret); overrides ``minio_secret_key``."""

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

    router_lease_slots: int = Field(default=1, ge=1, le=256)
    """Requests one selection may rank at most (a selection lease: the router spends its
    slots on the next requests with the same client, traits, weights, policy and SLO,
    without asking again; the selector ranked each slot with the load of the ones
    before); it asks for as many as it saw such requests over the last lease age.
    1 (the default): every request asks the selector (no leases). 32 with the default
    age cut the routing overhead at 100 requests/s 3 times and sustained 2.5 times the rate, but
    the replay's ``adaptive`` fell to 93.5 % of its oracle (95.9 % without;
    ``benchmarks/README.md``, issue 19), so leases are for those who trade that."""

    router_lease_max_age_s: float = Field(default=0.5, ge=0, le=10)
    """How long a router may spend a lease's slots after it was granted (a registration,
    a change of availability or a failed call ends it sooner)."""

    router_observation_interval_s: float = Field(default=0.05, ge=0, le=10)
    """Least time between two sends of a router's observed calls (one record per
    executor each; the first after a quiet spell goes at once)."""

    router_suspect_expiry_s: float = Field(default=5.0, ge=0)
    """How long an executor endpoint that refused or dropped a connection is tried last
    (a successful call to it ends that sooner; 0: never suspect)."""

    router_reply_topics: str = ""
    """Comma-separated topics results may be sent to: names, or prefixes ending in ``*``.
    Empty: the inference-results topic and names starting with ``topic_prefix``. The
    catalog's other topics are never allowed."""

    router_metadata_timeout_s: float = Field(default=1.0, gt=0)
    """Longest a request waits for cluster metadata to vet its reply address."""

    # --- launcher --------------------------------------------------------------------

    launcher_backend: Literal["auto", "local", "kubernetes"] = "auto"
    """Where ``mulambda launcher`` runs launched executors: ``kubernetes`` (server-side
    apply of a StatefulSet and Service per launch), ``local`` (``executor serve`` and
    ``companion`` processes on this machine), or ``auto``: kubernetes inside a pod
    (``KUBERNETES_SERVICE_HOST`` set) or with ``launcher_kubeconfig`` set, else local."""

    launcher_group_id: str = "mulambda-launcher"
    """Consumer group of the launchers (one active launcher per deployment suffices)."""

    launcher_resync_interval_s: float = Field(default=30.0, gt=0)
    """Seconds between full reconciliations (restarting dead replicas, undoing drift)."""

    launcher_state_dir: str | None = None
    """Local backend: replica logs and pulled models (default: a new temporary folder)."""

    launcher_local_host: str = Field(default="127.0.0.1", min_length=1)
    """Local backend: interface the replicas' executors bind and register."""

    launcher_namespace: str = Field(default="mulambda", min_length=1)
    """Kubernetes backend: namespace of the launched workloads."""

    launcher_kubeconfig: str | None = None
    """Kubernetes backend: kubeconfig file; unset inside a pod (its service account)."""

    launcher_mulambda_image: str = "ghcr.io/mulambda/mulambda:0.1.0"
    """Kubernetes backend: image of the model fetcher and companion when a launch names
    none."""

    launcher_config_map: str = "mulambda-config"
    """Kubernetes backend: ConfigMap of ``MULAMBDA_*`` settings the launched pods load."""

    launcher_secret_name: str = "mulambda-secrets"  # noqa: S105 - a Secret's name
    """Kubernetes backend: Secret of credentials the launched pods load."""

    # --- registration authenticity (mulambda.wire.signatures) ------------------------

    registration_secret: SecretStr | None = None
    """The deployment's registration secret (selectors, administrators): set, selectors
    apply only executor registrations and tombstones signed with the executor's key
    derived from it. Unset: nothing is verified (the quick start)."""

    registration_secret_file: str | None = None
    """File holding ``registration_secret`` (a mounted Secret); wins over the variable."""

    registration_key: SecretStr | None = None
    """One executor's own signing key (its companion's), as ``mulambda executors key``
    prints it (hex); unused when ``registration_secret`` is set, which derives it."""

    registration_key_file: str | None = None
    """File holding ``registration_key``; wins over the variable."""

    executor_endpoint_allow: str = ""
    """Comma-separated hosts and networks executor endpoints may point at: CIDRs or
    addresses (``10.0.0.0/8``), host names, ``*.zone`` wildcards. A registration whose
    endpoint is elsewhere is dead-lettered. Empty: any endpoint."""

    def signing_key(self, executor_id: str) -> bytes | None:
        """The key that signs ``executor_id``'s registrations, if one is configured."""
        if self.registration_secret is not None:
            secret = self.registration_secret.get_secret_value().encode()
            return executor_key(secret, executor_id)
        if self.registration_key is not None:
            try:
                return bytes.fromhex(self.registration_key.get_secret_value())
            except ValueError:
                raise ConfigurationError("MULAMBDA_REGISTRATION_KEY is not hex") from None
        return None

    @model_validator(mode="after")
    def _read_secret_files(self) -> Self:
        # Secrets come from the environment or from files (Kubernetes Secrets mounted as
        # volumes); a file wins over the variable. Its content is taken without the
        # trailing newline editors and `echo` add.
        for name in type(self).model_fields:
            if not name.endswith(SECRET_FILE_SUFFIX):
                continue
            path = getattr(self, name)
            target = name.removesuffix(SECRET_FILE_SUFFIX)
            if path is None or target not in type(self).model_fields:
                continue
            try:
                text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot read {name} {path}: {type(exc).__name__}") from exc
            if not text:
                raise ValueError(f"{name} {path} is empty")
            current = getattr(self, target)
            secret = isinstance(current, SecretStr) or target in SECRET_SETTINGS
            setattr(self, target, SecretStr(text) if secret else text)
        return self


SECRET_SETTINGS = frozenset(
    name for name, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)
)
"""Settings that hold secrets (typed SecretStr): never logged, shown or sent anywhere."""
