"""Heartbeats: what an executor's status says, read from its endpoint.

:class:`StatusReader` turns the protocol client's version states into one
:class:`ExecutorStatus` (:func:`summarise_model_state`) and adds the load MuLambda's own
executors serve at :data:`STATS_PATH` (:func:`parse_stats`); real TF Serving has no such
path, so after a 404 it is asked again only now and then. The companion publishes what
it reads on a fixed schedule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from mulambda.errors import ExecutorError, MulambdaError
from mulambda.executors.companion_stats import CompanionStats
from mulambda.executors.oip import OIPClient
from mulambda.executors.tfserving import TFServingClient
from mulambda.protocols.tfserving import ModelVersionStatus, decode_json
from mulambda.wire.events import ExecutorRegistration, ExecutorStatus, ModelState

__all__ = [
    "DETAIL_MAX",
    "STATS_PATH",
    "ExecutorLoad",
    "StatusReader",
    "parse_stats",
    "summarise_model_state",
]

log = logging.getLogger(__name__)

STATS_PATH: Final = "/mulambda/stats"
"""Non-TF-Serving endpoint of MuLambda's executor giving ``in_flight`` and ``errors``."""

DETAIL_MAX: Final = 2000
"""Longest ``detail`` a status carries."""
_STATS_RECHECK_HEARTBEATS: Final = 12
"""After a 404 on the stats path, ask again only every this many heartbeats."""

# Most "alive" first: the state reported when no version is AVAILABLE.
_STATE_RANK: Final = (
    ModelState.LOADING,
    ModelState.START,
    ModelState.UNLOADING,
    ModelState.END,
    ModelState.UNKNOWN,
)


# --- pure helpers --------------------------------------------------------------------


def summarise_model_state(
    versions: Sequence[ModelVersionStatus],
) -> tuple[ModelState, str | None]:
    """One state for the executor from TF Serving's per-version states, with a detail.

    AVAILABLE if any version is; otherwise the most advanced state among the versions
    (LOADING before START before UNLOADING before END), with a detail naming each version
    and its error; UNKNOWN with a detail when TF Serving lists no version at all.
    """
    if any(v.state is ModelState.AVAILABLE for v in versions):
        return ModelState.AVAILABLE, None
    if not versions:
        return ModelState.UNKNOWN, "TF Serving lists no version of the model"
    state = min((v.state for v in versions), key=_STATE_RANK.index)
    parts = []
    for v in sorted(versions, key=lambda v: v.version, reverse=True):
        error = "" if v.error_code == "OK" else f" ({v.error_code}: {v.error_message})"
        parts.append(f"version {v.version}: {v.state.value}{error}")
    return state, "; ".join(parts)[:DETAIL_MAX]


@dataclass(frozen=True, slots=True)
class ExecutorLoad:
    """What ``/mulambda/stats`` says: requests in flight and errors since it started."""

    in_flight: int
    errors_total: int


def parse_stats(
    document: Any, model_name: str | None = None, model_version: int | None = None
) -> ExecutorLoad | None:
    """Read ``in_flight`` and ``errors`` (a running total) from a stats document.

    ``in_flight`` is the model's own when the document lists ``model_name`` under
    ``models`` (its version ``model_version``, or all its versions when None), else the
    server's: one server may serve several executors' models (``up.sh`` serves three),
    and each executor's load is its model's, not its neighbours'. Returns None for
    anything else, so a foreign server on that path is ignored.
    """
    if not isinstance(document, dict):
        return None
    in_flight = _count(document.get("in_flight"))
    errors = _count(document.get("errors"))
    if in_flight is None or errors is None:
        return None
    own = _model_in_flight(document.get("models"), model_name, model_version)
    return ExecutorLoad(in_flight=in_flight if own is None else own, errors_total=errors)


def _model_in_flight(models: Any, name: str | None, version: int | None) -> int | None:
    """The in-flight count ``models`` (of a stats document) gives one model, or None."""
    if name is None or not isinstance(models, dict):
        return None
    versions = models.get(name)
    if not isinstance(versions, list):
        return None
    total, found = 0, False
    for entry in versions:
        if not isinstance(entry, dict) or (version is not None and entry.get("version") != version):
            continue
        count = _count(entry.get("in_flight"))
        if count is None:
            return None
        total += count
        found = True
    return total if found else None


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


# --- reading ---------------------------------------------------------------------------


class StatusReader:
    """Reads the status of executor ``executor_id`` through ``client`` (its protocol's),
    counting failed reads in ``stats``; remembers the executor's error total between
    reads, so each status carries the errors since the previous one."""

    def __init__(
        self, executor_id: str, client: TFServingClient | OIPClient, stats: CompanionStats
    ) -> None:
        self.executor_id = executor_id
        self._tfs = client
        self.stats = stats
        self._last_errors_total: int | None = None
        self._stats_offered = True
        self._stats_recheck = 0

    async def read(
        self,
        reg: ExecutorRegistration,
        session: aiohttp.ClientSession | None,
        *,
        timeout_s: float,
        heartbeat_interval_s: float,
    ) -> ExecutorStatus:
        """Read the model status of ``reg`` (and the load, where offered) into a status;
        each read is bounded by ``timeout_s``, ``session`` (None: no load) reads the load.

        Never raises for a broken endpoint: that is what UNKNOWN and ``detail`` are for.
        """
        detail: str | None
        # Both reads at once: together they must stay within one status timeout.
        outcome, load = await asyncio.gather(
            self._read_versions(reg, timeout_s), self._read_load(reg, session, timeout_s)
        )
        errors = 0
        if isinstance(outcome, MulambdaError):
            self.stats.status_errors += 1
            state, detail = ModelState.UNKNOWN, f"status of {reg.model_name}: {outcome.reason}"
            log.debug("status read failed for %s: %s", self.executor_id, outcome.reason)
            # An HTTP error answer is already in the executor's own error total, when it
            # reports one; a read that got no answer is only ours to count.
            status = outcome.status if isinstance(outcome, ExecutorError) else None
            if load is None or status is None:
                errors += 1
        else:
            state, detail = summarise_model_state(outcome)
        in_flight = 0
        if load is not None:
            previous, self._last_errors_total = self._last_errors_total, load.errors_total
            if previous is not None:
                # A total below the previous one means the executor restarted.
                errors += load.errors_total - (previous if load.errors_total >= previous else 0)
            in_flight = load.in_flight
        return ExecutorStatus(
            executor_id=self.executor_id,
            model_state=state,
            in_flight=in_flight,
            errors=errors,
            detail=detail[:DETAIL_MAX] if detail else None,
            heartbeat_interval_s=heartbeat_interval_s,
        )

    async def _read_versions(
        self, reg: ExecutorRegistration, timeout_s: float
    ) -> list[ModelVersionStatus] | MulambdaError:
        try:
            return await self._tfs.status(reg.model_name, reg.model_version, timeout_s=timeout_s)
        except MulambdaError as exc:
            return exc

    async def _read_load(
        self, reg: ExecutorRegistration, session: aiohttp.ClientSession | None, timeout_s: float
    ) -> ExecutorLoad | None:
        """``/mulambda/stats`` of the executor (in flight: ``reg``'s model's), or None
        when it does not offer one."""
        if session is None:
            return None
        if not self._stats_offered:
            self._stats_recheck -= 1
            if self._stats_recheck > 0:
                return None
        url = self._tfs.base_url + STATS_PATH
        try:
            async with (
                asyncio.timeout(timeout_s),
                session.get(url, allow_redirects=False) as response,
            ):
                body = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.stats.stats_errors += 1
            log.debug("stats read failed for %s: %r", self.executor_id, exc)
            return None
        if status in (404, 405, 501):
            # Real TF Serving: no such path. Ask again now and then (an upgrade may add it).
            self._stats_offered = False
            self._stats_recheck = _STATS_RECHECK_HEARTBEATS
            return None
        try:
            document = decode_json(body) if status == 200 else None
            load = parse_stats(document, reg.model_name, reg.model_version)
        except ValueError:
            load = None
        if load is None:
            self.stats.stats_errors += 1
            return None
        self._stats_offered = True
        return load
