"""Request/reply addressing over Kafka, shared by requesters and responders.

A request names where its answer goes: ``reply_topic``, ``reply_partition`` and
``correlation_id`` in its body, the first three also as the headers
:data:`HEADER_REPLY_TOPIC`, :data:`HEADER_REPLY_PARTITION` and
:data:`HEADER_CORRELATION_ID` (:func:`request_headers`). A responder (the selector)
reads the address back with :func:`reply_address` and answers with :func:`send_reply`,
keyed by correlation id and with the correlation id header, so a requester (the router's
:class:`~mulambda.routing.requester.Requester`, the SDK) can skip replies that are not
its own without decoding them (:func:`header_value`).

Both sides import this module and neither imports the other.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from typing import Any

from mulambda.errors import ConfigurationError
from mulambda.kafka.producer import Producer
from mulambda.kafka.records import RawRecord
from mulambda.wire.codec import ReplyAddress
from mulambda.wire.events import RequestModel, WireModel

HEADER_REPLY_TOPIC = "mulambda-reply-topic"
"""Header naming the full topic the reply goes to."""
HEADER_REPLY_PARTITION = "mulambda-reply-partition"
"""Header naming the reply partition (decimal ASCII)."""
HEADER_CORRELATION_ID = "mulambda-correlation-id"
"""Header with the correlation id, on requests and on replies."""


def partition_for(instance_id: str, partitions: int) -> int:
    """The reply partition of ``instance_id``: CRC-32 of its UTF-8 bytes modulo ``partitions``.

    Stable across processes and Python versions (unlike ``hash()``).
    """
    if partitions <= 0:
        raise ConfigurationError(f"partition count must be positive, got {partitions}")
    return zlib.crc32(instance_id.encode()) % partitions


def request_headers(address: ReplyAddress) -> list[tuple[str, bytes]]:
    """The Kafka headers a request carries besides its body's reply fields."""
    headers = [
        (HEADER_REPLY_TOPIC, address.topic.encode()),
        (HEADER_CORRELATION_ID, address.correlation_id.encode()),
    ]
    if address.partition is not None:
        headers.append((HEADER_REPLY_PARTITION, str(address.partition).encode()))
    return headers


def reply_address(request: RequestModel) -> ReplyAddress:
    """Where the answer to a decoded ``request`` goes."""
    return ReplyAddress(request.reply_topic, request.reply_partition, request.correlation_id)


def header_value(record: RawRecord, name: str) -> str | None:
    """The header ``name`` of ``record`` as text; None when absent or not UTF-8."""
    headers: Sequence[tuple[str, bytes]] = record.headers or ()
    for key, value in headers:
        if key == name:
            try:
                return bytes(value).decode()
            except UnicodeDecodeError:
                return None
    return None


async def send_reply(
    producer: Producer, address: ReplyAddress, reply: WireModel | bytes
) -> asyncio.Future[Any]:
    """Send ``reply`` (a message, or pre-encoded bytes) to the requester at ``address``.

    Keyed by correlation id (the reply topic's catalog key), to ``address.partition``
    when the request named one, with the correlation id header so requesters can skip
    replies that are not theirs without decoding. Returns the delivery future.
    """
    headers = [(HEADER_CORRELATION_ID, address.correlation_id.encode())]
    if isinstance(reply, bytes):
        return await producer.send_raw(
            address.topic,
            reply,
            key=address.correlation_id,
            partition=address.partition,
            headers=headers,
        )
    return await producer.send(
        address.topic,
        reply,
        key=address.correlation_id,
        partition=address.partition,
        headers=headers,
    )


__all__ = [
    "HEADER_CORRELATION_ID",
    "HEADER_REPLY_PARTITION",
    "HEADER_REPLY_TOPIC",
    "header_value",
    "partition_for",
    "reply_address",
    "request_headers",
    "send_reply",
]
