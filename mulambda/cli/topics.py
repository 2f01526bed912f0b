"""``mulambda topics``: apply, list and generate the topic catalog."""

from __future__ import annotations

import click

from mulambda.cli.common import load_settings, run_async
from mulambda.kafka import Admin, KafkaConfig
from mulambda.wire.catalog import catalog_copies, load_catalog


@click.group()
def topics() -> None:
    """The topic catalog (mulambda/wire/topics/catalog.yaml)."""


@topics.command()
@click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    default=None,
    help="Override the catalog's replication (production clusters use 3).",
)
def apply(replication_factor: int | None) -> None:
    """Create or update every catalog topic (idempotent)."""
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)

    async def go() -> None:
        async with Admin(KafkaConfig.from_settings(settings, "mulambda-cli")) as admin:
            for change in await admin.apply(catalog, replication=replication_factor):
                detail = f" ({change.detail})" if change.detail else ""
                click.echo(f"{change.action:9} {change.name}{detail}")

    run_async(go())


@topics.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Also topics outside the prefix.")
def list_(show_all: bool) -> None:
    """Show existing topics with partitions and non-default configs."""
    settings = load_settings()
    catalog = load_catalog(settings.topic_prefix)

    async def go() -> None:
        async with Admin(KafkaConfig.from_settings(settings, "mulambda-cli")) as admin:
            described = await admin.describe()
        for name, info in sorted(described.items()):
            known = catalog.by_name(name)
            if known is None and not show_all:
                continue
            configs = ", ".join(f"{k}={v}" for k, v in sorted(info["overrides"].items()))
            label = known.key.value if known else "-"
            click.echo(f"{name}\t{label}\tpartitions={info['partitions']}\t{configs}")

    run_async(go())


@topics.command()
@click.option("--check", is_flag=True, help="Exit 1 if a file is out of date, write nothing.")
def generate(check: bool) -> None:
    """Write schemas/*.json and asyncapi.yaml from the models.

    Into the package's mulambda/wire/topics/ and, in a source checkout, the published
    topics/ copy (which also gets catalog.yaml).
    """
    copies = catalog_copies(load_catalog())
    if check:
        stale = [f"{copy.label}: {rel}" for copy in copies for rel in copy.stale()]
        if stale:
            raise click.ClickException(
                "out of date (run `mulambda topics generate`): " + ", ".join(stale)
            )
        for copy in copies:
            click.echo(f"{copy.label} copy is up to date: {copy.directory}")
        return
    for copy in copies:
        for path in copy.write():
            click.echo(f"wrote {path}")
