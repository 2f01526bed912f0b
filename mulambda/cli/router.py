"""``mulambda router``: run a router worker until SIGTERM."""

from __future__ import annotations

import click

from mulambda.cli.common import default_worker_id, load_settings, run_worker
from mulambda.kafka import KafkaConfig, Membership
from mulambda.routing.answered import AnsweredRequests
from mulambda.routing.router import Router
from mulambda.runtime.observability import configure_logging
from mulambda.runtime.redis_connection import RedisConfig
from mulambda.wire.catalog import load_catalog


@click.command(name="router")
@click.option("--router-id", default=None, help="Unique id (default: host name and pid).")
@click.option("--group-id", default="mulambda-router", show_default=True)
@click.option(
    "--concurrency",
    default=64,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Requests routed at once.",
)
@click.option(
    "--queue-limit",
    default=None,
    type=click.IntRange(0, 1_000_000),
    help="Requests taken from Kafka to wait for a routing slot (default 16 x concurrency); "
    "each waits at most until its deadline, then gets an error result.",
)
@click.option("--selection-timeout", default=2.0, show_default=True, type=click.FloatRange(0.01))
def router(
    router_id: str | None,
    group_id: str,
    concurrency: int,
    queue_limit: int | None,
    selection_timeout: float,
) -> None:
    """Route inference requests to the executors the selector picks."""
    settings = load_settings()
    configure_logging(settings.log_level)
    # A stable id (static membership, transactional id) when the deployment gives one.
    rid = router_id or settings.kafka_group_instance_id or default_worker_id("router")
    worker = Router(
        KafkaConfig.from_settings(settings, rid),
        load_catalog(settings.topic_prefix),
        router_id=rid,
        group_id=group_id,
        concurrency=concurrency,
        queue_limit=queue_limit,
        selection_timeout_s=selection_timeout,
        top_k=settings.router_top_k,
        call_margin_s=settings.router_call_margin_s,
        ranking_max_age_s=settings.router_ranking_max_age_s,
        ranking_cache_entries=settings.router_ranking_cache_entries,
        suspect_expiry_s=settings.router_suspect_expiry_s,
        lease_slots=settings.router_lease_slots,
        lease_max_age_s=settings.router_lease_max_age_s,
        observation_interval_s=settings.router_observation_interval_s,
        reply_topics=settings.router_reply_topics.split(","),
        metadata_timeout_s=settings.router_metadata_timeout_s,
        grace_s=settings.shutdown_grace_s,
        membership=Membership(
            instance_id=settings.kafka_group_instance_id,
            session_timeout_s=settings.kafka_session_timeout_s,
            heartbeat_interval_s=settings.kafka_heartbeat_interval_s,
        ),
        exactly_once=settings.delivery_mode == "exactly-once",
        linger_ms=settings.kafka_linger_ms,
        transaction_timeout_s=settings.transaction_timeout_s,
        transaction_interval_s=settings.transaction_interval_s,
        answered=AnsweredRequests(
            RedisConfig.from_settings(settings),
            key_prefix=f"{settings.redis_key_prefix}{settings.topic_prefix}",
            ttl_margin_s=settings.answered_ttl_margin_s,
        ),
    )
    run_worker(worker, settings)
