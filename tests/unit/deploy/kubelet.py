"""What kubelet does to a container spec before it runs: env from the downward API, and
``$(VAR)`` expansion in args. Lets tests run the exact commands a manifest would."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(
    container: Mapping[str, Any],
    fields: Mapping[str, str],
    secrets: Mapping[tuple[str, str], str] | None = None,
) -> dict[str, str]:
    """The container's ``env`` with ``fieldRef``s resolved from ``fields`` (path → value)
    and ``secretKeyRef``s from ``secrets`` ((Secret name, key) → value).

    A fieldRef that ``fields`` lacks, or a required secretKeyRef that ``secrets`` lacks,
    raises KeyError: the pod would not start either. An optional one is left unset.
    """
    env: dict[str, str] = {}
    secrets = secrets or {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand(str(entry["value"]), env)
        elif "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            if (ref["name"], ref["key"]) in secrets or not ref.get("optional", False):
                env[entry["name"]] = secrets[ref["name"], ref["key"]]
        else:
            env[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names replaced, ``$$`` an escaped ``$``,
    undefined references left as written."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _REFERENCE.sub(one, text)


def container_args(container: Mapping[str, Any], fields: Mapping[str, str]) -> list[str]:
    """The argv kubelet passes to the container's entrypoint."""
    env = container_env(container, fields)
    return [expand(str(arg), env) for arg in container.get("args", [])]
