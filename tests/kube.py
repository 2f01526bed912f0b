"""A real Kubernetes API server for tests: kube-apiserver on kine, run by ``deploy/local/infra.sh``.

``infra.sh install`` builds kube-apiserver and kubectl (k8s.io/kubernetes v1.37.2) and kine
into the user's cache and generates the CRDs deploy/k8s uses (Strimzi's, KEDA's);
``infra.sh start kube`` runs them on 127.0.0.1 with RBAC, a static administrator token
and service-account signing keys under ``$MULAMBDA_HOME/kube``. Nothing applied there
runs: there is no kubelet and no controller, only the API, its validation, admission
and authorization.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "deploy" / "local" / "infra.sh"


@dataclass(frozen=True)
class KubeApi:
    """Where the session's API server listens and how to act on it."""

    url: str
    """``https://127.0.0.1:<port>``."""
    ca_file: str
    """The CA that signed the server's certificate (verify TLS with it)."""
    admin_token: str
    """Bearer token of ``mulambda-admin``, a member of ``system:masters``."""
    kubeconfig: Path
    """A kubeconfig for the administrator (server, CA and token)."""
    kubectl_bin: str
    """The kubectl built with the server."""
    crd_dir: Path
    """The CustomResourceDefinitions ``install`` generated (Strimzi, KEDA)."""

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the administrator; with ``check``, a non-zero exit raises
        CalledProcessError (its stderr is the API server's answer)."""
        return subprocess.run(
            [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )

    def service_account_token(self, namespace: str, name: str) -> str:
        """A token for ServiceAccount ``namespace/name`` from the TokenRequest API (the
        account must exist); requests made with it are authorized by RBAC as that account."""
        return self.kubectl(
            "create", "token", name, "-n", namespace, "--duration=1h"
        ).stdout.strip()

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """Write a kubeconfig at ``path`` that authenticates with ``token``; returns it."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.url, "certificate-authority": self.ca_file},
                }
            ],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def install_crds(self) -> None:
        """Create (server-side apply) every CRD in :attr:`crd_dir` and wait until each is
        established, so custom resources of those kinds are accepted."""
        files = sorted(self.crd_dir.glob("*.yaml"))
        if not files:
            raise RuntimeError(f"no CRDs in {self.crd_dir}: run deploy/local/infra.sh install kube")
        args = [a for f in files for a in ("-f", str(f))]
        self.kubectl("apply", "--server-side", "--field-manager=mulambda-tests", *args, timeout=120)
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *args, timeout=90)


def _infra(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INFRA), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def _home() -> Path:
    return Path(os.environ.get("MULAMBDA_HOME", REPO / ".mulambda"))


def kube_installed() -> bool:
    """True when ``infra.sh install kube`` has built everything the server needs."""
    return _infra("installed", "kube").returncode == 0


def running_kube_api() -> Iterator[KubeApi]:
    """Yield the API server of this ``MULAMBDA_HOME`` (``MULAMBDA_KUBE_PORT``), starting it
    when it is not running and stopping it afterwards only in that case."""
    running = _infra("status", "kube").returncode == 0
    if not running:
        started = _infra("start", "kube", timeout=300)
        if started.returncode != 0:
            raise RuntimeError(f"infra.sh start kube failed:\n{started.stderr[-4000:]}")
    try:
        state = _home() / "kube"
        port = (state / "kube.ports").read_text().split()[0]
        yield KubeApi(
            url=f"https://127.0.0.1:{port}",
            ca_file=str(state / "pki" / "ca.crt"),
            admin_token=(state / "admin.token").read_text().strip(),
            kubeconfig=state / "admin.kubeconfig",
            kubectl_bin=_infra("kubectl-bin").stdout.strip(),
            crd_dir=Path(_crd_dir()),
        )
    finally:
        if not running:
            _infra("stop", "kube")


def _crd_dir() -> str:
    out = _infra("crd-dir")
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout.strip()
