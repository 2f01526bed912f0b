"""``mulambda infer``: publish one inference request and print its result."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson
from pydantic import ValidationError

from mulambda.cli.common import load_settings, run_async
from mulambda.kafka import KafkaConfig, Producer, read_until_key
from mulambda.wire.catalog import Topic, load_catalog
from mulambda.wire.events import (
    InferenceRequest,
    InferenceResult,
    InferenceStatus,
    Slo,
    SoftWeights,
    Traits,
    deadline_in,
)


@click.command()
@click.option("--client-id", required=True, help="Who asks (latencies are measured to it).")
@click.option("--model-type", required=True)
@click.option("--input-format", required=True)
@click.option("--output-format", required=True)
@click.option("--latency", default=0.5, show_default=True, type=float, help="Importance, [0, 1].")
@click.option("--accuracy", default=0.5, show_default=True, type=float, help="Importance, [0, 1].")
@click.option("--max-latency-ms", type=float, default=None, help="Hard SLO on the estimate.")
@click.option("--min-accuracy", type=float, default=None, help="Hard SLO on accuracy.")
@click.option("--policy", default=None, help="Selection policy (default: the selector's).")
@click.option("--verb", type=click.Choice(["predict", "classify", "regress"]), default="predict")
@click.option("--body", required=True, help="TF Serving request body as JSON; '-' reads stdin.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.1))
@click.option("--no-wait", is_flag=True, help="Publish and print the correlation id only.")
def infer(
    client_id: str,
    model_type: str,
    input_format: str,
    output_format: str,
    latency: float,
    accuracy: float,
    max_latency_ms: float | None,
    min_accuracy: float | None,
    policy: str | None,
    verb: str,
    body: str,
    timeout: float,
    no_wait: bool,
) -> None:
    """Publish an InferenceRequest and print the InferenceResult as JSON."""
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)
    raw = sys.stdin.read() if body == "-" else body
    try:
        parsed: Any = orjson.loads(raw)
        slo = (
            Slo(max_latency_ms=max_latency_ms, min_accuracy=min_accuracy)
            if max_latency_ms is not None or min_accuracy is not None
            else None
        )
        request = InferenceRequest(
            reply_topic=catalog.name(Topic.INFERENCE_RESULTS),
            deadline=deadline_in(timeout),
            client_id=client_id,
            traits=Traits(
                model_type=model_type, input_format=input_format, output_format=output_format
            ),
            weights=SoftWeights(latency=latency, accuracy=accuracy),
            slo=slo,
            policy=policy,
            verb=verb,  # type: ignore[arg-type]  # click.Choice guarantees the literal
            body=parsed,
        )
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--body") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise click.ClickException(f"invalid request: {where}: {first['msg']}") from exc
    kafka = KafkaConfig.from_settings(settings, "mulambda-infer")

    async def go() -> InferenceResult:
        reply_topic = catalog.name(Topic.INFERENCE_RESULTS)
        # The reader is positioned before publishing, so a fast result cannot be missed.
        async with (
            Producer(kafka) as producer,
            read_until_key(kafka, reply_topic, request.correlation_id, InferenceResult) as waiter,
        ):
            await producer.send_and_wait(
                catalog.name(Topic.INFERENCE_REQUESTS), request, key=client_id
            )
            if no_wait:
                click.echo(request.correlation_id)
                raise SystemExit(0)
            return await waiter.result(timeout)

    result = run_async(go())
    click.echo(result.model_dump_json(indent=2))
    if result.status is not InferenceStatus.OK:
        raise SystemExit(1)
