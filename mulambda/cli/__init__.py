"""The ``mulambda`` command: one module per command group, registered here."""

from __future__ import annotations

import click

from mulambda import __version__
from mulambda.cli.clients import clients
from mulambda.cli.companion import companion
from mulambda.cli.executor import executor
from mulambda.cli.executors import executors
from mulambda.cli.infer import infer
from mulambda.cli.infra import infra
from mulambda.cli.models import models
from mulambda.cli.router import router
from mulambda.cli.selector import selector
from mulambda.cli.topics import topics


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """MuLambda: trait-based model selection and inference routing over Kafka.

    Connection settings come from MULAMBDA_* environment variables (see
    mulambda/settings.py); `deploy/local/infra.sh start` prints the local ones.
    """


@cli.command()
def version() -> None:
    """Print the MuLambda version."""
    click.echo(__version__)


cli.add_command(clients)
cli.add_command(companion)
cli.add_command(executor)
cli.add_command(executors)
cli.add_command(infer)
cli.add_command(infra)
cli.add_command(models)
cli.add_command(router)
cli.add_command(selector)
cli.add_command(topics)


def main() -> None:
    """Console entry point."""
    cli(prog_name="mulambda")
