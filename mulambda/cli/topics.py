"""``mulambda topics``: apply, list and generate the topic catalog."""

from __future__ import annotations

import click

from mulambda.cli.common import load_settings, run_async
from mulambda.kafka import Admin, KafkaConfig
from mulambda.wire.catalog import CATALOG_DIR, load_catalog, write_generated


@click.group()
def topics() -> None:
    """The topic catalog in topics/catalog.yaml."""


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
@click.option("--check", is_flag=True, help="Exit 1 if the files differ, write nothing.")
def generate(check: bool) -> None:
    """Write topics/schemas/*.json and topics/asyncapi.yaml from the models."""
    catalog = load_catalog()
    if check:
        from mulambda.wire.catalog import generated_files

        stale = [
            rel
            for rel, text in generated_files(catalog).items()
            if not (CATALOG_DIR / rel).exists() or (CATALOG_DIR / rel).read_text() != text
        ]
        if stale:
            raise click.ClickException("out of date: " + ", ".join(stale))
        click.echo("generated files are up to date")
        return
    for path in write_generated(catalog):
        click.echo(f"wrote {path}")
