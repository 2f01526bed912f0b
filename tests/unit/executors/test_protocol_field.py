"""The executor protocol from registration (wire, CLI) through the view to candidates."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from mulambda.cli.executors import BadArguments, build_registration
from mulambda.selection.policies import PolicyState, select
from mulambda.selection.view import ExecutorView
from mulambda.wire.codec import decode
from mulambda.wire.events import (
    Candidate,
    ExecutorProtocol,
    ExecutorRegistration,
    ExecutorStatus,
    ModelState,
    SelectionRequest,
    SelectionStatus,
    SoftWeights,
    utcnow,
)
from tests.factories import TRAITS, registration

pytestmark = pytest.mark.unit

NOW = 1000.0


def test_registrations_and_candidates_default_to_tf_serving() -> None:
    old = registration("ex-old").model_dump(mode="json")
    del old["protocol"]  # as a build before the field wrote it
    decoded = decode(ExecutorRegistration, orjson.dumps(old))
    assert decoded.protocol is ExecutorProtocol.TFSERVING_REST
    candidate = Candidate(
        executor_id="ex", endpoint="http://x:1", model_name="m", score=1.0, accuracy=0.5
    )
    assert candidate.protocol is ExecutorProtocol.TFSERVING_REST
    assert registration("ex", protocol="oip-v2").protocol is ExecutorProtocol.OIP_V2
    with pytest.raises(ValueError, match="protocol"):
        registration("ex", protocol="grpc")


def test_candidates_carry_each_executors_protocol() -> None:
    view = ExecutorView()
    for executor_id, protocol, accuracy in (
        ("oip", ExecutorProtocol.OIP_V2, 0.9),
        ("tfs", ExecutorProtocol.TFSERVING_REST, 0.5),
    ):
        view.apply_registration(
            registration(executor_id, protocol=protocol, accuracy=accuracy), NOW
        )
        view.apply_status(
            ExecutorStatus(executor_id=executor_id, model_state=ModelState.AVAILABLE), NOW
        )
    request = SelectionRequest(
        reply_topic="replies",
        deadline=utcnow() + timedelta(seconds=30),
        client_id="me",
        traits=TRAITS,
        weights=SoftWeights(latency=0, accuracy=1),
    )
    reply = select(view, request, NOW, state=PolicyState())
    assert reply.status is SelectionStatus.OK
    assert [(c.executor_id, c.protocol) for c in reply.candidates] == [
        ("oip", ExecutorProtocol.OIP_V2),
        ("tfs", ExecutorProtocol.TFSERVING_REST),
    ]
    # A re-registration in the other protocol reaches the next selection.
    view.apply_registration(registration("oip", protocol=ExecutorProtocol.TFSERVING_REST), NOW)
    again = select(view, request, NOW, state=PolicyState())
    assert {c.protocol for c in again.candidates} == {ExecutorProtocol.TFSERVING_REST}


def _cli_registration(
    accuracy: float = 0.9, protocol: str = "tfserving-rest"
) -> ExecutorRegistration:
    return build_registration(
        executor_id="ex",
        endpoint="http://127.0.0.1:8080",
        model_name="wine",
        model_version=None,
        model_type="t",
        input_format="i",
        output_format="o",
        accuracy=accuracy,
        model_data_delay_ms_per_element=0.0,
        node="local",
        zone="local",
        protocol=protocol,
    )


def test_cli_protocol_option_reaches_the_registration() -> None:
    assert _cli_registration().protocol is ExecutorProtocol.TFSERVING_REST
    assert _cli_registration(protocol="oip-v2").protocol is ExecutorProtocol.OIP_V2
    with pytest.raises(BadArguments):
        _cli_registration(accuracy=2.0, protocol="oip-v2")
