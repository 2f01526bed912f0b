"""``mulambda companion``: the sidecar beside one TF Serving instance.

See :mod:`mulambda.executors.companion`.

Arguments are validated before any Kafka traffic (one line, exit 2). The companion runs
under :func:`mulambda.runtime.runner.run`, so SIGTERM publishes the deregistration and a final
END status, flushes, and exits 0.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from mulambda.cli.common import load_settings
from mulambda.cli.executors import (
    BadArguments,
    build_registration,
    check_endpoint,
    registration_options,
)
from mulambda.executors.companion import Companion
from mulambda.executors.oip import OIPClient
from mulambda.executors.tfserving import TFServingClient
from mulambda.kafka import KafkaConfig
from mulambda.runtime.observability import configure_logging
from mulambda.runtime.runner import Service, run
from mulambda.wire.catalog import load_catalog
from mulambda.wire.events import ExecutorProtocol, ExecutorRegistration

_REGISTRATION_ONLY = (
    "model_name",
    "model_version",
    "model_type",
    "input_format",
    "output_format",
    "accuracy",
)


@click.command()
@registration_options()
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=None,
    help="Seconds between heartbeats [default: 5, or the confirmed registration's].",
)
@click.option(
    "--confirm-existing",
    is_flag=True,
    help="Do not publish a registration: confirm the one an administrator published "
    "(`mulambda executors register`) and keep it on stop.",
)
@click.option(
    "--status-endpoint",
    default=None,
    help="URL to read status from, when not --endpoint (e.g. localhost in a pod).",
)
@click.option(
    "--probe-interval",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=None,
    help="Seconds between probe rounds [default: the heartbeat interval].",
)
@click.option(
    "--probe-concurrency",
    type=click.IntRange(min=1, max=4096),
    default=32,
    show_default=True,
    help="Probes in flight at once.",
)
@click.option(
    "--probe-timeout",
    type=click.FloatRange(min=0, min_open=True, max=60),
    default=2.0,
    show_default=True,
    help="Seconds a probe may take before it counts as timed out.",
)
@click.option(
    "--metrics-host",
    default=None,
    help="Interface of /metrics, /healthz, /readyz [default: MULAMBDA_METRICS_HOST, which"
    " defaults to 127.0.0.1] (port: MULAMBDA_METRICS_PORT).",
)
def companion(
    executor_id: str,
    endpoint: str,
    heartbeat_interval: float | None,
    confirm_existing: bool,
    status_endpoint: str | None,
    probe_interval: float | None,
    probe_concurrency: int,
    probe_timeout: float,
    metrics_host: str | None,
    **options: Any,
) -> None:
    """Register an executor, heartbeat its model status and probe client latencies.

    Runs until SIGTERM/SIGINT, then deregisters and exits 0.
    """
    registration: ExecutorRegistration | None = None
    if confirm_existing:
        given = [
            "--" + name.replace("_", "-")
            for name in _REGISTRATION_ONLY
            if options[name] is not None
        ]
        if given:
            raise BadArguments(
                "--confirm-existing takes the model and traits from the topic; drop "
                + ", ".join(given)
            )
        # The registered endpoint is known only after the replay; this one is watched.
        check_endpoint("--endpoint", endpoint)
    else:
        registration = build_registration(
            executor_id=executor_id,
            endpoint=endpoint,
            heartbeat_interval_s=heartbeat_interval or 5.0,
            **options,
        )
    watch = status_endpoint or endpoint
    # With --confirm-existing the registered protocol must match this one (checked at start).
    status_client = (
        OIPClient(watch, limit=4)
        if options["protocol"] == ExecutorProtocol.OIP_V2.value
        else TFServingClient(watch, limit=4)
    )
    if status_endpoint is not None:
        check_endpoint("--status-endpoint", status_endpoint)
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)
    configure_logging(settings.log_level)

    async def factory() -> Service:
        return Companion(
            KafkaConfig.from_settings(settings, f"mulambda-companion-{executor_id}"),
            catalog,
            registration,
            executor_id=executor_id,
            tfserving=status_client,
            heartbeat_interval_s=heartbeat_interval,
            probe_interval_s=probe_interval,
            probe_concurrency=probe_concurrency,
            probe_timeout_s=probe_timeout,
            health_host=metrics_host or settings.metrics_host,
            health_port=settings.metrics_port,
            shutdown_timeout_s=max(settings.shutdown_grace_s, 1.0),
            signing_key=settings.signing_key(executor_id),
        )

    sys.exit(run(factory, grace_s=settings.shutdown_grace_s))
