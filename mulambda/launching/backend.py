"""What the launcher worker needs of a backend (Kubernetes, local processes)."""

from __future__ import annotations

from typing import Protocol

from mulambda.launching.plan import DesiredObject, ObservedObject
from mulambda.wire.events import ExecutorRegistration


class LaunchBackend(Protocol):
    """Renders launch requests into objects, and runs, lists and removes what it owns."""

    name: str
    """``kubernetes`` or ``local`` (in logs and status details)."""

    def render(self, launch: ExecutorRegistration) -> list[DesiredObject]:
        """The objects ``launch`` needs; LaunchError for a request it cannot run."""

    async def observe(self) -> list[ObservedObject]:
        """The objects the backend runs that carry the launcher's ownership mark (plus
        none it does not own: those it never lists)."""

    async def apply(self, desired: DesiredObject) -> None:
        """Create or update one object; MulambdaError (``retriable``) when refused."""

    async def delete(self, observed: ObservedObject) -> None:
        """Remove one owned object; a missing one is not an error."""

    async def start(self) -> None:
        """Connect (or prepare); ConfigurationError when it cannot work."""

    async def stop(self) -> None:
        """Release what ``start`` acquired; idempotent."""
