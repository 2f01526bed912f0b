"""The selector's in-memory materialised view of executors, clients and latencies.

Pure logic: the selector worker consumes the registration, status and latency topics and
feeds every record to an :class:`ExecutorView`; policies (``mulambda.selection.policies``) rank the
view's candidates. Nothing here does I/O or reads a clock.

Time
    Every method that needs the time takes ``now``: seconds on one clock the caller
    chooses and keeps using for the view's whole life, either ``time.monotonic()`` or
    epoch seconds (``time.time()``). Use the *arrival* time of a record, not its
    ``timestamp`` field, so clock skew between hosts cannot make executors look stale.

Liveness
    An executor is live while ``now - last_seen <= missed_heartbeats * heartbeat_interval_s``
    where ``last_seen`` is the ``now`` of its latest registration or status and the interval
    is the one its latest status (or, before any status, its registration) announced.
    Liveness is computed lazily at selection time, so an expired executor needs no timer
    and counts again as soon as its heartbeats resume.

Model state
    An executor whose latest status says anything but ``AVAILABLE`` is not a candidate.
    A freshly registered executor with no status yet counts as available: companions
    register only after TF Serving answered, and excluding it would delay every new
    executor by a heartbeat interval.

Latency
    ``probe`` measurements (companion to client round trips) are kept per (executor,
    client), latest value wins. When a client's latency to an executor is unknown the
    fallback chain is: the executor's median probe latency over its known clients, else the
    median of every probe latency in the view, else ``default_latency_ms``. Medians of an
    even count average the two middle values.

Load
    ``L = max(status in_flight, routers' outstanding, pending)``: requests in the system
    as the view knows them. Heartbeats are seconds old and a selector's outstanding
    counts expire on a guess (twice the estimate), so the view also counts *pending*
    dispatches: every rise by one of a source's outstanding count (one selection, one
    router dispatch) is remembered with its time (the latest ``now`` the view was given,
    i.e. the selection's) and the load it was dispatched at, until the observed latency
    of that executor comes back (oldest first: requests to one executor finish roughly
    in order) or ``pending_timeout_s`` passes (a request that failed sends no
    observation). Without that, a fast executor's short expiry made it look idle while a
    herd of requests was still queued on it. Pending counts only this selector's own
    dispatches; observations of other selectors' requests pop them early, so with several
    selectors this degrades towards the outstanding counts, never below them.

Service time
    ``observed`` measurements (a router's end-to-end inference time) are kept as an EWMA
    per (executor, client) and also teach each executor a linear model of its service
    time under load. The adaptive policy estimates::

        net + base + delay_per_element * size + slope * L

    ``base`` is the service time at no load that the registered per-element delay does
    not explain (so the size term is not counted twice) and ``slope`` the milliseconds
    each further request in the system adds. The load penalty is additive and learned,
    not assumed: an executor serving requests side by side (spare cores; the prototype's
    synthetic models, whose delay is ``D + size * alpha + in_flight * beta``) pays a
    little per request in flight, a serial one a whole service time. The M/M/1 estimate
    ``S * (1 + L)`` used before assumed the latter and multiplied the size term by the
    load, overestimating the former ~10x for large inputs.

    Each observation is one sample ``y = observed - net - delay_per_element * size`` at
    ``x`` = the load its dispatch was made at (the current load when no pending dispatch
    is left), ``net`` the client's probe latency (or the fallback above): the same ``L``
    the policy multiplies when it decides, so a biased load proxy is learned around.
    ``(base, slope)`` is an exponentially weighted least-squares fit of
    ``y = base + slope * x`` (forgetting factor ``1 - ewma_alpha``; sufficient statistics
    in :class:`ServiceFit`, O(1) per sample) with a ridge prior: over the centred weighted
    sums, ``slope = (Sxy + k * prior) / (Sxx + k)`` and ``base = mean(y) - slope *
    mean(x)``, ``k`` = ``slope_prior_weight``. The prior is serial queueing on the base,
    ``mean(y) / (1 + mean(x))``: each request in the system costs what one costs beyond
    its size term (the old M/M/1 inversion without the size term). So an executor always
    seen at the same load keeps a cautious slope while its line still passes through
    the mean sample at the mean load, where it is used, and spread in load soon outweighs
    the prior. Load never speeds an executor up: the slope is clamped at 0, and a
    negative base is replaced by the line through the origin and the mean sample.

    Executors without observations get the lowest learned base (optimistic: a base
    learned without spread in load holds load, and one request corrects an optimistic
    guess, while a pessimistic one may never be tested) and the median learned slope;
    before any observation, ``default_service_ms`` and ``default_load_slope_ms`` (0: no
    load penalty until one is measured, the prototype's assumption).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, overload

from pydantic import ValidationError

from mulambda.errors import ConfigurationError, DecodeError
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    Traits,
)

TraitsKey = tuple[str, str, str]
"""``Traits.key()``: (model_type, input_format, output_format)."""

SNAPSHOT_VERSION = 1


class ServiceFit(NamedTuple):
    """Sufficient statistics of an executor's service-time fit (see the module doc).

    Exponentially weighted: every sample multiplies the old sums by ``1 - ewma_alpha``
    and adds itself with weight 1. This is what must be persisted for a restart to keep
    the learned slope; :meth:`ExecutorView.restore_learned` takes it back.
    """

    weight: float
    """Sum of the sample weights (at most ``1 / ewma_alpha``)."""
    load_mean: float
    """Weighted mean load ``x`` of the samples."""
    service_mean: float
    """Weighted mean sample ``y`` (ms)."""
    load_m2: float
    """Weighted sum of ``(x - load_mean) ** 2`` (``Sxx``)."""
    cross_m2: float
    """Weighted sum of ``(x - load_mean) * (y - service_mean)`` (``Sxy``)."""


class _SortedFloats:
    """A sorted multiset of floats with an O(log n) median (memmove-cheap updates)."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, value: float) -> None:
        insort(self.values, value)

    def discard(self, value: float) -> None:
        values = self.values
        i = bisect_left(values, value)
        if i < len(values) and values[i] == value:
            del values[i]

    def replace(self, old: float | None, new: float) -> None:
        if old is not None:
            self.discard(old)
        self.add(new)

    def median(self) -> float | None:
        values = self.values
        n = len(values)
        if n == 0:
            return None
        mid = n // 2
        if n % 2:
            return values[mid]
        return (values[mid - 1] + values[mid]) / 2.0

    def __len__(self) -> int:
        return len(self.values)


class ExecutorEntry:
    """Everything the view knows about one executor; policies read these attributes.

    Attributes are cached copies of registration fields so the hot loops of the
    policies touch plain slots instead of pydantic models. Treat them as read-only:
    only :class:`ExecutorView` updates them.
    """

    __slots__ = (
        "_probe_sorted",
        "accuracy",
        "delay_per_element_ms",
        "endpoint",
        "errors",
        "executor_id",
        "expires",
        "heartbeat_interval_s",
        "in_flight",
        "key",
        "last_seen",
        "load",
        "load_slope_ms",
        "median_probe_ms",
        "model_name",
        "model_state",
        "model_version",
        "observed_ms",
        "order",
        "outstanding",
        "outstanding_by_source",
        "pending",
        "probes",
        "registration",
        "service_fit",
        "service_ms",
        "service_samples",
        "ttl_s",
    )

    def __init__(self, registration: ExecutorRegistration, ttl_s: float, now: float) -> None:
        self.executor_id: str = registration.executor_id
        self.registration: ExecutorRegistration = registration
        self.key: TraitsKey = registration.traits.key()
        self.accuracy: float = registration.accuracy
        self.endpoint: str = registration.endpoint
        self.model_name: str = registration.model_name
        self.model_version: int | None = registration.model_version
        self.delay_per_element_ms: float = registration.model_data_delay_ms_per_element
        self.heartbeat_interval_s: float = registration.heartbeat_interval_s
        self.ttl_s: float = ttl_s
        """Seconds after ``last_seen`` the executor stays live."""
        self.last_seen: float = now
        """``now`` of the latest registration or status."""
        self.expires: float = now + ttl_s
        """``last_seen + ttl_s``: live while ``now <= expires``."""
        self.model_state: ModelState | None = None
        """Latest status's model state; None until the first status."""
        self.in_flight: int = 0
        """In-flight requests from the latest status."""
        self.errors: int = 0
        """Errors the latest status reported."""
        self.outstanding: int = 0
        """Routers' outstanding requests to this executor (sum over sources)."""
        self.outstanding_by_source: dict[str, int] | None = None
        self.load: int = 0
        """``max(in_flight, outstanding, len(pending))``: requests in the system."""
        self.probes: dict[str, float] = {}
        """Latest probe latency (ms) per client id."""
        self._probe_sorted: _SortedFloats | None = None
        self.median_probe_ms: float | None = None
        """Median of ``probes``; the fallback for clients without a probe."""
        self.observed_ms: dict[str, float] | None = None
        """EWMA of observed end-to-end latency (ms) per client id."""
        self.service_ms: float | None = None
        """Learned base service time (ms) at no load; None until observed (module doc)."""
        self.load_slope_ms: float = 0.0
        """Learned ms per unit of load; meaningful once ``service_ms`` is not None."""
        self.service_fit: ServiceFit | None = None
        """The fit's sufficient statistics; None until observed."""
        self.service_samples: int = 0
        """Observed measurements that taught ``service_ms``."""
        self.pending: deque[tuple[float, int]] | None = None
        """(time, load) of each dispatch not observed yet, oldest first (module doc)."""
        self.order: int = 0
        """Position in its traits bucket's id order (the policies' last tie-break)."""

    @property
    def available(self) -> bool:
        """Model state is AVAILABLE or not reported yet."""
        state = self.model_state
        return state is None or state is ModelState.AVAILABLE

    def live(self, now: float) -> bool:
        """Whether a heartbeat arrived within the time to live."""
        return now <= self.expires

    def __repr__(self) -> str:
        return (
            f"ExecutorEntry({self.executor_id!r}, key={self.key}, state={self.model_state}, "
            f"load={self.load}, expires={self.expires})"
        )


class CandidateSet(Sequence[ExecutorEntry]):
    """Selectable executors of one traits key, by ascending executor id.

    An immutable sequence of :class:`ExecutorEntry` plus what the scoring policies need
    up front: ``max_accuracy`` (0.0 when empty), the entries by descending accuracy
    (``by_accuracy``, so a scan can stop once accuracy alone cannot reach the current
    top-k) with their ``accuracy / max_accuracy`` ratios (0.0 when the maximum is 0),
    and, built on first use, by ascending per-element delay (``by_delay``: the size term
    is a lower bound of every latency estimate, so a latency-heavy scan can stop early).
    """

    __slots__ = ("_by_delay", "by_accuracy", "entries", "key", "max_accuracy", "ratios")

    def __init__(self, key: TraitsKey, entries: tuple[ExecutorEntry, ...]) -> None:
        self.key: TraitsKey = key
        self.entries: tuple[ExecutorEntry, ...] = entries
        self.max_accuracy: float = max([e.accuracy for e in entries], default=0.0)
        self.by_accuracy: tuple[ExecutorEntry, ...] = tuple(
            sorted(entries, key=lambda e: -e.accuracy)  # stable: id order within a tie
        )
        top = self.max_accuracy or 1.0  # all accuracies are 0: every ratio is 0
        self.ratios: tuple[float, ...] = tuple([e.accuracy / top for e in self.by_accuracy])
        self._by_delay: tuple[ExecutorEntry, ...] | None = None

    @property
    def by_delay(self) -> tuple[ExecutorEntry, ...]:
        """The entries by ascending ``delay_per_element_ms`` (id order within a tie)."""
        by_delay = self._by_delay
        if by_delay is None:
            by_delay = self._by_delay = tuple(
                sorted(self.entries, key=lambda e: e.delay_per_element_ms)
            )
        return by_delay

    @overload
    def __getitem__(self, index: int) -> ExecutorEntry: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[ExecutorEntry, ...]: ...

    def __getitem__(self, index: int | slice) -> ExecutorEntry | tuple[ExecutorEntry, ...]:
        return self.entries[index]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ExecutorEntry]:
        return iter(self.entries)

    def __repr__(self) -> str:
        return f"CandidateSet({self.key}, {[e.executor_id for e in self.entries]})"


class _Bucket:
    """Executors sharing one traits key: sorted lazily, selectable set cached.

    The cached :class:`CandidateSet` was computed at ``cache_from`` and stays exact until
    ``cache_until`` (the earliest expiry among its members): liveness only shrinks with
    time, and every event that can grow the set or change a member (registration,
    removal, a status from an executor that was stale or changed availability) drops
    the cache. So selection is O(1) in steady state yet liveness stays lazy.
    """

    __slots__ = ("by_id", "cache", "cache_from", "cache_until", "key", "ordered")

    def __init__(self, key: TraitsKey) -> None:
        self.key = key
        self.by_id: dict[str, ExecutorEntry] = {}
        self.ordered: tuple[ExecutorEntry, ...] | None = ()
        self.cache: CandidateSet | None = None
        self.cache_from = 0.0
        self.cache_until = 0.0

    def sorted_entries(self) -> tuple[ExecutorEntry, ...]:
        ordered = self.ordered
        if ordered is None:
            # Sorted by id so candidate order (and thus tie-breaks and round robin) does
            # not depend on the order records arrived in across topics.
            ordered = tuple(self.by_id[i] for i in sorted(self.by_id))
            for position, entry in enumerate(ordered):
                entry.order = position
            self.ordered = ordered
        return ordered

    def selectable(self, now: float) -> CandidateSet:
        cache = self.cache
        if cache is not None and self.cache_from <= now <= self.cache_until:
            return cache
        available = ModelState.AVAILABLE
        entries = tuple(
            e
            for e in self.sorted_entries()
            if now <= e.expires and (e.model_state is None or e.model_state is available)
        )
        cache = self.cache = CandidateSet(self.key, entries)
        self.cache_from = now
        self.cache_until = min([e.expires for e in entries], default=_INF)
        return cache


_INF = float("inf")
_MAX_PENDING = 64
"""Pending dispatches kept per executor (bounds memory when observations never come)."""


def _as_key(traits: Traits | TraitsKey) -> TraitsKey:
    return traits.key() if isinstance(traits, Traits) else traits


def _as_fit(values: ServiceFit | Sequence[float]) -> ServiceFit:
    """A stored fit back as a ServiceFit; DecodeError unless five finite numbers, weight
    > 0 and non-negative ``load_m2``."""
    try:
        fit = ServiceFit(*(float(v) for v in values))
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"malformed service fit {values!r}: {exc}") from exc
    if not all(abs(v) < _INF for v in fit) or fit.weight <= 0 or fit.load_m2 < 0:
        raise DecodeError(f"malformed service fit {values!r}")
    return fit


class ExecutorView:
    """Executors indexed by traits key, with heartbeats, load and latencies.

    Apply every record of the registration, status and latency topics (and routers'
    outstanding counts) as it arrives; ask :meth:`candidates` at selection time. Not
    thread-safe: one worker task owns it.
    """

    def __init__(
        self,
        *,
        missed_heartbeats: float = 3.0,
        ewma_alpha: float = 0.2,
        default_latency_ms: float = 100.0,
        default_service_ms: float = 10.0,
        default_load_slope_ms: float = 0.0,
        slope_prior_weight: float = 1.0,
        pending_timeout_s: float = 30.0,
    ) -> None:
        """Create an empty view.

        ``missed_heartbeats``: heartbeat intervals without news before an executor
        expires. ``ewma_alpha``: weight of a new observed latency in the EWMAs and the
        service-time fit. ``default_latency_ms``: network latency assumed when the view
        has no probe at all. ``default_service_ms``: base service time assumed when no
        executor has observations yet. ``default_load_slope_ms``: ms per unit of load
        assumed when no executor has observations yet (0: no load penalty until one is
        measured, the prototype's assumption). ``slope_prior_weight``: weight of the
        serial prior in each executor's slope fit, in (load units)² of sample spread.
        ``pending_timeout_s``: age after which a dispatch whose observation never came
        stops counting as load (longer than any request should take).
        """
        if not missed_heartbeats > 0:
            raise ConfigurationError(f"missed_heartbeats must be > 0, got {missed_heartbeats}")
        if not 0 < ewma_alpha <= 1:
            raise ConfigurationError(f"ewma_alpha must be in (0, 1], got {ewma_alpha}")
        if not 0 <= default_latency_ms < float("inf"):
            raise ConfigurationError(f"default_latency_ms must be >= 0, got {default_latency_ms}")
        if not 0 <= default_service_ms < float("inf"):
            raise ConfigurationError(f"default_service_ms must be >= 0, got {default_service_ms}")
        if not 0 <= default_load_slope_ms < float("inf"):
            raise ConfigurationError(
                f"default_load_slope_ms must be >= 0, got {default_load_slope_ms}"
            )
        if not 0 < slope_prior_weight < float("inf"):
            raise ConfigurationError(f"slope_prior_weight must be > 0, got {slope_prior_weight}")
        if not 0 < pending_timeout_s < float("inf"):
            raise ConfigurationError(f"pending_timeout_s must be > 0, got {pending_timeout_s}")
        self.missed_heartbeats = float(missed_heartbeats)
        self.ewma_alpha = float(ewma_alpha)
        self.default_latency_ms = float(default_latency_ms)
        self.default_service_ms = float(default_service_ms)
        self.default_load_slope_ms = float(default_load_slope_ms)
        self.slope_prior_weight = float(slope_prior_weight)
        self.pending_timeout_s = float(pending_timeout_s)
        self._clock = -_INF
        """The latest ``now`` seen: the time a dispatch (which comes without one) is at."""
        self._entries: dict[str, ExecutorEntry] = {}
        self._index: dict[TraitsKey, _Bucket] = {}
        self._clients: dict[str, ClientRegistration] = {}
        self._all_probes = _SortedFloats()
        self._all_services = _SortedFloats()
        self._all_slopes = _SortedFloats()
        self._ignored = {"status": 0, "latency": 0, "outstanding": 0}

    # --- executors ---------------------------------------------------------------

    def apply_registration(self, registration: ExecutorRegistration, now: float) -> bool:
        """Add or update an executor; counts as a heartbeat. Returns True if it is new.

        A re-registration keeps what was learned (status, load, latencies) and moves the
        executor to another traits bucket if its traits changed.
        """
        self._see(now)
        ttl = self.missed_heartbeats * registration.heartbeat_interval_s
        entry = self._entries.get(registration.executor_id)
        if entry is None:
            entry = ExecutorEntry(registration, ttl, now)
            self._entries[entry.executor_id] = entry
            self._bucket_add(entry)
            return True
        new_key = registration.traits.key()
        if new_key != entry.key:
            self._bucket_remove(entry)
            entry.key = new_key
            self._bucket_add(entry)
        entry.registration = registration
        entry.accuracy = registration.accuracy
        entry.endpoint = registration.endpoint
        entry.model_name = registration.model_name
        entry.model_version = registration.model_version
        entry.delay_per_element_ms = registration.model_data_delay_ms_per_element
        entry.heartbeat_interval_s = registration.heartbeat_interval_s
        entry.ttl_s = ttl
        self._touch(entry, now)
        # Accuracy or endpoint may have changed: rebuild the selectable set.
        self._index[entry.key].cache = None
        return False

    def remove_executor(self, executor_id: str) -> bool:
        """Forget an executor (registration tombstone). Returns True if it was known."""
        entry = self._entries.pop(executor_id, None)
        if entry is None:
            return False
        self._bucket_remove(entry)
        for value in entry.probes.values():
            self._all_probes.discard(value)
        if entry.service_ms is not None:
            self._all_services.discard(entry.service_ms)
        if entry.service_ms is not None:
            self._all_slopes.discard(entry.load_slope_ms)
        return True

    def apply_status(self, status: ExecutorStatus, now: float) -> bool:
        """Record a heartbeat. Returns False (and counts it) for an unknown executor.

        Statuses of unknown executors are dropped, not buffered: the registration and
        status topics are not ordered with each other, and the next heartbeat after the
        registration arrives repeats everything a status carries.
        """
        entry = self._entries.get(status.executor_id)
        if entry is None:
            self._ignored["status"] += 1
            return False
        was_available = entry.available
        entry.model_state = status.model_state
        entry.in_flight = status.in_flight
        entry.errors = status.errors
        self._see(now)
        self._update_load(entry)
        entry.heartbeat_interval_s = status.heartbeat_interval_s
        entry.ttl_s = self.missed_heartbeats * status.heartbeat_interval_s
        if was_available is not entry.available:
            self._index[entry.key].cache = None
        self._touch(entry, now)
        return True

    def _touch(self, entry: ExecutorEntry, now: float) -> None:
        bucket = self._index[entry.key]
        if entry.expires < bucket.cache_from:
            # It may have been left out of the cached set as stale; now it is back.
            bucket.cache = None
        # Never move last_seen backwards (a replayed old record must not expire it).
        entry.last_seen = max(entry.last_seen, now)
        entry.expires = entry.last_seen + entry.ttl_s
        if entry.expires < bucket.cache_until:
            # A shorter heartbeat interval can bring the expiry forward.
            bucket.cache_until = entry.expires

    # --- load from routers --------------------------------------------------------

    def observe_outstanding(self, executor_id: str, delta: int, *, source: str = "local") -> bool:
        """Add ``delta`` (+1 on dispatch, -1 on completion) to a source's outstanding count.

        Counts never go below 0. Returns False for an unknown executor. Deltas are not
        idempotent: a worker replaying a topic should prefer :meth:`set_outstanding`.
        """
        entry = self._entries.get(executor_id)
        if entry is None:
            self._ignored["outstanding"] += 1
            return False
        by_source = entry.outstanding_by_source or {}
        self._set_outstanding(entry, source, by_source.get(source, 0) + delta)
        return True

    def set_outstanding(self, executor_id: str, count: int, *, source: str = "local") -> bool:
        """Set a source's (a router's) absolute outstanding count for one executor.

        Idempotent, so safe under replay. Load is ``max(status in_flight, sum over
        sources)``: routers' requests are also counted in the executor's in_flight, and
        the router figure is fresher than the last heartbeat. Returns False for an
        unknown executor.
        """
        entry = self._entries.get(executor_id)
        if entry is None:
            self._ignored["outstanding"] += 1
            return False
        self._set_outstanding(entry, source, count)
        return True

    def _set_outstanding(self, entry: ExecutorEntry, source: str, count: int) -> None:
        by_source = entry.outstanding_by_source
        if by_source is None:
            by_source = entry.outstanding_by_source = {}
        if count == by_source.get(source, 0) + 1:
            # One more request dispatched: remember when and at which load (what the
            # policy saw) for the observation that will come back for it.
            pending = entry.pending
            if pending is None:
                pending = entry.pending = deque(maxlen=_MAX_PENDING)
            pending.append((self._clock, entry.load))
        if count > 0:
            by_source[source] = count
        else:
            by_source.pop(source, None)
        entry.outstanding = sum(by_source.values())
        self._update_load(entry)

    def _update_load(self, entry: ExecutorEntry) -> None:
        """Recompute ``load``, first dropping pending dispatches too old to be in flight."""
        pending = entry.pending
        n_pending = 0
        if pending:
            horizon = self._clock - self.pending_timeout_s
            while pending and pending[0][0] < horizon:
                pending.popleft()
            n_pending = len(pending)
        entry.load = max(entry.in_flight, entry.outstanding, n_pending)

    def _see(self, now: float) -> None:
        if now > self._clock:
            self._clock = now

    def drop_source(self, source: str) -> int:
        """Forget every outstanding count a source (e.g. a dead router) reported.

        Returns the number of executors touched. Scans every executor; call it rarely.
        """
        touched = 0
        for entry in self._entries.values():
            by_source = entry.outstanding_by_source
            if by_source and source in by_source:
                self._set_outstanding(entry, source, 0)
                touched += 1
        return touched

    # --- clients and latencies -------------------------------------------------------

    def apply_client(self, client: ClientRegistration) -> None:
        """Add or update a client (informational; latencies are accepted without one)."""
        self._clients[client.client_id] = client

    def remove_client(self, client_id: str) -> bool:
        """Forget a client and every latency measured to it (scans all executors)."""
        known = self._clients.pop(client_id, None) is not None
        for entry in self._entries.values():
            old = entry.probes.pop(client_id, None)
            if old is not None:
                known = True
                self._all_probes.discard(old)
                if entry._probe_sorted is not None:
                    entry._probe_sorted.discard(old)
                    entry.median_probe_ms = entry._probe_sorted.median()
            if entry.observed_ms is not None:
                entry.observed_ms.pop(client_id, None)
        return known

    def apply_latency(self, measurement: LatencyMeasurement, now: float) -> bool:
        """Record a probe or observed latency. Returns False for an unknown executor.

        ``now`` (the measurement's time) ages pending dispatches; measurements do not
        count as heartbeats (a router can observe a latency from a dying executor).
        """
        entry = self._entries.get(measurement.executor_id)
        if entry is None:
            self._ignored["latency"] += 1
            return False
        self._see(now)
        client_id = measurement.client_id
        latency = measurement.latency_ms
        if measurement.source is LatencySource.PROBE:
            self._set_probe(entry, client_id, latency)
            return True
        alpha = self.ewma_alpha
        observed = entry.observed_ms
        if observed is None:
            observed = entry.observed_ms = {}
        previous = observed.get(client_id)
        observed[client_id] = (
            latency if previous is None else previous + alpha * (latency - previous)
        )
        size = measurement.input_size or 0
        net = self.network_latency_ms(entry, client_id)
        sample = latency - net - entry.delay_per_element_ms * size
        pending = entry.pending
        # The oldest dispatch is this observation's (requests to one executor finish
        # roughly in order); without one (another selector's request, a failover), the
        # current load stands in.
        load = pending.popleft()[1] if pending else entry.load
        self._update_load(entry)
        self._learn(entry, float(load), sample)
        entry.service_samples += 1
        return True

    def _learn(self, entry: ExecutorEntry, x: float, y: float) -> None:
        """Add one (load, service sample) to the executor's exponentially weighted fit."""
        fit = entry.service_fit
        if fit is None:
            entry.service_fit = ServiceFit(1.0, x, y, 0.0, 0.0)
        else:
            keep = 1.0 - self.ewma_alpha
            weight = keep * fit.weight + 1.0
            dx = x - fit.load_mean
            load_mean = fit.load_mean + dx / weight
            service_mean = fit.service_mean + (y - fit.service_mean) / weight
            # West's weighted update: the new point's deviation from the old mean times
            # its deviation from the new one.
            entry.service_fit = ServiceFit(
                weight,
                load_mean,
                service_mean,
                keep * fit.load_m2 + dx * (x - load_mean),
                keep * fit.cross_m2 + dx * (y - service_mean),
            )
        self._refit(entry)

    def _refit(self, entry: ExecutorEntry) -> None:
        """Base and slope from the executor's statistics (see the module doc)."""
        fit = entry.service_fit
        if fit is None:
            return
        k = self.slope_prior_weight
        # The serial prior: each request in the system costs a whole base service time
        # (the old multiplicative estimate, inverted, without the size term). Each
        # executor's own: slopes of the synthetic profiles differ 7x, so pooling them
        # lets a slow executor borrow a fast one's slope and attract a herd.
        prior = max(fit.service_mean, 0.0) / (1.0 + max(fit.load_mean, 0.0))
        slope = max(0.0, (fit.cross_m2 + k * prior) / (fit.load_m2 + k))
        base = fit.service_mean - slope * fit.load_mean
        if base < 0.0:
            # Keep the prediction at the mean load, where the executor is used.
            base = 0.0
            if fit.load_mean > 0.0:
                slope = max(fit.service_mean, 0.0) / fit.load_mean
        if entry.service_ms is None:
            self._all_services.add(base)
            self._all_slopes.add(slope)
        else:
            self._all_services.replace(entry.service_ms, base)
            self._all_slopes.replace(entry.load_slope_ms, slope)
        entry.service_ms = base
        entry.load_slope_ms = slope

    def restore_learned(
        self,
        executor_id: str,
        observed_ms: Mapping[str, float],
        service_ms: float | None,
        service_samples: int,
        service_fit: ServiceFit | Sequence[float] | None = None,
    ) -> bool:
        """Put back what observed latencies taught (from the store, after a restart).

        Returns False for an unknown executor. ``service_fit`` (the executor's
        :attr:`ExecutorEntry.service_fit`, or its five numbers in that order) restores
        base and slope exactly as they are refitted from it; without it (a store written
        before slopes were learned) ``service_ms`` becomes the mean sample at load 0 with
        weight ``service_samples`` (at most ``1 / ewma_alpha``), so base and slope are
        both ``service_ms`` (the serial prior: what the multiplicative model that stored
        it assumed) until new samples arrive. Raises DecodeError for a fit that is not
        five finite numbers with a positive weight and a non-negative ``load_m2``.
        """
        entry = self._entries.get(executor_id)
        if entry is None:
            return False
        entry.observed_ms = {str(k): float(v) for k, v in observed_ms.items()} or None
        entry.service_samples = service_samples
        if service_fit is not None:
            entry.service_fit = _as_fit(service_fit)
        elif service_ms is not None:
            entry.service_fit = self._legacy_fit(float(service_ms), service_samples)
        self._refit(entry)
        return True

    def _legacy_fit(self, service_ms: float, samples: int) -> ServiceFit:
        """A service time stored without a fit, as a fit: its mean at load 0."""
        weight = min(max(float(samples), 1.0), 1.0 / self.ewma_alpha)
        return ServiceFit(weight, 0.0, service_ms, 0.0, 0.0)

    def fallback_latency_ms(self) -> float:
        """Network latency assumed for an executor with no probe at all (see module doc)."""
        median = self._all_probes.median()
        return self.default_latency_ms if median is None else median

    def network_latency_ms(self, entry: ExecutorEntry, client_id: str) -> float:
        """A client's probe latency to an executor, or the documented fallback chain."""
        latency = entry.probes.get(client_id)
        if latency is not None:
            return latency
        median = entry.median_probe_ms
        return self.fallback_latency_ms() if median is None else median

    def fallback_service_ms(self) -> float:
        """Base service time assumed for an executor without observations: the lowest
        learned base, else ``default_service_ms``.

        Optimistic on purpose: an executor always seen under the same load cannot tell
        its base from its load penalty, so learned bases run high, and a pessimistic guess
        would keep an unobserved executor from ever being tried; one request corrects an
        optimistic one.
        """
        values = self._all_services.values
        return values[0] if values else self.default_service_ms

    def fallback_load_slope_ms(self) -> float:
        """Slope (ms per unit of load) assumed for an executor without observations: the
        median learned slope, else ``default_load_slope_ms``."""
        median = self._all_slopes.median()
        return self.default_load_slope_ms if median is None else median

    # --- selection -----------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of registered executors (live or not)."""
        return len(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, executor_id: str) -> ExecutorEntry | None:
        """The entry of one executor, if registered."""
        return self._entries.get(executor_id)

    def candidates(self, traits: Traits | TraitsKey, now: float) -> CandidateSet:
        """Live, available executors with exactly these traits, by ascending executor id.

        Only the traits key's bucket is looked at, and its result is cached until an
        event or the earliest member expiry can change it (see ``_Bucket``). The result
        is shared: do not mutate it or its entries. ``now`` is also the time of the
        dispatches recorded right after (see the module doc).
        """
        if now > self._clock:
            self._clock = now
        key = _as_key(traits)
        bucket = self._index.get(key)
        if bucket is None:
            return CandidateSet(key, ())
        return bucket.selectable(now)

    def eliminated_by(self, traits: Traits | TraitsKey, now: float) -> str | None:
        """Why :meth:`candidates` is empty: ``traits``, ``liveness`` or ``model_state``.

        Filters apply in that order; the one that removed the last executors is named.
        None when there are candidates.
        """
        bucket = self._index.get(_as_key(traits))
        if bucket is None or not bucket.by_id:
            return "traits"
        live = [e for e in bucket.by_id.values() if now <= e.expires]
        if not live:
            return "liveness"
        if not any(e.available for e in live):
            return "model_state"
        return None

    def traits_keys(self) -> list[TraitsKey]:
        """Every traits key with at least one registered executor."""
        return [k for k, b in self._index.items() if b.by_id]

    def entries(self) -> Iterator[ExecutorEntry]:
        """Every registered executor's entry (for snapshots, metrics, debugging)."""
        return iter(self._entries.values())

    def clients(self) -> Iterator[ClientRegistration]:
        """Every registered client."""
        return iter(self._clients.values())

    def stats(self, now: float | None = None) -> dict[str, int]:
        """Counters for metrics; liveness counts only when ``now`` is given. O(executors)."""
        out = {
            "executors": len(self._entries),
            "traits_keys": len(self.traits_keys()),
            "clients": len(self._clients),
            "probes": len(self._all_probes),
            "learned_services": len(self._all_services),
            "learned_slopes": len(self._all_slopes),
            "outstanding": sum(e.outstanding for e in self._entries.values()),
            "ignored_status": self._ignored["status"],
            "ignored_latency": self._ignored["latency"],
            "ignored_outstanding": self._ignored["outstanding"],
        }
        if now is not None:
            live = [e for e in self._entries.values() if now <= e.expires]
            out["live"] = len(live)
            out["stale"] = len(self._entries) - len(live)
            out["selectable"] = sum(1 for e in live if e.available)
        return out

    # --- snapshot / restore --------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """A JSON-serialisable copy of the view (outstanding counts excluded: live data).

        Heartbeat times are stored as ages relative to ``now`` so a snapshot can be
        restored on another clock (e.g. after a restart with ``time.monotonic()``).
        """
        executors = [
            {
                "registration": e.registration.model_dump(mode="json"),
                "age_s": now - e.last_seen,
                "heartbeat_interval_s": e.heartbeat_interval_s,
                "model_state": None if e.model_state is None else e.model_state.value,
                "in_flight": e.in_flight,
                "errors": e.errors,
                "probes": dict(e.probes),
                "observed_ms": dict(e.observed_ms or {}),
                "service_ms": e.service_ms,
                "service_samples": e.service_samples,
                "service_fit": None if e.service_fit is None else list(e.service_fit),
            }
            for e in self._entries.values()
        ]
        return {
            "version": SNAPSHOT_VERSION,
            "executors": executors,
            "clients": [c.model_dump(mode="json") for c in self._clients.values()],
        }

    @classmethod
    def restore(
        cls,
        snapshot: Mapping[str, Any],
        now: float,
        *,
        missed_heartbeats: float = 3.0,
        ewma_alpha: float = 0.2,
        default_latency_ms: float = 100.0,
        default_service_ms: float = 10.0,
        default_load_slope_ms: float = 0.0,
        slope_prior_weight: float = 1.0,
    ) -> ExecutorView:
        """Rebuild a view from :meth:`snapshot` output; raises DecodeError if malformed.

        Snapshots without ``service_fit`` (written before slopes were learned) restore
        ``service_ms`` as in :meth:`restore_learned`.
        """
        view = cls(
            missed_heartbeats=missed_heartbeats,
            ewma_alpha=ewma_alpha,
            default_latency_ms=default_latency_ms,
            default_service_ms=default_service_ms,
            default_load_slope_ms=default_load_slope_ms,
            slope_prior_weight=slope_prior_weight,
        )
        try:
            if snapshot["version"] != SNAPSHOT_VERSION:
                raise DecodeError(f"unsupported view snapshot version {snapshot['version']!r}")
            for item in snapshot["clients"]:
                view.apply_client(ClientRegistration.model_validate(item))
            for item in snapshot["executors"]:
                registration = ExecutorRegistration.model_validate(item["registration"])
                view.apply_registration(registration, now - float(item["age_s"]))
                entry = view._entries[registration.executor_id]
                interval = float(item["heartbeat_interval_s"])
                if not interval > 0:
                    raise DecodeError(f"bad heartbeat interval {interval!r}")
                entry.heartbeat_interval_s = interval
                entry.ttl_s = view.missed_heartbeats * interval
                entry.expires = entry.last_seen + entry.ttl_s
                state = item["model_state"]
                entry.model_state = None if state is None else ModelState(state)
                view._index[entry.key].cache = None
                entry.in_flight = entry.load = int(item["in_flight"])
                entry.errors = int(item["errors"])
                for client_id, latency in item["probes"].items():
                    latency = float(latency)
                    if not 0 <= latency < float("inf"):
                        raise DecodeError(f"bad probe latency {latency!r}")
                    view._set_probe(entry, str(client_id), latency)
                observed = {str(k): float(v) for k, v in item["observed_ms"].items()}
                entry.observed_ms = observed or None
                entry.service_samples = int(item["service_samples"])
                fit = item.get("service_fit")
                service = item["service_ms"]
                if fit is not None:
                    entry.service_fit = _as_fit(fit)
                elif service is not None:
                    entry.service_fit = view._legacy_fit(float(service), entry.service_samples)
                view._refit(entry)
        except DecodeError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as exc:
            raise DecodeError(f"malformed view snapshot: {exc}") from exc
        return view

    def restore_probe(self, executor_id: str, client_id: str, latency_ms: float) -> bool:
        """Put back a stored probe latency (a restart): what ``apply_latency`` does for a
        probe, without building a message per value. False for an unknown executor."""
        entry = self._entries.get(executor_id)
        if entry is None:
            return False
        if not 0.0 <= latency_ms < _INF:
            raise ConfigurationError(f"probe latency must be finite and >= 0: {latency_ms!r}")
        self._set_probe(entry, client_id, latency_ms)
        return True

    def _set_probe(self, entry: ExecutorEntry, client_id: str, latency: float) -> None:
        old = entry.probes.get(client_id)
        entry.probes[client_id] = latency
        self._all_probes.replace(old, latency)
        if entry._probe_sorted is None:
            entry._probe_sorted = _SortedFloats()
        entry._probe_sorted.replace(old, latency)
        entry.median_probe_ms = entry._probe_sorted.median()

    # --- index ---------------------------------------------------------------------

    def _bucket_add(self, entry: ExecutorEntry) -> None:
        bucket = self._index.get(entry.key)
        if bucket is None:
            bucket = self._index[entry.key] = _Bucket(entry.key)
        bucket.by_id[entry.executor_id] = entry
        bucket.ordered = None
        bucket.cache = None

    def _bucket_remove(self, entry: ExecutorEntry) -> None:
        bucket = self._index.get(entry.key)
        if bucket is None:
            return
        bucket.by_id.pop(entry.executor_id, None)
        bucket.ordered = None
        bucket.cache = None
        if not bucket.by_id:
            del self._index[entry.key]
