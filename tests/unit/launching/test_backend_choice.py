"""Which backend ``mulambda launcher`` runs, from its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from mulambda.cli.launcher import backend_name, make_backend
from mulambda.launching.kubernetes import KubernetesBackend
from mulambda.launching.local import LocalProcessBackend
from mulambda.runtime.settings import Settings

pytestmark = pytest.mark.unit


def test_auto_is_kubernetes_in_a_pod_or_with_a_kubeconfig_else_local() -> None:
    auto = Settings(launcher_backend="auto")
    assert backend_name(auto, {}) == "local"
    assert backend_name(auto, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "kubernetes"
    assert backend_name(Settings(launcher_kubeconfig="/k"), {}) == "kubernetes"
    assert backend_name(Settings(launcher_backend="local"), {"KUBERNETES_SERVICE_HOST": "x"}) == (
        "local"
    )
    assert backend_name(Settings(launcher_backend="kubernetes"), {}) == "kubernetes"


def test_the_backends_take_their_settings(tmp_path: Path) -> None:
    kube = make_backend(
        Settings(
            launcher_backend="kubernetes",
            launcher_namespace="ml",
            launcher_mulambda_image="img:1",
            launcher_config_map="cm",
            launcher_secret_name="sec",  # noqa: S106 - a Secret's name
        )
    )
    assert isinstance(kube, KubernetesBackend)
    assert (kube.options.namespace, kube.options.mulambda_image) == ("ml", "img:1")
    assert (kube.options.config_map, kube.options.secret_name) == ("cm", "sec")
    local = make_backend(
        Settings(
            launcher_backend="local", launcher_state_dir=str(tmp_path), launcher_local_host="::1"
        )
    )
    assert isinstance(local, LocalProcessBackend)
    assert local.name == "local"
