"""``mulambda deploy``: the Kubernetes resources generated from MuLambda's definitions."""

from __future__ import annotations

import click

from mulambda.deploy.strimzi import manifest_copy
from mulambda.wire.catalog import load_catalog


@click.group()
def deploy() -> None:
    """Generated parts of deploy/k8s (Strimzi KafkaTopics and KafkaUsers from the catalog)."""


@deploy.command()
@click.option("--check", is_flag=True, help="Exit 1 if a file is out of date, write nothing.")
def generate(check: bool) -> None:
    """Write deploy/k8s/base/kafka-topics.yaml and kafka-users.yaml from the topic catalog
    and its access table (source checkouts only)."""
    copy = manifest_copy(load_catalog())
    if copy is None:
        raise click.ClickException(
            "deploy/k8s/base not found: `mulambda deploy generate` runs from a source checkout"
        )
    if check:
        stale = copy.stale()
        if stale:
            raise click.ClickException(
                "out of date (run `mulambda deploy generate`): " + ", ".join(stale)
            )
        click.echo(f"{copy.label} manifests are up to date: {copy.directory}")
        return
    for path in copy.write():
        click.echo(f"wrote {path}")
