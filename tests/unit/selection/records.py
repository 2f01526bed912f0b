"""State records for the selection unit tests: registrations, statuses and latencies."""

from __future__ import annotations

from mulambda.wire.events import (
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    Traits,
)

WINE = Traits(model_type="classification", input_format="wine-13", output_format="probs-3")
TEXT = Traits(model_type="sentiment", input_format="text", output_format="label")


def reg(
    executor_id: str,
    *,
    traits: Traits = WINE,
    accuracy: float = 0.9,
    delay: float = 0.0,
    interval: float = 5.0,
) -> ExecutorRegistration:
    return ExecutorRegistration(
        executor_id=executor_id,
        model_name="m",
        traits=traits,
        accuracy=accuracy,
        endpoint=f"http://{executor_id}:8501",
        model_data_delay_ms_per_element=delay,
        heartbeat_interval_s=interval,
    )


def status(
    executor_id: str,
    state: ModelState = ModelState.AVAILABLE,
    *,
    in_flight: int = 0,
    interval: float = 5.0,
) -> ExecutorStatus:
    return ExecutorStatus(
        executor_id=executor_id,
        model_state=state,
        in_flight=in_flight,
        heartbeat_interval_s=interval,
    )


def probe(executor_id: str, client_id: str, ms: float) -> LatencyMeasurement:
    return LatencyMeasurement(executor_id=executor_id, client_id=client_id, latency_ms=ms)


def observed(
    executor_id: str, client_id: str, ms: float, size: int | None = None
) -> LatencyMeasurement:
    return LatencyMeasurement(
        executor_id=executor_id,
        client_id=client_id,
        latency_ms=ms,
        source=LatencySource.OBSERVED,
        input_size=size,
    )
