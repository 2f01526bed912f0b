from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mulambda.errors import DecodeError, OversizeError
from mulambda.wire.codec import ReplyAddress, decode, encode, peek_reply_address
from mulambda.wire.events import (
    ALL_MESSAGE_TYPES,
    DeadLetter,
    ExecutorRegistration,
    LatencyMeasurement,
    ObservedLatencies,
    SelectionReply,
    SelectionRequest,
    SoftWeights,
    WireModel,
)
from tests.factories import one_of_each, registration

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("message", one_of_each(), ids=lambda m: type(m).__name__)
def test_round_trip_every_type(message: WireModel) -> None:
    data = encode(message)
    assert decode(type(message), data) == message


def test_factories_cover_every_message_type() -> None:
    assert {type(m) for m in one_of_each()} == set(ALL_MESSAGE_TYPES)


def test_envelope_fields_are_present_on_the_wire() -> None:
    body = orjson.loads(encode(registration()))
    assert body["schema_version"] == 1
    assert len(body["message_id"]) == 32
    assert body["timestamp"].endswith("Z")


def test_dead_letter_keeps_arbitrary_bytes() -> None:
    raw = bytes(range(256))
    letter = DeadLetter(topic="t", partition=1, offset=2, original_value=raw, reason="r")
    assert decode(DeadLetter, encode(letter)).original_value == raw


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    body = orjson.loads(encode(registration()))
    body["added_in_v2"] = {"anything": True}
    assert decode(ExecutorRegistration, orjson.dumps(body)).executor_id == "ex-1"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\xff\xfe not json", "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'{"executor_id": "x"}', "invalid executor-registration: model_name"),
        (None, "empty record"),
    ],
)
def test_decode_errors_say_why(data: bytes | None, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        decode(ExecutorRegistration, data)


def test_oversize_is_refused_before_parsing() -> None:
    with pytest.raises(OversizeError, match="exceeds the 100-byte bound"):
        decode(ExecutorRegistration, b"{" + b" " * 200 + b"}", max_bytes=100)


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5])
def test_weights_outside_unit_interval_or_nan_are_invalid(bad: float) -> None:
    body = orjson.loads(encode(one_of_each()[4]))
    body["weights"]["latency"] = bad if bad == bad else "NaN"  # orjson cannot emit NaN
    with pytest.raises(DecodeError, match=r"weights\.latency"):
        decode(SelectionRequest, orjson.dumps(body))


@pytest.mark.parametrize(
    ("field", "bad", "fragment"),
    [
        ("latency_ms", "NaN", r"samples\.0\.latency_ms"),
        ("latency_ms", "-Infinity", r"samples\.0\.latency_ms"),
        ("latency_ms", "-1", r"samples\.0\.latency_ms"),
        ("input_size", "-3", r"samples\.0\.input_size"),
        ("client_id", '"has space"', r"samples\.0\.client_id"),
    ],
)
def test_observed_samples_out_of_range_are_invalid(field: str, bad: str, fragment: str) -> None:
    batch = next(m for m in one_of_each() if isinstance(m, ObservedLatencies))
    body = orjson.loads(encode(batch))
    body["samples"][0][field] = "@@bad@@"
    data = orjson.dumps(body).replace(b'"@@bad@@"', bad.encode())
    with pytest.raises(DecodeError, match=fragment):
        decode(ObservedLatencies, data)


def test_registration_refuses_bad_endpoint_url() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        registration(endpoint="ftp://nowhere")


def test_peek_reply_address_reads_invalid_requests() -> None:
    data = orjson.dumps(
        {"reply_topic": "r", "reply_partition": 3, "correlation_id": "c", "weights": "bogus"}
    )
    address = peek_reply_address(data)
    assert address is not None
    assert (address.topic, address.partition, address.correlation_id) == ("r", 3, "c")
    assert peek_reply_address(b"not json") is None
    with_nan = b'{"reply_topic": "r", "correlation_id": "c", "weights": {"latency": NaN}}'
    assert peek_reply_address(with_nan) == ReplyAddress("r", None, "c")
    assert peek_reply_address(orjson.dumps({"reply_topic": "r"})) is None
    bad_partition = orjson.dumps({"reply_topic": "r", "correlation_id": "c", "reply_partition": -1})
    assert peek_reply_address(bad_partition) == peek_reply_address(
        orjson.dumps({"reply_topic": "r", "correlation_id": "c"})
    )

    with_id = orjson.dumps({"reply_topic": "r", "correlation_id": "c", "message_id": "m1"})
    assert peek_reply_address(with_id) == ReplyAddress("r", None, "c", "m1")


def _request_body(**changes: object) -> bytes:
    request = next(m for m in one_of_each() if isinstance(m, SelectionRequest))
    body = orjson.loads(encode(request))
    body.update(changes)
    return orjson.dumps(body)


def test_unknown_schema_versions_are_refused_naming_the_supported_range() -> None:
    assert decode(SelectionRequest, _request_body(schema_version=1)).schema_version == 1
    for version in (0, 2, 99):
        with pytest.raises(
            DecodeError, match=rf"unsupported schema_version {version}; this build reads 1 to 1"
        ):
            decode(SelectionRequest, _request_body(schema_version=version))


def test_deadlines_without_a_utc_offset_are_refused() -> None:
    with pytest.raises(DecodeError, match="deadline needs a UTC offset"):
        decode(SelectionRequest, _request_body(deadline="2030-01-01T12:00:00"))
    aware = decode(SelectionRequest, _request_body(deadline="2030-01-01T13:00:00+01:00"))
    assert aware.deadline == datetime(2030, 1, 1, 12, tzinfo=UTC)


def test_answer_by_is_optional_and_needs_a_utc_offset() -> None:
    body = orjson.loads(_request_body())
    body.pop("answer_by", None)  # a requester from before the field
    assert decode(SelectionRequest, orjson.dumps(body)).answer_by is None
    with pytest.raises(DecodeError, match="answer_by needs a UTC offset"):
        decode(SelectionRequest, _request_body(answer_by="2030-01-01T12:00:00"))
    aware = decode(SelectionRequest, _request_body(answer_by="2030-01-01T13:00:00+01:00"))
    assert aware.answer_by == datetime(2030, 1, 1, 12, tzinfo=UTC)


def test_a_failed_call_report_is_an_observed_latency_old_readers_can_skip() -> None:
    old = {"executor_id": "e", "client_id": "c", "latency_ms": 5.0, "source": "observed"}
    assert decode(LatencyMeasurement, orjson.dumps(old)).failed is False
    assert decode(LatencyMeasurement, orjson.dumps({**old, "failed": True})).failed is True


@given(
    latency=st.floats(min_value=0, max_value=1),
    accuracy=st.floats(min_value=0, max_value=1),
    size=st.integers(min_value=0, max_value=10**9),
)
def test_selection_request_round_trip_property(latency: float, accuracy: float, size: int) -> None:
    base = one_of_each()[4]
    assert isinstance(base, SelectionRequest)
    request = base.model_copy(
        update={"weights": SoftWeights(latency=latency, accuracy=accuracy), "input_size": size}
    )
    assert decode(SelectionRequest, encode(request)) == request


@pytest.mark.parametrize(
    "path",
    [
        ("traits",),
        ("weights",),
        ("slo",),
    ],
)
def test_unknown_fields_of_nested_models_are_ignored_too(path: tuple[str, ...]) -> None:
    data = _request_body()
    body = orjson.loads(data)
    body[path[0]]["added_in_v2"] = [1, {"x": None}]
    assert decode(SelectionRequest, orjson.dumps(body)) == decode(SelectionRequest, data)


def test_unknown_fields_of_launch_specs_and_candidates_are_ignored() -> None:
    reg = orjson.loads(encode(registration(launch={"image": "i", "replicas": 2})))
    reg["launch"]["gpu"] = "a100"
    assert (
        decode(ExecutorRegistration, orjson.dumps(reg)).launch
        == registration(launch={"image": "i", "replicas": 2}).launch
    )
    reply = next(m for m in one_of_each() if isinstance(m, SelectionReply))
    doc = orjson.loads(encode(reply))
    doc["candidates"][0]["region"] = "eu"
    assert decode(SelectionReply, orjson.dumps(doc)).candidates == reply.candidates


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("top_k", "5", "top_k: Input should be a valid integer"),
        ("top_k", 5.0, "top_k: Input should be a valid integer"),
        ("input_size", True, "input_size: Input should be a valid integer"),
        ("deadline", 1_999_999_999, "deadline: Input should be a valid datetime"),
        ("client_id", 7, "client_id: Input should be a valid string"),
    ],
)
def test_wrong_json_types_are_refused_not_coerced(field: str, value: object, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        decode(SelectionRequest, _request_body(**{field: value}))
