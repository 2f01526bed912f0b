"""The broker's request log, counted: which client sent which requests how often.

``deploy/local/infra.sh`` logs every request the broker completes when
``MULAMBDA_KAFKA_REQUEST_LOG`` names a file (``kafka/log4j-requests.properties``): one
line per request, ``<ISO 8601 time> Completed request:<JSON>``, the JSON's
``requestHeader`` naming the client id and the API (``PRODUCE``, ``FETCH``, ...).
:func:`count_requests` counts those lines per (client id, API) in a time window, so a
benchmark can say how many produce and fetch requests each worker's clients send per
second. Pure: lines in, counts out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime

_MARK = "Completed request:"
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"


def parse_line(line: str) -> tuple[datetime, str, str] | None:
    """(local time, client id, API name) of one request log line; None for any other."""
    at = line.find(_MARK)
    if at < 0:
        return None
    try:
        when = datetime.strptime(line[:at].strip(), _TIME_FORMAT)
        header = json.loads(line[at + len(_MARK) :])["requestHeader"]
        return when, str(header["clientId"]), str(header["requestApiKeyName"])
    except (ValueError, KeyError, TypeError):
        return None


def count_requests(
    lines: Iterable[str], start: datetime, end: datetime
) -> Counter[tuple[str, str]]:
    """Requests per (client id, API) logged in ``[start, end)`` (local, naive times)."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in lines:
        parsed = parse_line(line)
        if parsed is not None and start <= parsed[0] < end:
            counts[parsed[1], parsed[2]] += 1
    return counts


def per_second(
    counts: Mapping[tuple[str, str], int], seconds: float
) -> dict[str, dict[str, float]]:
    """``counts`` as rates per client id and API, JSON-ready."""
    rates: dict[str, dict[str, float]] = {}
    for (client, api), count in sorted(counts.items()):
        rates.setdefault(client, {})[api] = round(count / seconds, 1) if seconds > 0 else 0.0
    return rates


__all__ = ["count_requests", "parse_line", "per_second"]
