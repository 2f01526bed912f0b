"""The local backend's replicas and the commands they run, without starting any."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from mulambda.cli import cli
from mulambda.errors import LaunchError
from mulambda.launching.local import REPLICA_KIND, ReplicaPlan, render_replicas
from mulambda.wire.events import LaunchSpec
from tests.factories import registration

pytestmark = pytest.mark.unit


def _parse(args: list[str]) -> click.Context:
    """Parse ``args`` with the real CLI's commands (what a child process would run)."""
    assert isinstance(cli, click.Group)
    context = click.Context(cli)
    command: click.Command | None = cli
    while isinstance(command, click.Group):
        command = command.get_command(context, args[0])
        assert command is not None, args[0]
        args = args[1:]
    assert command is not None
    return command.make_context("mulambda", args)


def test_one_replica_per_ordinal_and_scaling_keeps_the_others() -> None:
    two = render_replicas(registration("wine", launch=LaunchSpec(replicas=2)))
    three = render_replicas(registration("wine", launch=LaunchSpec(replicas=3)))
    assert [d.ref.name for d in two] == ["wine-0", "wine-1"]
    assert {d.ref.kind for d in three} == {REPLICA_KIND}
    assert {d.launch_id for d in three} == {"wine"}
    # Scaling changes no running replica's digest: only wine-2 is new.
    assert {d.spec_hash for d in two} == {d.spec_hash for d in three}
    other = render_replicas(registration("wine", accuracy=0.5, launch=LaunchSpec(replicas=2)))
    assert {d.spec_hash for d in other} != {d.spec_hash for d in two}
    with pytest.raises(LaunchError):
        render_replicas(registration("wine"))


def test_the_replica_commands_are_valid_mulambda_commands(tmp_path: Path) -> None:
    launch = registration("wine", model_version=3, launch=LaunchSpec(replicas=2))
    plan = ReplicaPlan(launch, "wine-1")
    serve = _parse(plan.serve_args("127.0.0.1", 22123, tmp_path)).params
    assert serve["port"] == 22123
    assert serve["models"] == ("wine:3",)
    assert serve["model_dir"] == tmp_path
    companion = _parse(plan.companion_args("127.0.0.1", 22123, "box")).params
    assert companion["executor_id"] == "wine-1"
    assert companion["endpoint"] == "http://127.0.0.1:22123"
    assert companion["status_endpoint"] is None
    assert companion["node"] == "box"
    assert (companion["model_name"], companion["model_version"]) == ("wine", 3)
    assert companion["accuracy"] == launch.accuracy
    assert companion["heartbeat_interval"] == launch.heartbeat_interval_s
    assert companion["model_type"] == launch.traits.model_type
