"""What every command shares: settings, running a coroutine, one-line failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from mulambda.errors import MulambdaError
from mulambda.runtime.settings import Settings
from mulambda.selection.admission import EndpointAllowList, RegistrationGate

T = TypeVar("T")


def load_settings() -> Settings:
    """Settings from the environment, or a clean exit naming the bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise click.ClickException(f"MULAMBDA_{field.upper()}: {first['msg']}") from exc


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; MulambdaError becomes a one-line message and exit 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # aiokafka logs every failed connection attempt; the one-line reason below says enough
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(coro)
    except MulambdaError as exc:
        raise click.ClickException(exc.reason) from exc


def registration_gate(settings: Settings) -> RegistrationGate:
    """The registration checks the settings ask for (signatures, endpoint allow-list);
    a bad allow-list entry is a usage error with its reason."""
    secret = settings.registration_secret
    try:
        allow = EndpointAllowList.parse(settings.executor_endpoint_allow)
    except MulambdaError as exc:
        raise click.ClickException(exc.reason) from exc
    return RegistrationGate(None if secret is None else secret.get_secret_value().encode(), allow)
