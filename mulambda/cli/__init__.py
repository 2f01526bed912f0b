"""The ``mulambda`` command: one module per command group, loaded when used.

Groups are imported lazily: a worker's start-up (and so its restart-to-ready time)
should not pay for importing every other command's dependencies (minio, TensorFlow
glue, the Kubernetes client).
"""

from __future__ import annotations

import importlib

import click

from mulambda import __version__

COMMANDS: dict[str, str] = {
    "acls": "mulambda.cli.acls:acls",
    "clients": "mulambda.cli.clients:clients",
    "companion": "mulambda.cli.companion:companion",
    "deploy": "mulambda.cli.deploy:deploy",
    "executor": "mulambda.cli.executor:executor",
    "executors": "mulambda.cli.executors:executors",
    "infer": "mulambda.cli.infer:infer",
    "infra": "mulambda.cli.infra:infra",
    "launcher": "mulambda.cli.launcher:launcher",
    "models": "mulambda.cli.models:models",
    "router": "mulambda.cli.router:router",
    "selector": "mulambda.cli.selector:selector",
    "topics": "mulambda.cli.topics:topics",
}
"""Command name → ``module:attribute`` of its click command."""


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module_name, _, attribute = COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{COMMANDS[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """MuLambda: trait-based model selection and inference routing over Kafka.

    Connection settings come from MULAMBDA_* environment variables (see
    mulambda/runtime/settings.py); `deploy/local/infra.sh start` prints the local ones.
    """


@cli.command()
def version() -> None:
    """Print the MuLambda version."""
    click.echo(__version__)


def main() -> None:
    """Console entry point."""
    cli(prog_name="mulambda")
