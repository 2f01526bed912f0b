"""Results that Kafka can carry: :func:`fit_result` and the bound it is held to.

An executor may answer with more than fits in one Kafka record. Sent as is, the broker
refuses the record (MessageSizeTooLarge), the producer error looks like an unavailable
Kafka, and after the retries the request is dead-lettered: the client never hears. A
result over the bound is replaced by an error result that names the encoded size and
the limit, which the client does hear.

Pure: encoding only.
"""

from __future__ import annotations

from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES, encode
from mulambda.wire.events import InferenceResult, InferenceStatus

RECORD_FRAMING_BYTES = 4096
"""Room left in a record for its key (a correlation id, at most 64 bytes), headers and
the batch framing around it. The broker's default ``message.max.bytes`` (1 MiB + 12 B)
bounds key, headers and framing together with the value: with a 32-byte key and one
header, a 1 048 376-byte value was accepted and a 1 048 476-byte one refused."""

MAX_RESULT_BYTES = DEFAULT_MAX_RECORD_BYTES - RECORD_FRAMING_BYTES
"""Largest encoded result the router sends. Also below the bound readers decode up to
(:data:`~mulambda.wire.codec.DEFAULT_MAX_RECORD_BYTES`), so a result that is sent can be
read. The producer's own ``max_request_size`` is larger (that bound plus 64 KiB of
framing), so it is not the limit that bites."""


def fit_result(result: InferenceResult, max_bytes: int = MAX_RESULT_BYTES) -> InferenceResult:
    """``result`` when its encoding fits in ``max_bytes``, else an error result saying
    how large it was and what the limit is.

    The error result keeps what identifies the answer (correlation and request ids) and
    how it came about (executor, model, attempts, latency, selection); only the output
    is dropped.
    """
    size = len(encode(result))
    if size <= max_bytes:
        return result
    return result.model_copy(
        update={
            "status": InferenceStatus.ERROR,
            "output": None,
            "error_code": None,
            "error": (
                f"result of {size} bytes exceeds the {max_bytes}-byte limit of a Kafka "
                f"record{_from(result)}"
            ),
        }
    )


def _from(result: InferenceResult) -> str:
    return f" (output of {result.executor_id})" if result.executor_id else ""


__all__ = ["MAX_RESULT_BYTES", "RECORD_FRAMING_BYTES", "fit_result"]
