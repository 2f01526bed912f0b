"""``mulambda models``: upload, list, download and delete saved models in MinIO."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from mulambda.cli.common import load_settings, run_async
from mulambda.models.layout import MAX_VERSION
from mulambda.models.store import ModelStore
from mulambda.runtime.settings import Settings

VERSION = click.IntRange(min=1, max=MAX_VERSION)


def _store(settings: Settings) -> ModelStore:
    return ModelStore(
        settings.minio_endpoint,
        settings.minio_access_key,
        settings.minio_secret_key.get_secret_value(),
        bucket=settings.minio_bucket,
        secure=settings.minio_secure,
    )


@click.group()
def models() -> None:
    """SavedModels in MinIO, under models/{name}/{version}/ of MULAMBDA_MINIO_BUCKET.

    A version is visible once its manifest (sha256 of every file) is written, which
    happens last: an interrupted upload leaves no half version behind.
    """
    # urllib3 logs every retried connection; the one-line error says enough
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


@models.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Model name (letters, digits, . _ : @ -).")
@click.option("--version", type=VERSION, default=None, help="Default: latest + 1.")
@click.option("--force", is_flag=True, help="Replace the version if it exists.")
def upload(path: Path, name: str, version: int | None, force: bool) -> None:
    """Upload the SavedModel directory PATH as NAME / VERSION."""
    settings = load_settings()

    async def go() -> None:
        async with _store(settings) as store:
            manifest = await store.upload(path, name, version, force=force)
        click.echo(
            f"uploaded {manifest.name} version {manifest.version}: "
            f"{len(manifest.files)} files, {manifest.total_size} bytes"
        )

    run_async(go())


@models.command(name="list")
@click.argument("name", required=False)
def list_(name: str | None) -> None:
    """List models with their versions (or only the versions of NAME)."""
    settings = load_settings()

    async def go() -> None:
        async with _store(settings) as store:
            if name is not None:
                found = {name: await store.list_versions(name)}
            else:
                found = await store.list_models()
        found = {n: v for n, v in found.items() if v}
        if not found:
            click.echo(f"no models in bucket {settings.minio_bucket}", err=True)
        for model, versions in sorted(found.items()):
            click.echo(f"{model}\t{','.join(map(str, versions))}")

    run_async(go())


@models.command()
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--version", type=VERSION, default=None, help="Default: the latest.")
@click.option("--force", is_flag=True, help="Replace DEST if it is a non-empty directory.")
def download(name: str, dest: Path, version: int | None, force: bool) -> None:
    """Download NAME (checksums verified) as the SavedModel directory DEST."""
    settings = load_settings()

    async def go() -> None:
        async with _store(settings) as store:
            manifest = await store.download(name, version, dest_dir=dest, overwrite=force)
        click.echo(
            f"downloaded {manifest.name} version {manifest.version} to {dest}: "
            f"{len(manifest.files)} files, {manifest.total_size} bytes"
        )

    run_async(go())


@models.command()
@click.argument("name")
@click.option("--version", type=VERSION, required=True)
def delete(name: str, version: int) -> None:
    """Delete version VERSION of NAME."""
    settings = load_settings()

    async def go() -> None:
        async with _store(settings) as store:
            removed = await store.delete(name, version)
        click.echo(f"deleted {name} version {version} ({removed} objects)")

    run_async(go())
