"""A secured private broker (SASL_SSL, SCRAM users per role, ACLs from the catalog),
started once per session through ``deploy/local/infra.sh`` on free ports; the shared
plaintext broker is never touched."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from mulambda.bench.infra import PrivateInfra
from mulambda.kafka import Admin
from mulambda.wire.catalog import Catalog, load_catalog

BROKER_USER = "mulambda-broker"
"""The secured broker's super user (deploy/local/infra.sh)."""


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def secured() -> AsyncIterator[PrivateInfra]:
    async with PrivateInfra(("kafka",), kafka_security="sasl_ssl") as infra:
        yield infra


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def secured_catalog(secured: PrivateInfra) -> Catalog:
    """The catalog's topics (no prefix: infra.sh applied the ACLs for that), created by
    the administrator role: its ACLs must allow it."""
    catalog = load_catalog()
    async with Admin(secured.kafka_as("administrator")) as admin:
        await admin.apply(catalog)
    return catalog
