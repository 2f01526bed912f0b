"""The test Kubernetes API server (tests/kube.py) is a real one: TLS with its CA, the static
administrator, RBAC for service-account tokens from the TokenRequest API."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.kube import KubeApi

pytestmark = pytest.mark.integration


def _get(kube: KubeApi, path: str, token: str) -> int:
    # kube.url is https://127.0.0.1:<port>, never a file: or custom scheme.
    url = kube.url + path
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    context = ssl.create_default_context(cafile=kube.ca_file)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_the_administrator_is_a_cluster_admin(kube_api: KubeApi) -> None:
    assert _get(kube_api, "/api/v1/namespaces", kube_api.admin_token) == 200
    assert _get(kube_api, "/api/v1/namespaces", "not-a-token") == 401
    whoami = json.loads(kube_api.kubectl("auth", "whoami", "-o", "json").stdout)
    assert "system:masters" in whoami["status"]["userInfo"]["groups"]


def test_service_account_tokens_get_what_their_role_allows_only(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    namespace = f"rbac-{uuid.uuid4().hex[:6]}"
    kube_api.kubectl("create", "namespace", namespace)
    try:
        kube_api.kubectl("create", "serviceaccount", "reader", "-n", namespace)
        kube_api.kubectl(
            "create", "role", "reader", "-n", namespace, "--verb=get,list", "--resource=configmaps"
        )  # fmt: skip
        kube_api.kubectl(
            "create", "rolebinding", "reader", "-n", namespace, "--role=reader",
            f"--serviceaccount={namespace}:reader",
        )  # fmt: skip
        token = kube_api.service_account_token(namespace, "reader")
        assert _get(kube_api, f"/api/v1/namespaces/{namespace}/configmaps", token) == 200
        assert _get(kube_api, f"/api/v1/namespaces/{namespace}/secrets", token) == 403
        assert _get(kube_api, "/api/v1/namespaces/default/configmaps", token) == 403
        config = kube_api.kubeconfig_for_token(token, tmp_path / "reader.kubeconfig")
        denied = kube_api.kubectl(
            "--kubeconfig", str(config), "create", "configmap", "x", "-n", namespace, check=False
        )
        assert denied.returncode != 0
        assert "forbidden" in denied.stderr
        with pytest.raises(subprocess.CalledProcessError):
            kube_api.service_account_token(namespace, "nobody")
    finally:
        kube_api.kubectl("delete", "namespace", namespace, "--wait=false")
