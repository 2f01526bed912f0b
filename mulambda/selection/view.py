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
    in order), a router reports the call failed (an observed measurement with
    ``failed``: an error answer, no answer in time) or ``pending_timeout_s`` passes (a
    router that reports no failures, or died). Without that, a fast executor's short
    expiry made it look idle while a herd of requests was still queued on it; and
    without the failure reports, every timed-out call of an overload kept counting for
    the whole pending timeout, so an executor looked busier the less it was used.
    Pending counts only this selector's own dispatches; observations of other
    selectors' requests pop them early, so with several selectors this degrades
    towards the outstanding counts, never below them.

Service time
    ``observed`` measurements (a router's end-to-end inference time) are kept as an EWMA
    per (executor, client) and teach each executor a base service time and a load slope,
    which the adaptive policy reads. The view turns each into one sample, net of the
    network latency and the size term, at the load its dispatch was made at (see Load);
    its :class:`~mulambda.selection.learning.ServiceLearning` holds the fit and the
    fallbacks for executors without observations (documented there).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import overload

from mulambda.errors import ConfigurationError
from mulambda.selection.learning import ServiceFit, ServiceLearning
from mulambda.selection.sorted_floats import SortedFloats
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorProtocol,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    ObservedLatencies,
    Traits,
)

TraitsKey = tuple[str, str, str]
"""``Traits.key()``: (model_type, input_format, output_format)."""


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
        "protocol",
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
        self.protocol: ExecutorProtocol = registration.protocol
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
        self._probe_sorted: SortedFloats | None = None
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
        expires. ``default_latency_ms``: network latency assumed when the view has no
        probe at all. ``pending_timeout_s``: age after which a dispatch whose observation
        never came stops counting as load (longer than any request should take).
        ``ewma_alpha``, ``default_service_ms``, ``default_load_slope_ms`` and
        ``slope_prior_weight`` configure the service-time learning (see
        :class:`~mulambda.selection.learning.ServiceLearning`).
        """
        if not missed_heartbeats > 0:
            raise ConfigurationError(f"missed_heartbeats must be > 0, got {missed_heartbeats}")
        if not 0 <= default_latency_ms < _INF:
            raise ConfigurationError(f"default_latency_ms must be >= 0, got {default_latency_ms}")
        if not 0 < pending_timeout_s < _INF:
            raise ConfigurationError(f"pending_timeout_s must be > 0, got {pending_timeout_s}")
        self.missed_heartbeats = float(missed_heartbeats)
        self.default_latency_ms = float(default_latency_ms)
        self.pending_timeout_s = float(pending_timeout_s)
        self.learning = ServiceLearning(
            ewma_alpha=ewma_alpha,
            default_service_ms=default_service_ms,
            default_load_slope_ms=default_load_slope_ms,
            slope_prior_weight=slope_prior_weight,
        )
        """What observed latencies taught; it writes the entries' service-time fields."""
        self._clock = -_INF
        """The latest ``now`` seen: the time a dispatch (which comes without one) is at."""
        self._entries: dict[str, ExecutorEntry] = {}
        self._index: dict[TraitsKey, _Bucket] = {}
        self._clients: dict[str, ClientRegistration] = {}
        self._all_probes = SortedFloats()

    # --- executors ---------------------------------------------------------------

    def apply_registration(self, registration: ExecutorRegistration, now: float) -> bool:
        """Add or update an executor; counts as a heartbeat. Returns True if it is new.

        A re-registration keeps what was learned (status, load, latencies) and moves the
        executor to another traits bucket if its traits changed. A launch request (a
        registration with a ``launch`` spec) is no executor: any executor known under its id
        is forgotten and False returned; the launched replicas register themselves.
        """
        if registration.launch is not None:
            self.remove_executor(registration.executor_id)
            return False
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
        entry.protocol = registration.protocol
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
        self.learning.forget(entry)
        return True

    def apply_status(self, status: ExecutorStatus, now: float) -> bool:
        """Record a heartbeat. Returns False for an unknown executor.

        Statuses of unknown executors are dropped, not buffered: the registration and
        status topics are not ordered with each other, and the next heartbeat after the
        registration arrives repeats everything a status carries.
        """
        entry = self._entries.get(status.executor_id)
        if entry is None:
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

    def set_outstanding(
        self, executor_id: str, count: int, *, source: str = "local", dispatched: bool = True
    ) -> bool:
        """Set a source's (a router's) absolute outstanding count for one executor.

        Idempotent, so safe under replay. Load is ``max(status in_flight, sum over
        sources)``: routers' requests are also counted in the executor's in_flight, and
        the router figure is fresher than the last heartbeat. A rise by one is a pending
        dispatch (module doc, Load) unless ``dispatched`` is False: a leased slot, whose
        request has not come yet, counts for its expected time only. Returns False for
        an unknown executor.
        """
        entry = self._entries.get(executor_id)
        if entry is None:
            return False
        self._set_outstanding(entry, source, count, dispatched)
        return True

    def _set_outstanding(
        self, entry: ExecutorEntry, source: str, count: int, dispatched: bool = True
    ) -> None:
        by_source = entry.outstanding_by_source
        if by_source is None:
            by_source = entry.outstanding_by_source = {}
        if dispatched and count == by_source.get(source, 0) + 1:
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
        """Record a probe or observed latency (or failed call: module doc, Load).
        Returns False for an unknown executor.

        ``now`` (the measurement's time) ages pending dispatches; measurements do not
        count as heartbeats (a router can observe a latency from a dying executor).
        """
        entry = self._entries.get(measurement.executor_id)
        if entry is None:
            return False
        self._see(now)
        client_id = measurement.client_id
        latency = measurement.latency_ms
        if measurement.source is LatencySource.PROBE:
            self._set_probe(entry, client_id, latency)
            return True
        self._observe(entry, client_id, latency, measurement.input_size, measurement.failed)
        return True

    def apply_observed(self, batch: ObservedLatencies, now: float) -> bool:
        """Record a router's batch of observed calls: each sample as :meth:`apply_latency`
        records the observed measurement it stands for, in order. (Its ``released``
        leased slots were never pending: the selector's answerer ends their outstanding
        counts.) Returns False for an unknown executor."""
        entry = self._entries.get(batch.executor_id)
        if entry is None:
            return False
        self._see(now)
        for sample in batch.samples:
            self._observe(
                entry, sample.client_id, sample.latency_ms, sample.input_size, sample.failed
            )
        return True

    def _observe(
        self, entry: ExecutorEntry, client_id: str, latency: float, size: int | None, failed: bool
    ) -> None:
        pending = entry.pending
        if failed:
            # The call is over without a service time to learn from (an error answer
            # is no service, a timeout only a lower bound): it just stops being load.
            if pending:
                pending.popleft()
            self._update_load(entry)
            return
        net = self.network_latency_ms(entry, client_id)
        sample = latency - net - entry.delay_per_element_ms * (size or 0)
        # The oldest dispatch is this observation's (requests to one executor finish
        # roughly in order); without one (another selector's request, a failover), the
        # current load stands in.
        load = pending.popleft()[1] if pending else entry.load
        self._update_load(entry)
        self.learning.observe(entry, client_id, latency, float(load), sample)

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
        """Base service time assumed for an executor without observations (the lowest
        learned one; see :meth:`ServiceLearning.fallback_service_ms`)."""
        return self.learning.fallback_service_ms()

    def fallback_load_slope_ms(self) -> float:
        """Load slope assumed for an executor without observations (the median learned
        one; see :meth:`ServiceLearning.fallback_load_slope_ms`)."""
        return self.learning.fallback_load_slope_ms()

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

    def entries(self) -> Iterator[ExecutorEntry]:
        """Every registered executor's entry (a full store rewrite, debugging)."""
        return iter(self._entries.values())

    def clients(self) -> Iterator[ClientRegistration]:
        """Every registered client."""
        return iter(self._clients.values())

    # --- restoring from the store -------------------------------------------------

    def restore_learned(
        self,
        executor_id: str,
        observed_ms: Mapping[str, float],
        service_ms: float | None,
        service_samples: int,
        service_fit: ServiceFit | Sequence[float] | None = None,
    ) -> bool:
        """Put back what observed latencies taught one executor (the store, a restart).

        False for an unknown executor; DecodeError for a malformed fit. See
        :meth:`ServiceLearning.restore`.
        """
        entry = self._entries.get(executor_id)
        if entry is None:
            return False
        self.learning.restore(entry, observed_ms, service_ms, service_samples, service_fit)
        return True

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
            entry._probe_sorted = SortedFloats()
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
