"""``mulambda executor serve``: a local stand-in for the TF Serving container."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import click

from mulambda.cli.common import load_settings
from mulambda.emulator import (
    ExecutorServer,
    SavedModelModel,
    ServedModel,
    saved_model_versions,
    synthetic_models,
)
from mulambda.emulator.profiles import PROTOTYPE_PROFILES, SyntheticProfile, load_profiles
from mulambda.errors import MulambdaError
from mulambda.models.store import ModelStore
from mulambda.runtime.observability import configure_logging
from mulambda.runtime.runner import UntilStopped, serve


@click.group()
def executor() -> None:
    """Model executors (TF Serving REST API)."""


def _profiles(names: tuple[str, ...], profiles_file: Path | None) -> list[SyntheticProfile]:
    known = {
        p.name: p for p in (load_profiles(profiles_file) if profiles_file else PROTOTYPE_PROFILES)
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.BadParameter(
            f"unknown profile(s) {', '.join(unknown)}; known: {', '.join(known)}",
            param_hint="--synthetic",
        )
    return [known[n] for n in names]


def _parse_model_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition(":")
    if version and not version.isdigit():
        raise click.BadParameter(f"{ref!r}: version must be digits", param_hint="--model")
    return name, int(version) if version else None


@executor.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8501, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--synthetic",
    "synthetic",
    multiple=True,
    metavar="PROFILE",
    help="Serve a synthetic model of the prototype (FastBad, MidOK, SlowGood, ...).",
)
@click.option(
    "--profiles-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML with executor_profiles (default: the prototype's nine).",
)
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Multiplies synthetic delays (0.1 = ten times faster).",
)
@click.option("--seed", type=int, default=None, help="Seed synthetic jitter for repeatable runs.")
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME[:VERSION]",
    help="Pull a SavedModel from MinIO (latest version unless given) and serve it.",
)
@click.option(
    "--saved-model",
    "saved",
    multiple=True,
    metavar="NAME=BASE_PATH",
    help="Serve a local TF Serving model base path (numeric version folders).",
)
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where pulled models are kept (default: a temporary directory).",
)
@click.option(
    "--network-delay-ms",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Extra delay per request, simulating this node's network distance.",
)
def serve_command(
    host: str,
    port: int,
    synthetic: tuple[str, ...],
    profiles_file: Path | None,
    time_scale: float,
    seed: int | None,
    models: tuple[str, ...],
    saved: tuple[str, ...],
    model_dir: Path | None,
    network_delay_ms: float,
) -> None:
    """Answer the TF Serving REST API on HOST:PORT until SIGTERM."""
    if not (synthetic or models or saved):
        raise click.UsageError("give at least one --synthetic, --model or --saved-model")
    served: dict[str, ServedModel | list[ServedModel]] = dict(
        synthetic_models(_profiles(synthetic, profiles_file), time_scale=time_scale, seed=seed)
    )
    for entry in saved:
        name, _, base = entry.partition("=")
        if not base:
            raise click.BadParameter(
                f"{entry!r}: expected NAME=BASE_PATH", param_hint="--saved-model"
            )
        try:
            served[name] = list(saved_model_versions(base))
        except MulambdaError as exc:
            raise click.ClickException(exc.reason) from exc
    settings = load_settings()
    configure_logging(settings.log_level)
    scratch = None if model_dir else tempfile.TemporaryDirectory(prefix="mulambda-models-")
    workdir = model_dir or Path(scratch.name)  # type: ignore[union-attr]

    async def main() -> int:
        if models:
            store = ModelStore(
                settings.minio_endpoint,
                settings.minio_access_key,
                settings.minio_secret_key.get_secret_value(),
                bucket=settings.minio_bucket,
                secure=settings.minio_secure,
            )
            async with store:
                for ref in models:
                    name, version = _parse_model_ref(ref)
                    manifest = await store.get_manifest(name, version)
                    dest = workdir / name / str(manifest.version)
                    # Always verified against the manifest: a version re-uploaded with
                    # --force must not be served stale from an earlier download.
                    await store.download(name, manifest.version, dest_dir=dest, overwrite=True)
                    served[name] = SavedModelModel(dest, manifest.version)
        server = ExecutorServer(host, port, served, network_delay_ms)
        return await serve(UntilStopped(server), grace_s=settings.shutdown_grace_s)

    try:
        code = asyncio.run(main())
    except MulambdaError as exc:
        raise click.ClickException(exc.reason) from exc
    finally:
        if scratch is not None:
            scratch.cleanup()
    raise SystemExit(code)
