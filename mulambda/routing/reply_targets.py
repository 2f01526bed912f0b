"""Where a result may go: the reply address of an inference request, vetted before routing.

A request names its reply topic and, optionally, a partition. Sent there blindly, an
unknown topic blocks the producer for its metadata and delivery timeouts (about 40 s)
before failing, and a partition out of range fails an assertion inside aiokafka; either
way the client never hears. So the router vets the address first and decides:

====================================  ===================================================
the reply address                     what happens
====================================  ===================================================
topic not allowed                     :class:`UndeliverableAnswer`: the request is
                                      dead-lettered with the reason, at once
topic does not exist                  the same (nobody could read an answer there)
partition out of range                not routed; an error result naming the range goes
                                      to the topic with partition None (keyed by
                                      correlation id, so the client's key-based reader
                                      still finds it)
topic exists, partition in range      routed, the result goes where asked
metadata unavailable (topic unknown)  KafkaUnavailable (retriable): the consumer retries
                                      the request, then dead-letters it
====================================  ===================================================

Allowed topics (:class:`AllowedReplyTopics`) are exact names and prefixes (an entry
ending in ``*``); by default the catalog's inference-results topic and every name
starting with the deployment's topic prefix. The catalog's other topics are never
allowed whatever the entries say: they carry other message types (registrations,
heartbeats, selection traffic), and a result written there would poison their readers.

The decision (:func:`judge_reply_address`) is pure; :class:`ReplyTargets` holds the
partition counts it is made against: fetched at start, refreshed on a miss at most every
``min_refresh_s``, refreshed in the background when older than ``max_age_s``, and never
waited on longer than ``timeout_s`` (a slow fetch goes on in the background and the
requests behind it decide with what is known).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from mulambda.errors import ConfigurationError, KafkaUnavailable, MulambdaError
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.catalog import Catalog, Topic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AllowedReplyTopics:
    """Which topics results may be sent to: exact ``names`` and name ``prefixes``, never
    one of the ``reserved`` topics."""

    names: frozenset[str]
    prefixes: tuple[str, ...]
    reserved: frozenset[str]

    @classmethod
    def for_catalog(cls, catalog: Catalog, entries: Iterable[str] = ()) -> AllowedReplyTopics:
        """The rule for a deployment: ``entries`` (names, or prefixes ending in ``*``);
        none given means the inference-results topic and names starting with the
        catalog's prefix. The catalog's other topics are reserved."""
        results = catalog.name(Topic.INFERENCE_RESULTS)
        given = [e.strip() for e in entries if e.strip()]
        if not given:
            given = [results, f"{catalog.prefix}*"]
        names = frozenset(e for e in given if not e.endswith("*"))
        prefixes = tuple(e[:-1] for e in given if e.endswith("*"))
        if any("*" in e for e in (*names, *prefixes)):
            raise ConfigurationError(
                f"reply topic entries are names or prefixes ending in '*': {given}"
            )
        reserved = frozenset(catalog.name(t) for t in Topic if t is not Topic.INFERENCE_RESULTS)
        return cls(names, prefixes, reserved)

    def allows(self, topic: str) -> bool:
        """Whether a result may be sent to ``topic``."""
        if topic in self.reserved:
            return False
        return topic in self.names or any(topic.startswith(p) for p in self.prefixes)

    def describe(self) -> str:
        """The rule in words, for error reasons."""
        parts = sorted(self.names) + [f"{p}*" for p in self.prefixes]
        return ", ".join(parts) or "none"


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send the result to ``partition`` (None: by key) of the reply topic."""

    partition: int | None


@dataclass(frozen=True, slots=True)
class Misaddressed:
    """Do not route: send an error result saying ``reason`` to the topic, by key."""

    reason: str

    @property
    def partition(self) -> None:
        """Where the error result goes: no partition, the key decides."""
        return None


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """Nobody can be answered: dead-letter with ``reason``. ``unknown`` says the topic
    was not in the partition counts (fresher counts might know it)."""

    reason: str
    unknown: bool = False


ReplyVerdict = Deliver | Misaddressed | Undeliverable
"""What to do with a request given its reply address."""


def judge_reply_address(
    topic: str,
    partition: int | None,
    partition_counts: Mapping[str, int],
    allowed: AllowedReplyTopics,
) -> ReplyVerdict:
    """The verdict on a reply address, given every topic's partition count."""
    if not allowed.allows(topic):
        return Undeliverable(
            f"reply topic {topic!r} is not allowed (allowed: {allowed.describe()})"
        )
    count = partition_counts.get(topic)
    if count is None:
        return Undeliverable(f"reply topic {topic!r} does not exist", unknown=True)
    if partition is not None and partition >= count:
        return Misaddressed(
            f"reply partition {partition} is out of range: {topic} has partitions "
            f"0..{count - 1}; this result was sent by key instead"
        )
    return Deliver(partition)


class ReplyTargets(Lifecycle):
    """Reply addresses vetted against cached partition counts (module docstring).

    ``fetch`` returns every topic's partition count (``Admin.partition_counts``);
    ``clock`` is the monotonic clock refreshes are timed on.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, int]]],
        allowed: AllowedReplyTopics,
        *,
        timeout_s: float = 1.0,
        min_refresh_s: float = 0.5,
        max_age_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0 or min_refresh_s < 0 or max_age_s <= 0:
            raise ConfigurationError(
                "reply target timeout and max age must be positive, min refresh >= 0"
            )
        self.allowed = allowed
        """Which topics results may go to."""
        self._fetch = fetch
        self._timeout_s = timeout_s
        self._min_refresh_s = min_refresh_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._fetched_at = -float("inf")  # last successful fetch
        self._tried_at = -float("inf")  # last fetch started
        self._last_failed = False
        self._refreshing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Fetch the partition counts once; KafkaUnavailable when that fails."""
        await self._refresh_task()

    async def stop(self) -> None:
        """Cancel a refresh in progress; idempotent."""
        task, self._refreshing = self._refreshing, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def verdict(self, topic: str, partition: int | None) -> ReplyVerdict:
        """The verdict on a reply address (see :func:`judge_reply_address`), with fresh
        counts fetched first on a miss, waiting at most ``timeout_s`` for them.

        Raises KafkaUnavailable when the topic is unknown and fresh counts could not
        be had: whether it exists cannot be told then.
        """
        verdict = judge_reply_address(topic, partition, self._counts, self.allowed)
        now = self._clock()
        if isinstance(verdict, Deliver):
            if now - self._fetched_at >= self._max_age_s and self._refreshing is None:
                self._start_refresh()  # a topic deleted or widened since: learn it soon
            return verdict
        if not self.allowed.allows(topic):
            return verdict
        if now - self._tried_at >= self._min_refresh_s or self._refreshing is not None:
            await self._refresh_within_bound()
            verdict = judge_reply_address(topic, partition, self._counts, self.allowed)
        if isinstance(verdict, Undeliverable) and verdict.unknown and self._last_failed:
            raise KafkaUnavailable(
                f"reply topic {topic!r} is unknown and cluster metadata is unavailable"
            )
        return verdict

    async def _refresh_within_bound(self) -> None:
        task = self._refreshing or self._start_refresh()
        with contextlib.suppress(TimeoutError, MulambdaError):
            async with asyncio.timeout(self._timeout_s):
                # Shielded: a caller giving up must not cancel the fetch others await.
                await asyncio.shield(task)
        if not task.done():
            self._last_failed = True  # not known in time, which is as good as not known

    async def _refresh_task(self) -> None:
        task = self._refreshing or self._start_refresh()
        await asyncio.shield(task)

    def _start_refresh(self) -> asyncio.Task[None]:
        self._tried_at = self._clock()
        task = asyncio.create_task(self._refresh(), name="mulambda-reply-targets")
        self._refreshing = task
        task.add_done_callback(self._refreshed)
        return task

    async def _refresh(self) -> None:
        try:
            counts = dict(await self._fetch())
        except MulambdaError as exc:
            self._last_failed = True
            log.warning("partition counts not refreshed: %s", exc.reason)
            raise
        self._counts = counts
        self._fetched_at = self._clock()
        self._last_failed = False

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        if self._refreshing is task:
            self._refreshing = None
        if not task.cancelled():
            task.exception()  # seen: the waiters, if any, had their own look


__all__ = [
    "AllowedReplyTopics",
    "Deliver",
    "Misaddressed",
    "ReplyTargets",
    "ReplyVerdict",
    "Undeliverable",
    "judge_reply_address",
]
