"""The pure parts of generation fencing: the wire of the two request versions, what each
broker answer calls for, and which new partitions may be read."""

from __future__ import annotations

from io import BytesIO

import pytest
from aiokafka.protocol.types import Int16, Int32, Int64

from mulambda.kafka.fencing import (
    ErrorCode,
    FetchedOffset,
    Generation,
    OffsetFetchRequestV7,
    OffsetFetchResponseV7,
    StableGate,
    Step,
    TxnOffsetCommitRequestV3,
    TxnOffsetCommitResponseV3,
    commit_errors,
    error_name,
    fetched_offsets,
    judge_commit,
    offset_fetch_request,
    step_for,
    txn_offset_commit_request,
)
from mulambda.kafka.records import TopicPartition

pytestmark = pytest.mark.unit

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _cstr(text: str | None) -> bytes:
    if text is None:
        return b"\x00"
    raw = text.encode()
    return _uvarint(len(raw) + 1) + raw


def test_a_membership_without_generation_or_member_id_is_not_one() -> None:
    assert Generation(3, "m-1", "router-0").known
    assert not Generation(-1, "", None).known, "what aiokafka holds once the group dropped it"
    assert not Generation(3, "").known
    assert not Generation(-1, "m-1").known


def test_the_commit_request_is_txn_offset_commit_v3_byte_for_byte() -> None:
    request = txn_offset_commit_request(
        transactional_id="t",
        producer_id=7,
        producer_epoch=2,
        group_id="g",
        generation=Generation(5, "m", "i"),
        offsets={A1: 11, A0: 10},
    )
    assert (request.API_KEY, request.API_VERSION, request.FLEXIBLE_VERSION) == (28, 3, True)
    # Written out by hand from the protocol's field list (flexible: compact strings and
    # arrays, a tag buffer after every structure), partitions in order.
    expected = b"".join(
        [
            _cstr("t"),
            _cstr("g"),
            Int64.encode(7),
            Int16.encode(2),
            Int32.encode(5),
            _cstr("m"),
            _cstr("i"),
            _uvarint(2),  # one topic
            _cstr("a"),
            _uvarint(3),  # two partitions
            Int32.encode(0) + Int64.encode(10) + Int32.encode(-1) + _cstr("") + b"\x00",
            Int32.encode(1) + Int64.encode(11) + Int32.encode(-1) + _cstr("") + b"\x00",
            b"\x00",  # topic tags
            b"\x00",  # request tags
        ]
    )
    assert request.encode() == expected
    header = request.build_request_header(correlation_id=1, client_id="c")
    assert header.encode().endswith(b"\x00"), "the flexible request header has its tag buffer"


def test_a_static_member_is_optional_on_the_wire() -> None:
    request = txn_offset_commit_request(
        transactional_id="t",
        producer_id=1,
        producer_epoch=0,
        group_id="g",
        generation=Generation(1, "m"),
        offsets={A0: 1},
    )
    decoded = TxnOffsetCommitRequestV3.decode(BytesIO(request.encode()))
    assert decoded.group_instance_id is None
    assert decoded.member_id == "m"
    assert decoded.topics == [("a", [(0, 1, -1, "", {})], {})]


def test_commit_answers_decode_to_an_error_per_partition() -> None:
    body = b"".join(
        [
            Int32.encode(0),  # throttle
            _uvarint(3),
            _cstr("a"),
            _uvarint(3),
            Int32.encode(0) + Int16.encode(0) + b"\x00",
            Int32.encode(1) + Int16.encode(ErrorCode.ILLEGAL_GENERATION) + b"\x00",
            b"\x00",
            _cstr("b"),
            _uvarint(2),
            Int32.encode(0) + Int16.encode(ErrorCode.UNKNOWN_MEMBER_ID) + b"\x00",
            b"\x00",
            b"\x00",
        ]
    )
    response = TxnOffsetCommitResponseV3.decode(BytesIO(body))
    assert commit_errors(response) == {A0: 0, A1: 22, B0: 25}


def test_the_offset_fetch_request_asks_for_stable_offsets() -> None:
    request = offset_fetch_request("g", [B0, A1, A0])
    assert (request.API_KEY, request.API_VERSION, request.FLEXIBLE_VERSION) == (9, 7, True)
    decoded = OffsetFetchRequestV7.decode(BytesIO(request.encode()))
    assert decoded.group_id == "g"
    assert decoded.topics == [("a", [0, 1], {}), ("b", [0], {})]
    assert decoded.require_stable is True
    assert request.encode().endswith(b"\x01\x00"), "require_stable, then the tag buffer"


def _fetch_response(group_error: int, partitions: list[tuple[int, int, int]]) -> bytes:
    rows = b"".join(
        Int32.encode(p) + Int64.encode(o) + Int32.encode(-1) + _cstr("") + Int16.encode(e) + b"\0"
        for p, o, e in partitions
    )
    return b"".join(
        [
            Int32.encode(0),
            _uvarint(2),
            _cstr("a"),
            _uvarint(len(partitions) + 1),
            rows,
            b"\x00",
            Int16.encode(group_error),
            b"\x00",
        ]
    )


def test_fetched_offsets_carry_each_partitions_offset_or_error() -> None:
    body = _fetch_response(0, [(0, 42, 0), (1, -1, ErrorCode.UNSTABLE_OFFSET_COMMIT)])
    answers = fetched_offsets(OffsetFetchResponseV7.decode(BytesIO(body)))
    assert answers == {A0: FetchedOffset(42), A1: FetchedOffset(-1, 88)}


def test_a_group_level_fetch_error_stands_for_every_partition() -> None:
    body = _fetch_response(ErrorCode.NOT_COORDINATOR, [(0, -1, 0)])
    answers = fetched_offsets(OffsetFetchResponseV7.decode(BytesIO(body)))
    assert answers == {A0: FetchedOffset(-1, ErrorCode.NOT_COORDINATOR)}


@pytest.mark.parametrize(
    ("code", "step"),
    [
        (0, Step.DONE),
        (ErrorCode.ILLEGAL_GENERATION, Step.FENCED),
        (ErrorCode.UNKNOWN_MEMBER_ID, Step.FENCED),
        (ErrorCode.FENCED_INSTANCE_ID, Step.FENCED),
        (ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, Step.RETRY),
        (ErrorCode.CONCURRENT_TRANSACTIONS, Step.RETRY),
        (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, Step.RETRY),
        (ErrorCode.NOT_COORDINATOR, Step.REDISCOVER),
        (ErrorCode.COORDINATOR_NOT_AVAILABLE, Step.REDISCOVER),
        (ErrorCode.REQUEST_TIMED_OUT, Step.REDISCOVER),
        (ErrorCode.REBALANCE_IN_PROGRESS, Step.ABORT),
        (ErrorCode.GROUP_AUTHORIZATION_FAILED, Step.DENIED),
        (ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, Step.DENIED),
        (47, Step.FAILED),  # INVALID_PRODUCER_EPOCH: a newer producer took the id
        (90, Step.FAILED),  # PRODUCER_FENCED
        (9999, Step.FAILED),
    ],
)
def test_what_each_error_code_calls_for(code: int, step: Step) -> None:
    assert step_for(code) is step


def test_a_commit_is_done_only_when_every_partition_is() -> None:
    verdict = judge_commit({A0: 0, A1: 0}, [A0, A1])
    assert (verdict.step, verdict.again, verdict.error_code) == (Step.DONE, frozenset(), 0)


def test_retriable_partitions_are_sent_again_and_the_rest_not() -> None:
    verdict = judge_commit({A0: 0, A1: ErrorCode.COORDINATOR_LOAD_IN_PROGRESS}, [A0, A1])
    assert verdict.step is Step.RETRY
    assert verdict.again == {A1}


def test_a_partition_the_answer_leaves_out_is_sent_again() -> None:
    verdict = judge_commit({A0: 0}, [A0, A1])
    assert verdict.step is Step.RETRY
    assert verdict.again == {A1}


def test_one_fenced_partition_fences_the_commit() -> None:
    verdict = judge_commit({A0: ErrorCode.NOT_COORDINATOR, A1: ErrorCode.UNKNOWN_MEMBER_ID}, [A0])
    assert verdict.step is Step.FENCED
    assert verdict.error_code == ErrorCode.UNKNOWN_MEMBER_ID


def test_refusals_beat_fencing() -> None:
    verdict = judge_commit({A0: ErrorCode.ILLEGAL_GENERATION, A1: 30}, [A0, A1])
    assert verdict.step is Step.DENIED


def test_error_names_are_readable() -> None:
    assert error_name(22) == "ILLEGAL_GENERATION"
    assert error_name(88) == "UNSTABLE_OFFSET_COMMIT"
    assert "47" in error_name(47)


# --- the stable-offset gate -----------------------------------------------------------


def test_a_held_partition_is_let_go_at_its_stable_offset() -> None:
    gate: StableGate[str] = StableGate()
    gate.hold(["p0", "p1"])
    asked = gate.ask()
    ready = gate.answered(asked, {"p0": FetchedOffset(17), "p1": FetchedOffset(-1)})
    assert ready == {"p0": 17, "p1": None}, "-1: nothing committed, the reset policy decides"
    assert len(gate) == 0
    assert gate.ask() == {}


def test_an_open_transactions_offsets_keep_the_partition_held() -> None:
    gate: StableGate[str] = StableGate()
    gate.hold(["p0", "p1"])
    asked = gate.ask()
    unstable = FetchedOffset(-1, ErrorCode.UNSTABLE_OFFSET_COMMIT)
    assert gate.answered(asked, {"p0": unstable, "p1": FetchedOffset(3)}) == {"p1": 3}
    assert gate.holds("p0")
    assert gate.answered(gate.ask(), {"p0": FetchedOffset(9)}) == {"p0": 9}


def test_failed_and_missing_answers_keep_partitions_held() -> None:
    gate: StableGate[str] = StableGate()
    gate.hold(["p0", "p1"])
    asked = gate.ask()
    failed = FetchedOffset(-1, ErrorCode.NOT_COORDINATOR)
    assert gate.answered(asked, {"p0": failed}) == {}
    assert gate.holds("p0")
    assert gate.holds("p1")


def test_a_revoked_partition_is_forgotten_and_an_old_answer_does_not_free_its_new_hold() -> None:
    gate: StableGate[str] = StableGate()
    gate.hold(["p0"])
    asked = gate.ask()
    gate.forget(["p0"])
    assert not gate.holds("p0")
    gate.hold(["p0"])  # assigned again while the first question was out
    assert gate.answered(asked, {"p0": FetchedOffset(5)}) == {}
    assert gate.holds("p0")
    assert gate.answered(gate.ask(), {"p0": FetchedOffset(6)}) == {"p0": 6}
