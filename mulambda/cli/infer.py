"""``mulambda infer``: publish one inference request through the SDK and print its result."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson

from mulambda.cli.common import load_settings, run_async
from mulambda.routing.client import Client
from mulambda.routing.results import InferenceFailed
from mulambda.wire.events import InferenceResult, InferenceStatus


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
@click.option("--no-wait", is_flag=True, help="Publish and print the request id only.")
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
    """Publish an InferenceRequest and print the InferenceResult as JSON (exit 1 on error)."""
    settings = load_settings()
    raw = sys.stdin.read() if body == "-" else body
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--body") from exc
    if not isinstance(parsed, dict):
        raise click.BadParameter("not a JSON object", param_hint="--body")
    slo = (
        {"max_latency_ms": max_latency_ms, "min_accuracy": min_accuracy}
        if max_latency_ms is not None or min_accuracy is not None
        else None
    )
    call: dict[str, Any] = {
        "traits": {
            "model_type": model_type,
            "input_format": input_format,
            "output_format": output_format,
        },
        "weights": {"latency": latency, "accuracy": accuracy},
        "slo": slo,
        "policy": policy,
        "verb": verb,
        "body": parsed,
        "deadline": timeout,
    }

    async def go() -> InferenceResult | str:
        async with Client.from_settings(settings, client_id) as client:
            if no_wait:
                return await client.submit(**call)
            try:
                return await client.infer(**call)
            except InferenceFailed as failed:
                return failed.result

    outcome = run_async(go())  # a MulambdaError (timeout, bad argument) exits 1 with its reason
    if isinstance(outcome, str):
        click.echo(outcome)  # the request id its result will carry
        return
    click.echo(outcome.model_dump_json(indent=2))
    if outcome.status is not InferenceStatus.OK:
        raise SystemExit(1)
