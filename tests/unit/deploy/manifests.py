"""Rendering deploy/k8s overlays with a real kustomize, and validating what they hold.

kustomize is found as ``$MULAMBDA_KUSTOMIZE``, ``kustomize`` on PATH, a binary cached by an
earlier run, or built once with ``go install`` into the user's cache directory (never
into the repository); ``kubectl kustomize`` is the last resort.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod")
KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5@v5.5.0"
KUBERNETES_VERSION = "1.37.0"
"""Schemas the rendered objects are validated against (kubernetes-validate's newest)."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mulambda" / "kustomize-v5.5.0"


@functools.cache
def kustomize_command() -> list[str] | None:
    """The argv prefix that runs ``kustomize build``; None when none can be had."""
    explicit = os.environ.get("MULAMBDA_KUSTOMIZE")
    if explicit:
        return [explicit, "build"]
    on_path = shutil.which("kustomize")
    if on_path:
        return [on_path, "build"]
    cached = _cache_dir() / "kustomize"
    go = shutil.which("go")
    if not cached.exists() and go is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [go, "install", KUSTOMIZE_MODULE],
            env={**os.environ, "GOBIN": str(cached.parent), "GOFLAGS": "-mod=mod"},
            check=False,
            capture_output=True,
            timeout=900,
        )
    if cached.exists():
        return [str(cached), "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    return None


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects ``kustomize build deploy/k8s/overlays/<overlay>`` emits."""
    command = kustomize_command()
    if command is None:
        raise RuntimeError("no kustomize: neither on PATH nor buildable with go")
    out = subprocess.run(
        [*command, str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """``kind`` objects by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, empty ones dropped."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
