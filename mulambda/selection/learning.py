"""What observed latencies teach the selector: each executor's service time under load.

Pure logic, owned by :class:`~mulambda.selection.view.ExecutorView`: the view turns an
``observed`` measurement (a router's end-to-end inference time) into one sample and the
load it was dispatched at, and :class:`ServiceLearning` keeps what it teaches on the
executor's entry. Nothing here does I/O or reads a clock.

Service time
    Observed measurements are kept as an EWMA per (executor, client) and also teach each
    executor a linear model of its service time under load. The adaptive policy
    estimates::

        net + base + delay_per_element * size + slope * L

    ``base`` is the service time at no load that the registered per-element delay does
    not explain (so the size term is not counted twice) and ``slope`` the milliseconds
    each further request in the system adds (``L``: the view's load). The load penalty is
    additive and learned, not assumed: an executor serving requests side by side (spare
    cores; the prototype's synthetic models, whose delay is ``D + size * alpha +
    in_flight * beta``) pays a little per request in flight, a serial one a whole service
    time. The M/M/1 estimate ``S * (1 + L)`` used before assumed the latter and
    multiplied the size term by the load, overestimating the former ~10x for large
    inputs.

    Each observation is one sample ``y = observed - net - delay_per_element * size`` at
    ``x`` = the load its dispatch was made at (the current load when no pending dispatch
    is left), ``net`` the client's probe latency (or the view's fallback): the same ``L``
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

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from mulambda.errors import ConfigurationError, DecodeError
from mulambda.selection.sorted_floats import SortedFloats

_INF = float("inf")


class ServiceFit(NamedTuple):
    """Sufficient statistics of an executor's service-time fit (see the module doc).

    Exponentially weighted: every sample multiplies the old sums by ``1 - ewma_alpha``
    and adds itself with weight 1. This is what must be persisted for a restart to keep
    the learned slope; :meth:`ServiceLearning.restore` takes it back.
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


class LearnedFields(Protocol):
    """The fields of an executor's view entry that :class:`ServiceLearning` writes."""

    observed_ms: dict[str, float] | None
    """EWMA of observed end-to-end latency (ms) per client id."""
    service_ms: float | None
    """Learned base service time (ms) at no load; None until observed."""
    load_slope_ms: float
    """Learned ms per unit of load; meaningful once ``service_ms`` is not None."""
    service_fit: ServiceFit | None
    """The fit's sufficient statistics; None until observed."""
    service_samples: int
    """Observed measurements that taught ``service_ms``."""


def as_fit(values: ServiceFit | Sequence[float]) -> ServiceFit:
    """A stored fit back as a ServiceFit; DecodeError unless five finite numbers, weight
    > 0 and non-negative ``load_m2``."""
    try:
        fit = ServiceFit(*(float(v) for v in values))
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"malformed service fit {values!r}: {exc}") from exc
    if not all(abs(v) < _INF for v in fit) or fit.weight <= 0 or fit.load_m2 < 0:
        raise DecodeError(f"malformed service fit {values!r}")
    return fit


def updated_fit(fit: ServiceFit | None, x: float, y: float, keep: float) -> ServiceFit:
    """``fit`` with one more sample ``(x, y)``, older weights multiplied by ``keep``."""
    if fit is None:
        return ServiceFit(1.0, x, y, 0.0, 0.0)
    weight = keep * fit.weight + 1.0
    dx = x - fit.load_mean
    load_mean = fit.load_mean + dx / weight
    service_mean = fit.service_mean + (y - fit.service_mean) / weight
    # West's weighted update: the new point's deviation from the old mean times its
    # deviation from the new one.
    return ServiceFit(
        weight,
        load_mean,
        service_mean,
        keep * fit.load_m2 + dx * (x - load_mean),
        keep * fit.cross_m2 + dx * (y - service_mean),
    )


def fitted_line(fit: ServiceFit, prior_weight: float) -> tuple[float, float]:
    """``(base, slope)`` of a fit under the serial prior (see the module doc)."""
    # The serial prior: each request in the system costs a whole base service time (the
    # old multiplicative estimate, inverted, without the size term). Each executor's own:
    # slopes of the synthetic profiles differ 7x, so pooling them lets a slow executor
    # borrow a fast one's slope and attract a herd.
    prior = max(fit.service_mean, 0.0) / (1.0 + max(fit.load_mean, 0.0))
    slope = max(0.0, (fit.cross_m2 + prior_weight * prior) / (fit.load_m2 + prior_weight))
    base = fit.service_mean - slope * fit.load_mean
    if base < 0.0:
        # Keep the prediction at the mean load, where the executor is used.
        base = 0.0
        if fit.load_mean > 0.0:
            slope = max(fit.service_mean, 0.0) / fit.load_mean
    return base, slope


class ServiceLearning:
    """Learns executors' service times from observed latencies (see the module doc).

    Writes the :class:`LearnedFields` of the entries it is given and keeps every learned
    base and slope in sorted pools for the fallbacks of executors without observations.
    Call :meth:`forget` when an executor leaves, so its values leave the pools.
    """

    def __init__(
        self,
        *,
        ewma_alpha: float = 0.2,
        default_service_ms: float = 10.0,
        default_load_slope_ms: float = 0.0,
        slope_prior_weight: float = 1.0,
    ) -> None:
        """``ewma_alpha``: weight of a new observed latency in the EWMAs and the fit.
        ``default_service_ms`` / ``default_load_slope_ms``: base and slope assumed while
        no executor has observations. ``slope_prior_weight``: weight of the serial prior
        in each executor's slope fit, in (load units)² of sample spread."""
        if not 0 < ewma_alpha <= 1:
            raise ConfigurationError(f"ewma_alpha must be in (0, 1], got {ewma_alpha}")
        if not 0 <= default_service_ms < _INF:
            raise ConfigurationError(f"default_service_ms must be >= 0, got {default_service_ms}")
        if not 0 <= default_load_slope_ms < _INF:
            raise ConfigurationError(
                f"default_load_slope_ms must be >= 0, got {default_load_slope_ms}"
            )
        if not 0 < slope_prior_weight < _INF:
            raise ConfigurationError(f"slope_prior_weight must be > 0, got {slope_prior_weight}")
        self.ewma_alpha = float(ewma_alpha)
        self.default_service_ms = float(default_service_ms)
        self.default_load_slope_ms = float(default_load_slope_ms)
        self.slope_prior_weight = float(slope_prior_weight)
        self._services = SortedFloats()
        self._slopes = SortedFloats()

    def observe(
        self, entry: LearnedFields, client_id: str, latency_ms: float, load: float, sample: float
    ) -> None:
        """One observed latency: the client's EWMA, and ``sample`` (ms of service time)
        at ``load`` added to the executor's fit."""
        alpha = self.ewma_alpha
        observed = entry.observed_ms
        if observed is None:
            observed = entry.observed_ms = {}
        previous = observed.get(client_id)
        observed[client_id] = (
            latency_ms if previous is None else previous + alpha * (latency_ms - previous)
        )
        entry.service_fit = updated_fit(entry.service_fit, load, sample, 1.0 - alpha)
        self._refit(entry)
        entry.service_samples += 1

    def restore(
        self,
        entry: LearnedFields,
        observed_ms: Mapping[str, float],
        service_ms: float | None,
        service_samples: int,
        service_fit: ServiceFit | Sequence[float] | None = None,
    ) -> None:
        """Put back what observed latencies taught (from the store, after a restart).

        ``service_fit`` (the executor's :attr:`LearnedFields.service_fit`, or its five
        numbers in that order) restores base and slope exactly as they are refitted from
        it; without it (a store written before slopes were learned) ``service_ms``
        becomes the mean sample at load 0 with weight ``service_samples`` (at most
        ``1 / ewma_alpha``), so base and slope are both ``service_ms`` (the serial prior:
        what the multiplicative model that stored it assumed) until new samples arrive.
        Raises DecodeError (changing nothing) for a fit that is not five finite numbers
        with a positive weight and a non-negative ``load_m2``.
        """
        fit = None if service_fit is None else as_fit(service_fit)
        entry.observed_ms = {str(k): float(v) for k, v in observed_ms.items()} or None
        entry.service_samples = service_samples
        if fit is not None:
            entry.service_fit = fit
        elif service_ms is not None:
            entry.service_fit = self._legacy_fit(float(service_ms), service_samples)
        self._refit(entry)

    def forget(self, entry: LearnedFields) -> None:
        """An executor leaves the view: its base and slope leave the fallbacks' pools."""
        if entry.service_ms is not None:
            self._services.discard(entry.service_ms)
            self._slopes.discard(entry.load_slope_ms)

    def fallback_service_ms(self) -> float:
        """Base service time assumed for an executor without observations: the lowest
        learned base, else ``default_service_ms``.

        Optimistic on purpose: an executor always seen under the same load cannot tell
        its base from its load penalty, so learned bases run high, and a pessimistic guess
        would keep an unobserved executor from ever being tried; one request corrects an
        optimistic one.
        """
        values = self._services.values
        return values[0] if values else self.default_service_ms

    def fallback_load_slope_ms(self) -> float:
        """Slope (ms per unit of load) assumed for an executor without observations: the
        median learned slope, else ``default_load_slope_ms``."""
        median = self._slopes.median()
        return self.default_load_slope_ms if median is None else median

    def _legacy_fit(self, service_ms: float, samples: int) -> ServiceFit:
        """A service time stored without a fit, as a fit: its mean at load 0."""
        weight = min(max(float(samples), 1.0), 1.0 / self.ewma_alpha)
        return ServiceFit(weight, 0.0, service_ms, 0.0, 0.0)

    def _refit(self, entry: LearnedFields) -> None:
        """Base and slope from the entry's statistics, kept in the pools."""
        fit = entry.service_fit
        if fit is None:
            return
        base, slope = fitted_line(fit, self.slope_prior_weight)
        if entry.service_ms is None:
            self._services.add(base)
            self._slopes.add(slope)
        else:
            self._services.replace(entry.service_ms, base)
            self._slopes.replace(entry.load_slope_ms, slope)
        entry.service_ms = base
        entry.load_slope_ms = slope
