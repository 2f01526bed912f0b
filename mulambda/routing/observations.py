"""Observed calls, batched: one record per executor per window instead of one per call.

The router tells the selector how long each call took (it learns service times from
that) and when a dispatch it counted as load is over (a failed call, a leased slot not
used). :class:`ObservationBatcher` gathers those per executor, in the order they
happen, into :class:`~mulambda.wire.events.ObservedLatencies` records: the worker sends
what :meth:`~ObservationBatcher.drain` gives at most once per window, and a batch that
is full at once. The selector applies a batch's samples one by one, as it would the
same calls' separate records, so what it learns does not depend on the batching.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mulambda.wire.events import MAX_OBSERVED_SAMPLES, ObservedLatencies, ObservedSample


@dataclass(slots=True)
class _Batch:
    samples: list[ObservedSample] = field(default_factory=list)
    released: int = 0


class ObservationBatcher:
    """Observed calls and released slots per executor, until drained (module doc)."""

    def __init__(self, *, router_id: str, max_samples: int = MAX_OBSERVED_SAMPLES) -> None:
        self.router_id = router_id
        self.max_samples = max(1, min(max_samples, MAX_OBSERVED_SAMPLES))
        self._batches: dict[str, _Batch] = {}

    def __bool__(self) -> bool:
        """Whether anything waits to be sent."""
        return bool(self._batches)

    def observed(
        self,
        executor_id: str,
        client_id: str,
        latency_ms: float,
        input_size: int | None,
        *,
        failed: bool = False,
    ) -> ObservedLatencies | None:
        """One call to ``executor_id`` ended after ``latency_ms``; returns the executor's
        batch when that filled it (send it now), else None."""
        batch = self._batches.setdefault(executor_id, _Batch())
        batch.samples.append(
            ObservedSample(
                client_id=client_id,
                latency_ms=max(0.0, latency_ms),
                input_size=input_size,
                failed=failed,
            )
        )
        if len(batch.samples) < self.max_samples:
            return None
        del self._batches[executor_id]
        return self._record(executor_id, batch)

    def released(self, executor_id: str, count: int) -> None:
        """``count`` leased dispatches to ``executor_id`` will not be made."""
        if count > 0:
            self._batches.setdefault(executor_id, _Batch()).released += count

    def drain(self) -> list[ObservedLatencies]:
        """Every executor's batch, oldest executor first; the batcher is empty after."""
        batches, self._batches = self._batches, {}
        return [self._record(executor_id, batch) for executor_id, batch in batches.items()]

    def _record(self, executor_id: str, batch: _Batch) -> ObservedLatencies:
        return ObservedLatencies(
            executor_id=executor_id,
            router_id=self.router_id,
            samples=batch.samples,
            released=batch.released,
        )


__all__ = ["ObservationBatcher"]
