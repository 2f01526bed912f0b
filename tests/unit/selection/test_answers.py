"""Answers: the reply to a request, the load it adds, and vetting where it goes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

import pytest

from mulambda.errors import ConfigurationError
from mulambda.selection.answers import Answerer, Outstanding, ReplyTargets, reply_problem
from mulambda.selection.view import ExecutorView
from mulambda.wire.codec import ReplyAddress
from mulambda.wire.events import (
    LeaseAsk,
    ModelState,
    SelectionRequest,
    SelectionStatus,
    SoftWeights,
    Traits,
)
from tests.unit.selection.records import TEXT, WINE, probe, reg, status

pytestmark = pytest.mark.unit

NOW = 1_000_000.0
"""Epoch seconds the tests answer at."""


def ask(
    *, deadline_s: float = 30.0, policy: str | None = None, traits: Traits = WINE
) -> SelectionRequest:
    return SelectionRequest.model_validate(
        {
            "reply_topic": "replies",
            "deadline": datetime.fromtimestamp(NOW + deadline_s, UTC),
            "client_id": "me",
            "traits": traits,
            "weights": SoftWeights(latency=0.5, accuracy=0.5),
            "policy": policy,
        }
    )


def steps(*values: float) -> Iterator[float]:
    yield from values


def view_with(*executor_ids: str, probe_ms: float = 20.0) -> ExecutorView:
    view = ExecutorView()
    for executor_id in executor_ids:
        view.apply_registration(reg(executor_id), NOW)
        view.apply_latency(probe(executor_id, "me", probe_ms), NOW)
    return view


# --- replies ---------------------------------------------------------------------------


def test_ok_reply_counts_its_top_candidate_as_outstanding() -> None:
    view = view_with("a", "b")
    clock = steps(5.0, 5.25)
    answerer = Answerer(selector_id="sel-1", timer=lambda: next(clock))

    answer = answerer.answer(view, ask(), NOW)

    assert answer.reply.status is SelectionStatus.OK
    assert answer.reply.selector_id == "sel-1"
    assert answer.reply.policy == "adaptive"
    assert [c.executor_id for c in answer.reply.candidates] == ["a", "b"]
    assert answer.compute_s == 0.25
    assert answer.candidates == 2
    top = view.get("a")
    assert top is not None
    assert top.outstanding_by_source == {"sel-1": 1}
    assert top.load == 1
    other = view.get("b")
    assert other is not None
    assert other.outstanding == 0


def test_outstanding_lasts_twice_the_estimate_bounded_by_the_deadline() -> None:
    view = view_with("a", probe_ms=100.0)  # estimate 100 ms: outstanding for 0.2 s
    # weighted: its estimate is the probe alone (adaptive adds a service time).
    answerer = Answerer(selector_id="s", default_policy="weighted")
    answerer.answer(view, ask(deadline_s=0.05), NOW)  # the deadline comes first
    answerer.answer(view, ask(), NOW)
    entry = view.get("a")
    assert entry is not None
    assert entry.outstanding == 2

    answerer.sweep(view, NOW + 0.06)
    assert entry.outstanding == 1
    answerer.sweep(view, NOW + 0.19)
    assert entry.outstanding == 1
    answerer.sweep(view, NOW + 0.21)
    assert entry.outstanding == 0
    assert entry.outstanding_by_source == {}


def test_expired_request_gets_an_error_without_running_a_policy() -> None:
    view = view_with("a")
    answerer = Answerer(selector_id="s", timer=lambda: pytest.fail("no policy may run"))
    answer = answerer.answer(view, ask(deadline_s=0.0), NOW)  # the deadline is now
    assert answer.reply.status is SelectionStatus.ERROR
    assert "deadline passed" in (answer.reply.error or "")
    assert answer.reply.selector_id == "s"
    assert (answer.compute_s, answer.candidates) == (None, None)
    entry = view.get("a")
    assert entry is not None
    assert entry.outstanding == 0


def test_no_candidate_adds_no_load() -> None:
    view = view_with("a")
    view.apply_status(status("a", ModelState.LOADING), NOW)
    answerer = Answerer(selector_id="s")
    answer = answerer.answer(view, ask(), NOW)
    assert answer.reply.status is SelectionStatus.NO_CANDIDATE
    assert answer.reply.eliminated_by == "model_state"
    assert answer.candidates is None
    assert answer.compute_s is not None
    other = answerer.answer(view, ask(traits=TEXT), NOW)
    assert other.reply.eliminated_by == "traits"
    entry = view.get("a")
    assert entry is not None
    assert entry.outstanding == 0


def test_the_request_policy_wins_over_the_default_and_unknown_ones_are_errors() -> None:
    view = view_with("a")
    answerer = Answerer(selector_id="s", default_policy="round-robin")
    assert answerer.answer(view, ask(), NOW).reply.policy == "round-robin"
    assert answerer.answer(view, ask(policy="adaptive"), NOW).reply.policy == "adaptive"
    unknown = answerer.answer(view, ask(policy="psychic"), NOW)
    assert unknown.reply.status is SelectionStatus.ERROR
    assert "unknown policy" in (unknown.reply.error or "")
    entry = view.get("a")
    assert entry is not None
    assert entry.outstanding == 2  # the two answered selections, not the error


def test_an_unknown_default_policy_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="psychic"):
        Answerer(selector_id="s", default_policy="psychic")


def test_outstanding_expiry_per_executor() -> None:
    outstanding = Outstanding()
    assert outstanding.add("a", 10.0) == 1
    assert outstanding.add("a", 12.0) == 2
    assert outstanding.add("b", 11.0) == 1
    assert outstanding.sweep(9.0) == {}
    assert outstanding.sweep(11.0) == {"a": 1, "b": 0}
    assert outstanding.sweep(11.5) == {}
    assert outstanding.sweep(12.0) == {"a": 0}
    assert outstanding.add("a", 20.0) == 1  # counting starts again


# --- reply addresses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "partition", "problem"),
    [
        ("replies", None, None),
        ("replies", 2, None),
        ("replies", 3, "reply partition 3 does not exist (replies has 3 partitions)"),
        ("gone", None, "reply topic 'gone' does not exist"),
        ("gone", 0, "reply topic 'gone' does not exist"),
    ],
)
def test_reply_problem(topic: str, partition: int | None, problem: str | None) -> None:
    assert reply_problem(ReplyAddress(topic, partition, "c1"), {"replies": 3}) == problem


class FakeCluster:
    """Partition counts that change on demand, and how often they were fetched."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = dict(counts)
        self.fetches = 0
        self.time = 0.0

    async def fetch(self) -> Mapping[str, int]:
        self.fetches += 1
        await asyncio.sleep(0)  # concurrent callers overlap here
        return dict(self.counts)


async def test_reply_targets_refresh_on_a_miss_at_most_every_min_refresh() -> None:
    cluster = FakeCluster({"replies": 1})
    targets = ReplyTargets(cluster.fetch, min_refresh_s=0.5, clock=lambda: cluster.time)
    await targets.refresh()
    assert cluster.fetches == 1
    hit = ReplyAddress("replies", 0, "c")
    new = ReplyAddress("new", None, "c")

    assert await targets.problem(hit) is None
    cluster.time = 10.0
    assert await targets.problem(hit) is None  # a hit never refetches
    assert cluster.fetches == 1

    cluster.counts["new"] = 2  # created since the last fetch
    assert await targets.problem(new) is None  # stale: the miss refetched
    assert cluster.fetches == 2
    cluster.time = 10.2
    assert await targets.problem(ReplyAddress("made-up", None, "c")) is not None
    assert cluster.fetches == 2  # a miss within min_refresh_s does not
    cluster.time = 10.5
    assert await targets.problem(ReplyAddress("made-up", None, "c")) is not None
    assert cluster.fetches == 3


async def test_concurrent_refreshes_share_one_fetch() -> None:
    cluster = FakeCluster({"replies": 1})
    targets = ReplyTargets(cluster.fetch, clock=lambda: cluster.time)
    await asyncio.gather(*(targets.refresh() for _ in range(5)))
    assert cluster.fetches == 1


# --- leases ----------------------------------------------------------------------------


def leased(slots: int, spacing_ms: float, **fields: object) -> SelectionRequest:
    return ask(**fields).model_copy(  # type: ignore[arg-type]
        update={"lease": LeaseAsk(slots=slots, spacing_ms=spacing_ms)}
    )


def test_a_lease_ranks_each_slot_as_the_requests_asking_one_by_one_would_be() -> None:
    # Each slot counts its top candidate as load, so the adaptive policy spreads a lease
    # over the executors as it would spread the same requests asking one at a time.
    views = []
    for _ in range(2):
        view = ExecutorView(default_load_slope_ms=30.0)  # each request in flight: +30 ms
        for executor_id, probe_ms in (("a", 5.0), ("b", 20.0), ("c", 40.0)):
            view.apply_registration(reg(executor_id), NOW)
            view.apply_latency(probe(executor_id, "me", probe_ms), NOW)
        views.append(view)
    one_by_one, at_once = views
    alone = Answerer(selector_id="s")
    singles = [alone.answer(one_by_one, ask(), NOW).reply for _ in range(6)]

    answer = Answerer(selector_id="s").answer(at_once, leased(6, 0.0), NOW)
    reply = answer.reply
    assert reply.status is SelectionStatus.OK
    assert reply.lease is not None
    assert len(reply.lease) == 6
    ranked = [[reply.candidates[i].executor_id for i in slot] for slot in reply.lease]
    assert ranked == [[c.executor_id for c in single.candidates] for single in singles]
    assert [c.executor_id for c in reply.candidates[: len(reply.lease[0])]] == ranked[0]
    assert reply.lease[0] == list(range(len(reply.lease[0])))  # the asking request's own
    assert len({slot[0] for slot in ranked}) > 1  # load moved some slots elsewhere
    for executor_id in ("a", "b", "c"):
        entries = at_once.get(executor_id), one_by_one.get(executor_id)
        assert entries[0] is not None
        assert entries[1] is not None
        assert entries[0].outstanding == entries[1].outstanding
    assert answer.compute_s is not None


def test_lease_slots_are_ranked_as_of_their_spacing() -> None:
    # weighted: a 100 ms estimate, outstanding for 0.2 s; slots 0.25 s apart see the
    # earlier slots' load expired.
    view = view_with("a", probe_ms=100.0)
    answerer = Answerer(selector_id="s", default_policy="weighted")
    reply = answerer.answer(view, leased(3, 250.0), NOW).reply
    assert reply.lease == [[0], [0], [0]]
    entry = view.get("a")
    assert entry is not None
    assert entry.outstanding == 1  # the last slot's, counted until NOW + 0.5 + 0.2
    answerer.sweep(view, NOW + 0.69)
    assert entry.outstanding == 1
    answerer.sweep(view, NOW + 0.71)
    assert entry.outstanding == 0


def test_no_lease_without_candidates_or_when_one_slot_is_asked() -> None:
    view = view_with("a")
    answerer = Answerer(selector_id="s")
    assert answerer.answer(view, leased(1, 10.0), NOW).reply.lease is None
    none = answerer.answer(view, leased(5, 10.0, traits=TEXT), NOW).reply
    assert none.status is SelectionStatus.NO_CANDIDATE
    assert none.lease is None


def test_leased_slots_are_outstanding_not_pending_and_released_ones_stop_counting() -> None:
    view = view_with("a", probe_ms=100.0)
    answerer = Answerer(selector_id="s", default_policy="weighted")
    answerer.answer(view, leased(4, 0.0), NOW)
    entry = view.get("a")
    assert entry is not None
    assert entry.outstanding == 4
    # Only the asking request was dispatched; the other slots' requests have not come.
    assert len(entry.pending or ()) == 1
    answerer.release(view, "a", 2)
    assert entry.outstanding == 2
    answerer.release(view, "a", 5)  # more than are left
    assert entry.outstanding == 0
    answerer.release(view, "zz", 1)  # an executor it never counted
    assert entry.outstanding == 0
