"""Reply addresses vetted before routing: the verdict, the allowed topics, the cached counts.

No Kafka: partition counts come from a fake fetch the tests control, and the refresh
clock is a number they move.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from mulambda.errors import ConfigurationError, KafkaUnavailable
from mulambda.routing.reply_targets import (
    AllowedReplyTopics,
    Deliver,
    Misaddressed,
    ReplyTargets,
    Undeliverable,
    judge_reply_address,
)
from mulambda.wire.catalog import Topic, load_catalog

pytestmark = pytest.mark.unit

CATALOG = load_catalog("dep.")
RESULTS = CATALOG.name(Topic.INFERENCE_RESULTS)
DEFAULT = AllowedReplyTopics.for_catalog(CATALOG)


# --- allowed topics --------------------------------------------------------------------


def test_by_default_results_and_prefixed_names_are_allowed() -> None:
    assert RESULTS == "dep.mulambda.inference-results"
    assert DEFAULT.allows(RESULTS)
    assert DEFAULT.allows("dep.app.my-results")
    assert not DEFAULT.allows("other.app.results")
    assert not DEFAULT.allows("mulambda.inference-results")  # another deployment's


@pytest.mark.parametrize("topic", [t for t in Topic if t is not Topic.INFERENCE_RESULTS])
def test_the_catalogs_other_topics_are_never_allowed(topic: Topic) -> None:
    name = CATALOG.name(topic)
    assert not DEFAULT.allows(name)
    assert not AllowedReplyTopics.for_catalog(CATALOG, [name, "*"]).allows(name)


def test_entries_are_names_or_prefixes_ending_in_a_star() -> None:
    allowed = AllowedReplyTopics.for_catalog(CATALOG, ["app.results", " team-b.* ", ""])
    assert allowed.allows("app.results")
    assert not allowed.allows("app.results.extra")  # a name is exact
    assert allowed.allows("team-b.anything")
    assert not allowed.allows(RESULTS)  # entries replace the default
    assert allowed.describe() == "app.results, team-b.*"


def test_an_empty_prefix_allows_any_topic_but_the_catalogs_others() -> None:
    plain = AllowedReplyTopics.for_catalog(load_catalog(""))
    assert plain.allows("mulambda.inference-results")
    assert plain.allows("anything")
    assert not plain.allows("mulambda.executor-registrations")


def test_a_star_inside_an_entry_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="names or prefixes"):
        AllowedReplyTopics.for_catalog(CATALOG, ["app.*.results"])


# --- the verdict ---------------------------------------------------------------------


COUNTS = {RESULTS: 6, "dep.app.results": 1}


@pytest.mark.parametrize("partition", [None, 0, 5])
def test_an_existing_allowed_topic_in_range_is_delivered_where_asked(
    partition: int | None,
) -> None:
    assert judge_reply_address(RESULTS, partition, COUNTS, DEFAULT) == Deliver(partition)


def test_a_partition_out_of_range_is_answered_by_key_naming_the_range() -> None:
    verdict = judge_reply_address(RESULTS, 6, COUNTS, DEFAULT)
    assert isinstance(verdict, Misaddressed)
    assert verdict.partition is None
    assert verdict.reason == (
        f"reply partition 6 is out of range: {RESULTS} has partitions 0..5; "
        "this result was sent by key instead"
    )


def test_a_missing_topic_is_undeliverable_and_unknown() -> None:
    verdict = judge_reply_address("dep.app.gone", None, COUNTS, DEFAULT)
    assert verdict == Undeliverable("reply topic 'dep.app.gone' does not exist", unknown=True)


def test_a_topic_not_allowed_is_undeliverable_even_when_it_exists() -> None:
    registrations = CATALOG.name(Topic.EXECUTOR_REGISTRATIONS)
    verdict = judge_reply_address(registrations, None, {registrations: 1}, DEFAULT)
    assert isinstance(verdict, Undeliverable)
    assert not verdict.unknown
    assert verdict.reason == (
        f"reply topic {registrations!r} is not allowed (allowed: {RESULTS}, dep.*)"
    )


# --- the cached lookup -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.at = 1000.0

    def __call__(self) -> float:
        return self.at


class Metadata:
    """A fake ``Admin.partition_counts``: counts the tests set, fetches it counts, and an
    optional gate a fetch waits on (a slow cluster) or an error it raises."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = dict(counts)
        self.fetches = 0
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def __call__(self) -> dict[str, int]:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return dict(self.counts)


def _targets(metadata: Metadata, clock: Clock, **options: float) -> ReplyTargets:
    return ReplyTargets(metadata, DEFAULT, clock=clock, **options)


async def test_start_fetches_and_hits_do_not_fetch_again() -> None:
    metadata, clock = Metadata(COUNTS), Clock()
    async with _targets(metadata, clock) as targets:
        assert metadata.fetches == 1
        for _ in range(3):
            assert await targets.verdict(RESULTS, 2) == Deliver(2)
        assert metadata.fetches == 1


async def test_start_fails_when_the_metadata_cannot_be_had() -> None:
    metadata = Metadata(COUNTS)
    metadata.error = KafkaUnavailable("cluster metadata unavailable")
    with pytest.raises(KafkaUnavailable):
        await _targets(metadata, Clock()).start()


async def test_a_miss_refreshes_and_finds_a_topic_created_since() -> None:
    metadata, clock = Metadata(COUNTS), Clock()
    async with _targets(metadata, clock, min_refresh_s=0.5) as targets:
        metadata.counts["dep.app.new"] = 2
        clock.at += 0.5
        assert await targets.verdict("dep.app.new", 1) == Deliver(1)
        assert metadata.fetches == 2


async def test_misses_refresh_at_most_every_min_refresh_s() -> None:
    metadata, clock = Metadata(COUNTS), Clock()
    async with _targets(metadata, clock, min_refresh_s=0.5) as targets:
        clock.at += 1
        for _ in range(5):
            verdict = await targets.verdict("dep.app.made-up", None)
            assert isinstance(verdict, Undeliverable)
            assert verdict.reason == "reply topic 'dep.app.made-up' does not exist"
        assert metadata.fetches == 2  # start, then one refresh for the five misses
        clock.at += 0.5
        await targets.verdict("dep.app.made-up", None)
        assert metadata.fetches == 3


async def test_a_topic_not_allowed_never_costs_a_fetch() -> None:
    metadata, clock = Metadata(COUNTS), Clock()
    async with _targets(metadata, clock) as targets:
        clock.at += 10
        verdict = await targets.verdict("elsewhere.topic", None)
        assert isinstance(verdict, Undeliverable)
        assert "not allowed" in verdict.reason
        assert metadata.fetches == 1


async def test_concurrent_misses_share_one_fetch() -> None:
    metadata, clock = Metadata(COUNTS), Clock()
    async with _targets(metadata, clock) as targets:
        clock.at += 1
        metadata.gate = asyncio.Event()
        metadata.counts["dep.app.new"] = 1
        waiting = [asyncio.create_task(targets.verdict("dep.app.new", 0)) for _ in range(10)]
        await asyncio.sleep(0)
        metadata.gate.set()
        assert await asyncio.gather(*waiting) == [Deliver(0)] * 10
        assert metadata.fetches == 2


async def test_a_slow_refresh_is_waited_on_only_for_the_bound() -> None:
    metadata, clock = Metadata(COUNTS), Clock()
    async with _targets(metadata, clock, timeout_s=0.05) as targets:
        clock.at += 1
        metadata.gate = asyncio.Event()  # the cluster stops answering metadata
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(KafkaUnavailable, match="unknown and cluster metadata is unavailable"):
            await targets.verdict("dep.app.new", None)
        assert loop.time() - began < 1.0
        # A known topic with a partition out of range is decided on the counts known.
        verdict = await targets.verdict(RESULTS, 9)
        assert isinstance(verdict, Misaddressed)
        # The fetch went on in the background; once it answers, its counts are used.
        metadata.counts["dep.app.new"] = 3
        metadata.gate.set()
        await asyncio.sleep(0.01)
        assert await targets.verdict("dep.app.new", 2) == Deliver(2)
        assert metadata.fetches == 2


async def test_a_failed_refresh_makes_an_unknown_topic_retriable() -> None:
    metadata, clock = Metadata(COUNTS), Clock()
    async with _targets(metadata, clock) as targets:
        clock.at += 1
        metadata.error = KafkaUnavailable("cluster metadata unavailable")
        with pytest.raises(KafkaUnavailable) as raised:
            await targets.verdict("dep.app.new", None)
        assert raised.value.retriable
        assert await targets.verdict(RESULTS, 1) == Deliver(1)  # known topics still pass
        metadata.error = None
        clock.at += 1
        verdict = await targets.verdict("dep.app.new", None)
        assert isinstance(verdict, Undeliverable)  # now known not to exist


async def test_counts_older_than_max_age_are_refreshed_behind_a_hit() -> None:
    metadata, clock = Metadata(COUNTS), Clock()
    async with _targets(metadata, clock, max_age_s=60) as targets:
        clock.at += 60
        metadata.gate = asyncio.Event()
        assert await targets.verdict(RESULTS, 0) == Deliver(0)  # answered without waiting
        await asyncio.sleep(0)  # the refresh task starts
        assert metadata.fetches == 2
        metadata.counts[RESULTS] = 12  # partitions were added meanwhile
        metadata.gate.set()
        await asyncio.sleep(0.01)
        assert await targets.verdict(RESULTS, 11) == Deliver(11)
        assert metadata.fetches == 2


async def test_stop_cancels_a_refresh_in_progress_and_is_idempotent() -> None:
    metadata, clock = Metadata(COUNTS), Clock()
    targets = _targets(metadata, clock, max_age_s=1)
    await targets.start()
    clock.at += 1
    metadata.gate = asyncio.Event()
    await targets.verdict(RESULTS, 0)  # starts a background refresh that never ends
    await asyncio.sleep(0)
    await targets.stop()
    await targets.stop()
    assert metadata.fetches == 2


def test_bounds_must_make_sense() -> None:
    with pytest.raises(ConfigurationError):
        ReplyTargets(Metadata({}), DEFAULT, timeout_s=0)
