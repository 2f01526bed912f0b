"""``mulambda launcher``: run the launch requests on the registrations topic until SIGTERM.

See :mod:`mulambda.launching.worker`. The backend comes from ``MULAMBDA_LAUNCHER_BACKEND``
(``auto``: Kubernetes inside a pod or with ``MULAMBDA_LAUNCHER_KUBECONFIG``, else local
processes); the other ``MULAMBDA_LAUNCHER_*`` settings are in
:mod:`mulambda.runtime.settings`.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import click

from mulambda.cli.common import load_settings, registration_gate
from mulambda.kafka import KafkaConfig
from mulambda.launching.backend import LaunchBackend
from mulambda.launching.manifests import LaunchOptions
from mulambda.launching.worker import Launcher
from mulambda.runtime.observability import configure_logging
from mulambda.runtime.runner import Service, run
from mulambda.runtime.settings import Settings
from mulambda.wire.catalog import load_catalog


def backend_name(settings: Settings, environ: dict[str, str] | None = None) -> str:
    """``kubernetes`` or ``local``, resolving ``auto`` (see the module docstring)."""
    if settings.launcher_backend != "auto":
        return settings.launcher_backend
    env = os.environ if environ is None else environ
    in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST"))
    return "kubernetes" if in_cluster or settings.launcher_kubeconfig else "local"


def make_backend(settings: Settings) -> LaunchBackend:
    """The backend the settings ask for."""
    if backend_name(settings) == "kubernetes":
        from mulambda.launching.kubernetes import KubernetesBackend

        return KubernetesBackend(
            LaunchOptions(
                namespace=settings.launcher_namespace,
                mulambda_image=settings.launcher_mulambda_image,
                config_map=settings.launcher_config_map,
                secret_name=settings.launcher_secret_name,
            ),
            kubeconfig=settings.launcher_kubeconfig,
            request_timeout_s=settings.kafka_request_timeout_s,
        )
    from mulambda.launching.local import LocalProcessBackend

    state = settings.launcher_state_dir or tempfile.mkdtemp(prefix="mulambda-launcher-")
    return LocalProcessBackend(
        Path(state),
        host=settings.launcher_local_host,
        node=socket.gethostname(),
        stop_grace_s=max(settings.shutdown_grace_s, 1.0),
    )


@click.command(name="launcher")
def launcher() -> None:
    """Create, update and delete executors as launch requests on Kafka say."""
    settings = load_settings()
    configure_logging(settings.log_level)

    gate = registration_gate(settings)

    async def factory() -> Service:
        return Launcher(
            KafkaConfig.from_settings(settings, f"mulambda-launcher-{socket.gethostname()}"),
            load_catalog(settings.topic_prefix),
            make_backend(settings),
            group_id=settings.launcher_group_id,
            resync_interval_s=settings.launcher_resync_interval_s,
            health_host=settings.metrics_host,
            health_port=settings.metrics_port,
            shutdown_grace_s=settings.shutdown_grace_s,
            registrations=gate,
        )

    sys.exit(run(factory, grace_s=settings.shutdown_grace_s + 10.0))
