"""Synthetic model profiles: the prototype's "dummy models", as pure data and arithmetic.

A synthetic executor answers after::

    delay_s = D/1000 + input_size * alpha + in_flight * beta + uniform(0, J/1000)

(``D`` and ``J`` in milliseconds; ``alpha`` seconds per input element; ``beta`` seconds per
request already in flight) and reports ``confidences[feature] / len(confidences) ** gamma``
for the integer ``feature`` of a request (out of range, negative included: 0.0). It
registers with accuracy ``confidences[0]``.

The nine profiles of the prototype's evaluation are built in (:data:`PROTOTYPE_PROFILES`)
and can also be read from ``prototype_evaluation.yaml`` (:func:`load_profiles`). Nothing
here sleeps: :class:`~mulambda.emulator.synthetic.SyntheticModel` serves these profiles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import yaml

from mulambda.errors import ConfigurationError

__all__ = [
    "PROTOTYPE_PROFILES",
    "SyntheticProfile",
    "UniformSource",
    "load_profiles",
    "parse_profiles",
    "profile_by_name",
]


class UniformSource(Protocol):
    """Anything with ``uniform(a, b)``, e.g. ``random.Random`` (seed it for repeatable runs)."""

    def uniform(self, a: float, b: float) -> float:
        """A float in ``[a, b]``."""
        ...


def _finite_non_negative(name: str, field: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"profile {name!r}: {field} must be finite and >= 0, not {value}")


@dataclass(frozen=True, slots=True)
class SyntheticProfile:
    """Latency and confidence behaviour of one synthetic model (field names as in the YAML)."""

    name: str
    """Model name; the executor serves the profile under it."""
    D: float
    """Base delay in milliseconds."""
    alpha: float
    """Seconds added per input element."""
    beta: float
    """Seconds added per request already in flight."""
    J: float
    """Upper bound of the uniform jitter, in milliseconds."""
    confidences: tuple[float, ...]
    """Confidence per feature index; ``confidences[0]`` is the registered accuracy."""
    gamma: float
    """Exponent of the feature-set size penalty ``len(confidences) ** gamma``."""
    capacity: int | None = None
    """Requests served at once (None: unbounded, the prototype); more wait in FIFO order,
    and a waiting request is not counted in the ``in_flight`` of the delay formula."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("profile name must not be empty")
        for field, value in (("D", self.D), ("alpha", self.alpha), ("beta", self.beta)):
            _finite_non_negative(self.name, field, value)
        _finite_non_negative(self.name, "J", self.J)
        if not self.confidences:
            raise ConfigurationError(f"profile {self.name!r}: confidences must not be empty")
        for c in self.confidences:
            if not 0.0 <= c <= 1.0:
                raise ConfigurationError(
                    f"profile {self.name!r}: confidences must lie in [0, 1], not {c}"
                )
        if not math.isfinite(self.gamma):
            raise ConfigurationError(f"profile {self.name!r}: gamma must be finite")
        if self.capacity is not None and (
            isinstance(self.capacity, bool) or not isinstance(self.capacity, int)
        ):
            raise ConfigurationError(f"profile {self.name!r}: capacity must be an integer")
        if self.capacity is not None and self.capacity < 1:
            raise ConfigurationError(f"profile {self.name!r}: capacity must be >= 1")

    @property
    def accuracy(self) -> float:
        """The accuracy the prototype registered the executor with: ``confidences[0]``."""
        return self.confidences[0]

    def mean_delay_s(self, input_size: int, in_flight: int, *, time_scale: float = 1.0) -> float:
        """The expected :meth:`delay_s` (jitter at its mean ``J / 2``), without drawing."""
        if input_size < 0 or in_flight < 0:
            raise ConfigurationError("input_size and in_flight must be >= 0")
        base = self.D / 1000.0 + input_size * self.alpha + in_flight * self.beta
        return (base + self.J / 2000.0) * time_scale

    def delay_s(
        self,
        input_size: int,
        in_flight: int,
        rng: UniformSource,
        *,
        time_scale: float = 1.0,
    ) -> float:
        """Seconds to wait before answering, scaled by ``time_scale`` (1.0 = as specified).

        ``in_flight`` counts the requests already being served when this one arrives (the
        prototype read its counter before incrementing it). ``time_scale`` multiplies the
        whole delay, jitter included, so tests and benchmarks can shrink time uniformly.
        """
        if input_size < 0 or in_flight < 0:
            raise ConfigurationError("input_size and in_flight must be >= 0")
        if not math.isfinite(time_scale) or time_scale < 0:
            raise ConfigurationError(f"time_scale must be finite and >= 0, not {time_scale}")
        jitter = rng.uniform(0.0, self.J / 1000.0) if self.J > 0 else 0.0
        base = self.D / 1000.0 + input_size * self.alpha + in_flight * self.beta + jitter
        return base * time_scale

    def confidence(self, feature: int) -> float:
        """``confidences[feature] / len(confidences) ** gamma``; 0.0 when out of range.

        Negative features are out of range (no Python-style indexing from the end).
        """
        if feature < 0 or feature >= len(self.confidences):
            return 0.0
        return self.confidences[feature] / math.pow(len(self.confidences), self.gamma)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SyntheticProfile:
        """Build from one ``executor_profiles`` entry of the YAML."""
        try:
            confidences = data["confidences"]
            if isinstance(confidences, str | bytes) or not isinstance(confidences, Iterable):
                raise TypeError("confidences must be a list")
            return cls(
                name=str(data["name"]),
                D=float(data["D"]),
                alpha=float(data["alpha"]),
                beta=float(data["beta"]),
                J=float(data["J"]),
                confidences=tuple(float(c) for c in confidences),
                gamma=float(data["gamma"]),
                capacity=None if data.get("capacity") is None else int(data["capacity"]),
            )
        except KeyError as exc:
            raise ConfigurationError(f"profile {dict(data)!r:.200} lacks {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"profile {dict(data)!r:.200} is invalid: {exc}") from None

    def to_mapping(self) -> dict[str, Any]:
        """The YAML form of the profile (``capacity`` only when set)."""
        mapping: dict[str, Any] = {
            "name": self.name,
            "D": self.D,
            "alpha": self.alpha,
            "beta": self.beta,
            "J": self.J,
            "confidences": list(self.confidences),
            "gamma": self.gamma,
        }
        if self.capacity is not None:
            mapping["capacity"] = self.capacity
        return mapping


def _p(
    name: str, d: float, alpha: float, beta: float, j: float, conf: tuple[float, ...], g: float
) -> SyntheticProfile:
    return SyntheticProfile(name=name, D=d, alpha=alpha, beta=beta, J=j, confidences=conf, gamma=g)


PROTOTYPE_PROFILES: Final[tuple[SyntheticProfile, ...]] = (
    _p("FastBad", 10, 0.001, 0.10, 5, (0.50, 0.30, 0.10), 0.1),
    _p("FastOK", 15, 0.002, 0.35, 5, (0.80, 0.50, 0.30), 0.2),
    _p("FastGood", 20, 0.004, 0.70, 5, (0.90, 0.70, 0.50), 0.3),
    _p("MidBad", 50, 0.010, 0.10, 30, (0.55, 0.35, 0.15), 0.4),
    _p("MidOK", 75, 0.020, 0.30, 30, (0.85, 0.55, 0.35), 0.5),
    _p("MidGood", 100, 0.040, 0.70, 30, (0.95, 0.75, 0.55), 0.6),
    _p("SlowBad", 150, 0.060, 0.10, 60, (0.60, 0.40, 0.20), 0.7),
    _p("SlowMid", 175, 0.070, 0.35, 60, (0.90, 0.60, 0.40), 0.8),
    _p("SlowGood", 200, 0.080, 0.70, 60, (1.00, 0.80, 0.60), 0.9),
)
"""The nine executor profiles of the prototype's evaluation, in the YAML's order (the
scenarios' placement indexes refer to this order)."""


def parse_profiles(document: Mapping[str, Any]) -> tuple[SyntheticProfile, ...]:
    """Profiles from a parsed evaluation document (its ``executor_profiles`` list)."""
    entries = document.get("executor_profiles")
    if not isinstance(entries, list) or not entries:
        raise ConfigurationError("document has no non-empty 'executor_profiles' list")
    profiles = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"profile entry is not a mapping: {entry!r:.200}")
        profiles.append(SyntheticProfile.from_mapping(entry))
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"profile names are not unique: {names}")
    return tuple(profiles)


def load_profiles(path: str | os.PathLike[str]) -> tuple[SyntheticProfile, ...]:
    """Read the profiles from an evaluation YAML such as ``prototype_evaluation.yaml``."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigurationError(f"cannot read profiles from {os.fspath(path)!r}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{os.fspath(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(document, Mapping):
        raise ConfigurationError(f"{os.fspath(path)!r} does not hold a mapping")
    return parse_profiles(document)


def profile_by_name(
    name: str, profiles: Iterable[SyntheticProfile] = PROTOTYPE_PROFILES
) -> SyntheticProfile:
    """The profile called ``name`` (case-sensitive); ConfigurationError if there is none."""
    for profile in profiles:
        if profile.name == name:
            return profile
    raise ConfigurationError(f"no synthetic profile named {name!r}")
