"""One record's fate without a broker: decode, retry, dead-letter, answer invalid requests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from mulambda.errors import DecodeError, KafkaUnavailable, MulambdaError
from mulambda.kafka import (
    ConsumerStats,
    DeadLetterer,
    KafkaConfig,
    Producer,
    RawRecord,
    Record,
    RecordProcessor,
    answer_invalid_requests,
)
from mulambda.wire.codec import ReplyAddress, decode, encode
from mulambda.wire.events import (
    DeadLetter,
    ExecutorRegistration,
    InferenceResult,
    InferenceStatus,
    WireModel,
)
from tests.factories import registration

pytestmark = pytest.mark.unit

TOPIC = "t.executor-registrations"
LETTERS = "t.dead-letters"


class RecordingProducer(Producer):
    """A producer that keeps what it was asked to send instead of talking to a broker."""

    def __init__(self, *, fail: MulambdaError | None = None) -> None:
        super().__init__(KafkaConfig())
        self.sent: list[tuple[str, WireModel | None, dict[str, Any]]] = []
        self.fail = fail

    async def send_and_wait(
        self,
        topic: str,
        message: WireModel | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Any:
        if self.fail is not None:
            raise self.fail
        self.sent.append((topic, message, {"key": key, "partition": partition, "headers": headers}))
        return None

    def letters(self) -> list[DeadLetter]:
        return [m for t, m, _ in self.sent if t == LETTERS and isinstance(m, DeadLetter)]


def raw(value: bytes | None, *, topic: str = TOPIC, offset: int = 4, key: bytes = b"k") -> Any:
    return RawRecord(
        topic=topic,
        partition=1,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value or b""),
        headers=[("h", b"v")],
    )


def processor(
    producer: RecordingProducer,
    handler: Any,
    *,
    on_invalid: Any = None,
    stopping: asyncio.Event | None = None,
    max_retries: int = 2,
) -> RecordProcessor:
    return RecordProcessor(
        {TOPIC: ExecutorRegistration},
        handler,
        dead_letters=DeadLetterer(producer, LETTERS, "group-a"),
        on_invalid=on_invalid,
        max_record_bytes=4096,
        max_retries=max_retries,
        retry_backoff_s=0.0,
        stopping=stopping or asyncio.Event(),
        stats=ConsumerStats(),
    )


def test_record_of_keeps_the_coordinates_headers_and_bytes() -> None:
    body = encode(registration("ex-9"))
    record = Record.of(raw(body), decode(ExecutorRegistration, body))
    assert (record.topic, record.partition, record.offset) == (TOPIC, 1, 4)
    assert record.key_str == "k"
    assert record.headers == {"h": b"v"}
    assert record.timestamp_ms == 1_700_000_000_000
    assert record.raw == body
    assert record.value is not None
    assert record.value.executor_id == "ex-9"


async def test_a_valid_record_is_handled_and_its_delivery_handed_back() -> None:
    producer = RecordingProducer()
    seen: list[Record[Any]] = []
    delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler(record: Record[Any]) -> asyncio.Future[None]:
        seen.append(record)
        return delivery

    proc = processor(producer, handler)
    assert await proc.process(raw(encode(registration("ex-1")))) == (True, delivery)
    assert [r.value.executor_id for r in seen if r.value is not None] == ["ex-1"]
    assert proc.stats.handled == 1
    assert producer.sent == []


async def test_a_tombstone_reaches_the_handler_as_none() -> None:
    values: list[object] = []

    async def handler(record: Record[Any]) -> None:
        values.append(record.value)

    assert await processor(RecordingProducer(), handler).process(raw(None)) == (True, None)
    assert values == [None]


async def test_undecodable_record_is_dead_lettered_with_reason_and_bytes() -> None:
    producer = RecordingProducer()

    async def handler(record: Record[Any]) -> None:
        raise AssertionError("never called")

    proc = processor(producer, handler)
    assert await proc.process(raw(b"{not json")) == (True, None)
    [letter] = producer.letters()
    assert "not valid JSON" in letter.reason
    assert letter.original_value == b"{not json"
    assert (letter.topic, letter.partition, letter.offset) == (TOPIC, 1, 4)
    assert letter.consumer_group == "group-a"
    assert producer.sent[0][2]["key"] == b"k"
    assert proc.stats.dead_lettered == 1


async def test_a_topic_without_model_is_dead_lettered() -> None:
    producer = RecordingProducer()

    async def handler(record: Record[Any]) -> None:
        raise AssertionError("never called")

    await processor(producer, handler).process(raw(b"{}", topic="elsewhere"))
    assert "no model registered for topic elsewhere" in producer.letters()[0].reason


async def test_an_answered_invalid_record_is_not_dead_lettered() -> None:
    producer = RecordingProducer()
    asked: list[str] = []

    async def answered(record: Any, error: DecodeError) -> bool:
        asked.append(error.reason)
        return True

    async def handler(record: Record[Any]) -> None:
        raise AssertionError("never called")

    proc = processor(producer, handler, on_invalid=answered)
    assert await proc.process(raw(b"[]")) == (True, None)
    assert len(asked) == 1
    assert "not a JSON object" in asked[0]
    assert producer.sent == []
    assert proc.stats.handled == 1


async def test_an_invalid_hook_that_fails_or_declines_means_a_dead_letter() -> None:
    async def declines(record: Any, error: DecodeError) -> bool:
        return False

    async def crashes(record: Any, error: DecodeError) -> bool:
        raise RuntimeError("reply address unusable")

    async def handler(record: Record[Any]) -> None:
        raise AssertionError("never called")

    for hook in (declines, crashes):
        producer = RecordingProducer()
        assert await processor(producer, handler, on_invalid=hook).process(raw(b"x")) == (
            True,
            None,
        )
        assert len(producer.letters()) == 1


async def test_retriable_errors_are_retried_then_dead_lettered() -> None:
    producer = RecordingProducer()
    calls = 0

    async def flaky(record: Record[Any]) -> None:
        nonlocal calls
        calls += 1
        raise MulambdaError("busy", retriable=True)

    proc = processor(producer, flaky, max_retries=2)
    assert await proc.process(raw(encode(registration()))) == (True, None)
    assert calls == 3
    assert proc.stats.retries == 2
    assert producer.letters()[0].reason == "busy"


async def test_a_retry_that_succeeds_is_handled() -> None:
    calls = 0

    async def once_busy(record: Record[Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise MulambdaError("busy", retriable=True)

    producer = RecordingProducer()
    proc = processor(producer, once_busy)
    assert await proc.process(raw(encode(registration()))) == (True, None)
    assert (proc.stats.retries, proc.stats.handled, producer.sent) == (1, 1, [])


async def test_a_retriable_failure_while_stopping_is_left_for_the_next_owner() -> None:
    stopping = asyncio.Event()
    stopping.set()

    async def busy(record: Record[Any]) -> None:
        raise MulambdaError("busy", retriable=True)

    producer = RecordingProducer()
    proc = processor(producer, busy, stopping=stopping)
    assert await proc.process(raw(encode(registration()))) == (False, None)
    assert proc.stats.left == 1
    assert producer.sent == []


async def test_a_handler_crash_dead_letters_the_record() -> None:
    async def buggy(record: Record[Any]) -> None:
        raise KeyError("oops")

    producer = RecordingProducer()
    assert await processor(producer, buggy).process(raw(encode(registration()))) == (True, None)
    letter = producer.letters()[0]
    assert letter.error_type == "KeyError"
    assert "oops" in letter.reason


async def test_a_record_whose_dead_letter_fails_stays_uncommitted() -> None:
    async def refuses(record: Record[Any]) -> None:
        raise MulambdaError("refused for good")

    producer = RecordingProducer(fail=KafkaUnavailable("broker gone"))
    proc = processor(producer, refuses)
    assert await proc.process(raw(encode(registration()))) == (False, None)
    assert proc.stats.left == 1
    assert proc.stats.dead_lettered == 0


def _result(address: ReplyAddress, error: DecodeError) -> InferenceResult:
    return InferenceResult(
        correlation_id=address.correlation_id,
        status=InferenceStatus.ERROR,
        error=error.reason,
        attempts=0,
    )


def _request(**fields: object) -> bytes:
    return orjson.dumps({"reply_topic": "t.results", "correlation_id": "c-1", **fields})


async def test_invalid_request_is_answered_at_its_reply_address() -> None:
    producer = RecordingProducer()
    answered: list[None] = []
    answer = answer_invalid_requests(
        producer, _result, correlation_header="cid", on_answered=lambda: answered.append(None)
    )
    assert await answer(raw(_request(reply_partition=3)), DecodeError("traits: missing")) is True
    [(topic, message, meta)] = producer.sent
    assert topic == "t.results"
    assert isinstance(message, InferenceResult)
    assert (message.correlation_id, message.status, message.error) == (
        "c-1",
        InferenceStatus.ERROR,
        "traits: missing",
    )
    assert meta == {"key": "c-1", "partition": 3, "headers": [("cid", b"c-1")]}
    assert answered == [None]


async def test_invalid_request_without_header_name_is_sent_without_headers() -> None:
    producer = RecordingProducer()
    answer = answer_invalid_requests(producer, _result)
    assert await answer(raw(_request()), DecodeError("bad")) is True
    assert producer.sent[0][2] == {"key": "c-1", "partition": None, "headers": None}


async def test_unreadable_reply_address_is_left_for_the_dead_letter() -> None:
    producer = RecordingProducer()
    answer = answer_invalid_requests(producer, _result)
    for body in (b"\x00 not json", orjson.dumps({"client_id": "x"}), None):
        assert await answer(raw(body), DecodeError("bad")) is False
    assert producer.sent == []


async def test_vetoed_reply_address_is_left_for_the_dead_letter() -> None:
    producer = RecordingProducer()
    vetted: list[ReplyAddress] = []

    async def vet(address: ReplyAddress) -> str | None:
        vetted.append(address)
        return "reply topic 't.results' does not exist"

    answered: list[None] = []
    answer = answer_invalid_requests(
        producer, _result, vet_address=vet, on_answered=lambda: answered.append(None)
    )
    assert await answer(raw(_request(reply_partition=0)), DecodeError("bad")) is False
    assert vetted == [ReplyAddress("t.results", 0, "c-1")]
    assert producer.sent == []
    assert answered == []


async def test_failed_error_reply_is_left_for_the_dead_letter() -> None:
    producer = RecordingProducer(fail=KafkaUnavailable("delivery to t.results failed"))
    answered: list[None] = []
    answer = answer_invalid_requests(producer, _result, on_answered=lambda: answered.append(None))
    assert await answer(raw(_request()), DecodeError("bad")) is False
    assert answered == []
