"""``mulambda infra``: the local Kafka, Redis and MinIO of deploy/local/infra.sh, and its test
Kubernetes API server (``kube``, started only when named)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

INFRA_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "infra.sh"

COMPONENTS = click.Choice(["kafka", "redis", "minio", "kube"])


def _infra(action: str, components: tuple[str, ...]) -> None:
    if not INFRA_SCRIPT.exists():
        raise click.ClickException(f"{INFRA_SCRIPT} not found: run from a source checkout")
    result = subprocess.run(["bash", str(INFRA_SCRIPT), action, *components], check=False)  # noqa: S603,S607
    if result.returncode:
        raise SystemExit(result.returncode)


@click.group()
def infra() -> None:
    """Install, start, inspect and stop the local infrastructure (deploy/local/)."""


@infra.command()
@click.argument("components", nargs=-1, type=COMPONENTS)
def install(components: tuple[str, ...]) -> None:
    """Fetch Kafka jars (Maven), build MinIO, kube-apiserver and kine (Go), install Redis
    (apt), generate the CRDs deploy/k8s uses."""
    _infra("install", components)


@infra.command()
@click.argument("components", nargs=-1, type=COMPONENTS)
def start(components: tuple[str, ...]) -> None:
    """Start (installing first if needed) and wait until ready."""
    _infra("start", components)


@infra.command()
@click.argument("components", nargs=-1, type=COMPONENTS)
def status(components: tuple[str, ...]) -> None:
    """One line per component; exit 3 unless all are running."""
    _infra("status", components)


@infra.command()
@click.argument("components", nargs=-1, type=COMPONENTS)
def stop(components: tuple[str, ...]) -> None:
    """Stop what `start` started (by pid)."""
    _infra("stop", components)
