"""``mulambda selector``: run a selector worker until SIGTERM."""

from __future__ import annotations

import click

from mulambda.cli.common import default_worker_id, load_settings, registration_gate, run_worker
from mulambda.errors import MulambdaError
from mulambda.kafka import KafkaConfig, Membership
from mulambda.runtime.observability import configure_logging
from mulambda.runtime.redis_connection import RedisConfig
from mulambda.selection.selector import Selector
from mulambda.selection.store import ViewStore
from mulambda.wire.catalog import load_catalog


@click.command(name="selector")
@click.option("--selector-id", default=None, help="Unique id (default: host name and pid).")
def selector(selector_id: str | None) -> None:
    """Materialise executor state and answer selection requests."""
    settings = load_settings()
    configure_logging(settings.log_level)
    sid = selector_id or default_worker_id("selector")
    try:
        worker = Selector(
            KafkaConfig.from_settings(settings, sid),
            load_catalog(settings.topic_prefix),
            ViewStore(
                RedisConfig.from_settings(settings),
                key_prefix=f"{settings.redis_key_prefix}{settings.topic_prefix}",
                missed_heartbeats=settings.selector_missed_heartbeats,
            ),
            selector_id=sid,
            group_id=settings.selector_group_id,
            default_policy=settings.selector_default_policy,
            missed_heartbeats=settings.selector_missed_heartbeats,
            grace_s=settings.shutdown_grace_s,
            membership=Membership(
                instance_id=settings.kafka_group_instance_id,
                session_timeout_s=settings.kafka_session_timeout_s,
                heartbeat_interval_s=settings.kafka_heartbeat_interval_s,
            ),
            registrations=registration_gate(settings),
        )
    except MulambdaError as exc:
        raise click.ClickException(exc.reason) from exc
    run_worker(worker, settings)
