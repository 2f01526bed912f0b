"""The local backend's process groups, with stand-in commands instead of ``mulambda``.

Real processes and signals: each replica is one process group (executor + companion);
stop sends SIGTERM, then SIGKILL to a group that ignores it; a replica that ended on its
own is reaped and no longer listed; processes the backend did not start are not touched.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from mulambda.launching.local import LocalProcessBackend, render_replicas
from mulambda.wire.events import LaunchSpec
from tests.factories import registration
from tests.integration.launching.support import until

pytestmark = pytest.mark.integration

# Stands in for `python -m mulambda ...`: the companion ignores SIGTERM (so only SIGKILL
# ends it); an executor of replica 1 exits at once when told to by its model name.
STAND_IN = """
import signal, sys, time
args = sys.argv[1:]
if args[0] == "companion":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "--model" in args and args[args.index("--model") + 1].startswith("quits"):
    sys.exit(3)
print("started", args[0], flush=True)
time.sleep(120)
"""


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


async def test_groups_are_stopped_escalated_and_reaped(tmp_path: Path) -> None:
    backend = LocalProcessBackend(
        tmp_path, command=(sys.executable, "-c", STAND_IN), env={}, stop_grace_s=1.0
    )
    bystander = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(120)", process_group=0
    )
    try:
        async with backend:
            for desired in render_replicas(registration("w", launch=LaunchSpec(replicas=2))):
                await backend.apply(desired)
            groups = [backend.group_of("w-0"), backend.group_of("w-1")]
            assert None not in groups
            assert sorted(o.ref.name for o in await backend.observe()) == ["w-0", "w-1"]
            log = tmp_path / "w-0.log"
            await until(lambda: log.read_text().count("started") == 2, 20, "both processes")

            # One replica whose executor ends on its own is reaped, the other stays.
            (quitter,) = render_replicas(
                registration("q", model_name="quits", launch=LaunchSpec(replicas=1))
            )
            await backend.apply(quitter)
            quitter_group = backend.group_of("q-0")
            assert quitter_group is not None

            async def reaped() -> bool:
                return "q-0" not in {o.ref.name for o in await backend.observe()}

            await until(reaped, 20, "the ended replica to be reaped")
            assert not _alive(quitter_group)  # its companion was killed with it
            assert backend.group_of("w-0") == groups[0]

            started = time.monotonic()
        # Leaving `async with` stopped every group: SIGTERM, then SIGKILL after the grace
        # (the stand-in companions ignore SIGTERM: only the SIGKILL ends them).
        assert time.monotonic() - started < 10
        for group in groups:
            assert group is not None
            assert not _alive(group)
        assert await backend.observe() == []
        assert bystander.returncode is None  # not the backend's: untouched
    finally:
        bystander.kill()
        await bystander.wait()
