"""Plans: create what is missing, update what differs, delete what is ours and unwanted."""

from __future__ import annotations

import pytest

from mulambda.launching.plan import (
    Action,
    DesiredObject,
    ObjectRef,
    ObservedObject,
    Verb,
    describe,
    outcome,
    plan,
)
from mulambda.wire.events import LaunchAction

pytestmark = pytest.mark.unit

STS = ObjectRef("StatefulSet", "mulambda-executor-wine")
SVC = ObjectRef("Service", "mulambda-executor-wine")


def want(ref: ObjectRef, launch: str = "wine", digest: str = "h1") -> DesiredObject:
    return DesiredObject(ref, launch, digest, body={"name": ref.name})


def have(
    ref: ObjectRef, launch: str | None = "wine", digest: str | None = "h1", managed: bool = True
) -> ObservedObject:
    return ObservedObject(ref, launch, digest, managed)


def verbs(result: list[Action] | tuple[Action, ...]) -> list[tuple[str, str]]:
    return [(a.verb.value, str(a.ref)) for a in result]


def test_missing_objects_are_created_and_equal_ones_left_alone() -> None:
    first = plan([want(STS), want(SVC)], [])
    assert verbs(first.actions) == [
        ("create", "Service/mulambda-executor-wine"),
        ("create", "StatefulSet/mulambda-executor-wine"),
    ]
    assert first.actions[0].desired == want(SVC)
    assert outcome(first.of("wine"), withdrawn=False, existed=False) is LaunchAction.CREATED
    # A new object of a launch that was running already is an update.
    assert outcome(first.of("wine"), withdrawn=False, existed=True) is LaunchAction.UPDATED
    again = plan([want(STS), want(SVC)], [have(STS), have(SVC)])
    assert again.actions == ()
    assert outcome(again.of("wine"), withdrawn=False, existed=True) is LaunchAction.UNCHANGED
    assert describe(again.actions) == "nothing to do"


def test_a_changed_spec_is_an_update_and_an_unwanted_object_a_delete() -> None:
    deployment = ObjectRef("Deployment", "mulambda-executor-wine")
    result = plan([want(STS, digest="h2"), want(SVC)], [have(deployment), have(SVC)])
    # The replacement comes up before the old workload goes.
    assert verbs(result.actions) == [
        ("create", "StatefulSet/mulambda-executor-wine"),
        ("delete", "Deployment/mulambda-executor-wine"),
    ]
    assert outcome(result.actions, withdrawn=False, existed=True) is LaunchAction.UPDATED
    updated = plan([want(STS, digest="h2")], [have(STS, digest="h1")])
    assert verbs(updated.actions) == [("update", "StatefulSet/mulambda-executor-wine")]
    assert describe(updated.actions) == "update StatefulSet/mulambda-executor-wine"


def test_a_withdrawn_launch_deletes_only_what_the_launcher_owns() -> None:
    foreign = have(ObjectRef("Service", "someone-elses"), launch=None, digest=None, managed=False)
    result = plan([], [have(STS), have(SVC), foreign])
    assert sorted(verbs(result.actions)) == [
        ("delete", "Service/mulambda-executor-wine"),
        ("delete", "StatefulSet/mulambda-executor-wine"),
    ]
    assert outcome(result.actions, withdrawn=True, existed=True) is LaunchAction.DELETED


def test_an_object_of_the_same_name_the_launcher_does_not_own_is_a_conflict() -> None:
    foreign = have(SVC, launch=None, digest=None, managed=False)
    result = plan([want(STS), want(SVC)], [foreign])
    assert verbs(result.actions) == [("create", "StatefulSet/mulambda-executor-wine")]
    assert result.conflicts == (want(SVC),)
    # Another launch's object of that name is not taken over either, nor deleted.
    other = have(SVC, launch="other")
    taken = plan([want(SVC)], [other])
    assert taken.actions == ()
    assert taken.conflicts == (want(SVC),)


def test_a_scoped_plan_never_touches_other_launches() -> None:
    other = ObjectRef("StatefulSet", "mulambda-executor-beer")
    result = plan([want(STS)], [have(other, launch="beer")], scope=["wine"])
    assert verbs(result.actions) == [("create", "StatefulSet/mulambda-executor-wine")]
    gone = plan([], [have(other, launch="beer"), have(STS)], scope=["beer"])
    assert [(a.verb, a.launch_id) for a in gone.actions] == [(Verb.DELETE, "beer")]
