"""One valid instance of every message type, for round trips and integration tests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from mulambda.wire.events import Candidate as CandidateModel
from mulambda.wire.events import (
    ClientRegistration,
    DeadLetter,
    ExecutorRegistration,
    ExecutorStatus,
    InferenceRequest,
    InferenceResult,
    InferenceStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    ObservedLatencies,
    ObservedSample,
    SelectionReply,
    SelectionRequest,
    SelectionStatus,
    Slo,
    SoftWeights,
    Traits,
    WireModel,
    deadline_in,
    utcnow,
)

TRAITS = Traits(model_type="classification", input_format="wine-13", output_format="probs-3")


def registration(executor_id: str = "ex-1", **overrides: object) -> ExecutorRegistration:
    """A plausible executor registration."""
    fields: dict[str, object] = {
        "executor_id": executor_id,
        "model_name": "wine",
        "model_version": 1,
        "traits": TRAITS,
        "accuracy": 0.9,
        "endpoint": "http://127.0.0.1:8501",
        "model_data_delay_ms_per_element": 0.5,
        "node": "node-a",
        "zone": "eu-1",
        "heartbeat_interval_s": 1.0,
    }
    fields.update(overrides)
    return ExecutorRegistration.model_validate(fields)


def routed_request(**fields: Any) -> InferenceRequest:
    """An inference request of client ``cl-1`` for :data:`TRAITS`, ``fields`` overriding."""
    values: dict[str, Any] = {
        "reply_topic": "t.results",
        "deadline": utcnow() + timedelta(seconds=10),
        "client_id": "cl-1",
        "traits": TRAITS,
        "body": {"instances": [1]},
    }
    values.update(fields)
    return InferenceRequest(**values)


def ranked(*executor_ids: str) -> list[CandidateModel]:
    """Candidates named ``executor_ids``, in that order (a selection's ranking)."""
    return [
        CandidateModel(
            executor_id=e, endpoint=f"http://{e}:1", model_name="m", score=1.0, accuracy=0.9
        )
        for e in executor_ids
    ]


def one_of_each() -> list[WireModel]:
    """A valid instance of each of the ten message types."""
    return [
        registration(),
        ClientRegistration(client_id="cl-1", probe_url="http://127.0.0.1:7000/probe", zone="eu"),
        ExecutorStatus(executor_id="ex-1", model_state=ModelState.AVAILABLE, in_flight=3),
        LatencyMeasurement(
            executor_id="ex-1", client_id="cl-1", latency_ms=4.5, source=LatencySource.OBSERVED
        ),
        SelectionRequest(
            reply_topic="t.replies",
            reply_partition=2,
            deadline=deadline_in(5),
            client_id="cl-1",
            traits=TRAITS,
            weights=SoftWeights(latency=0.2, accuracy=0.8),
            input_size=13,
            slo=Slo(max_latency_ms=100, min_accuracy=0.5),
            policy="weighted",
        ),
        SelectionReply(
            correlation_id="c1",
            status=SelectionStatus.OK,
            policy="weighted",
            candidates=[
                CandidateModel(
                    executor_id="ex-1",
                    endpoint="http://127.0.0.1:8501",
                    model_name="wine",
                    score=0.93,
                    estimated_latency_ms=12.0,
                    accuracy=0.9,
                )
            ],
        ),
        InferenceRequest(
            reply_topic="t.results",
            deadline=deadline_in(5),
            client_id="cl-1",
            traits=TRAITS,
            body={"instances": [[0.1] * 13]},
        ),
        InferenceResult(
            correlation_id="c2",
            status=InferenceStatus.OK,
            executor_id="ex-1",
            output={"predictions": [[0.1, 0.2, 0.7]]},
            latency_ms=8.0,
        ),
        DeadLetter(
            topic="t.x", partition=0, offset=7, original_value=b"\xff\x00{", reason="not JSON"
        ),
        ObservedLatencies(
            executor_id="ex-1",
            router_id="router-1",
            samples=[
                ObservedSample(client_id="cl-1", latency_ms=4.5, input_size=13),
                ObservedSample(client_id="cl-2", latency_ms=30.0, failed=True),
            ],
            released=2,
        ),
    ]
