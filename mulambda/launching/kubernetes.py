"""The Kubernetes backend: sends :mod:`mulambda.launching.kube_requests` to the API server.

Needs the ``kubernetes`` extra (``kubernetes-asyncio``, for the configuration: in-cluster
service account, a kubeconfig, or an explicit server and token). Every refusal is
translated by :func:`~mulambda.launching.kube_requests.api_error`: 403 (the Role does not
allow it) is a :class:`~mulambda.errors.LaunchForbidden`, not retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mulambda.errors import ConfigurationError, LaunchError, TransportError
from mulambda.launching.kube_requests import (
    MANAGED_KINDS,
    KubeRequest,
    api_error,
    apply_request,
    delete_request,
    get_request,
    is_owned,
    list_request,
    observed_of,
    render_kubernetes,
    uid_of,
)
from mulambda.launching.manifests import LaunchOptions
from mulambda.launching.plan import DesiredObject, ObservedObject
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.wire.events import ExecutorRegistration

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KubeServer:
    """An API server given directly (tests, or a token from elsewhere)."""

    url: str
    token: str
    ca_file: str | None = None


class KubernetesBackend(Lifecycle):
    """Runs launches as StatefulSets and Services in ``options.namespace``.

    Configuration: ``server`` if given, else ``kubeconfig``, else the pod's service
    account (then ``~/.kube/config``).
    """

    name = "kubernetes"

    def __init__(
        self,
        options: LaunchOptions,
        *,
        kubeconfig: str | None = None,
        server: KubeServer | None = None,
        request_timeout_s: float = 10.0,
    ) -> None:
        self.options = options
        self._kubeconfig = kubeconfig
        self._server = server
        self._timeout_s = request_timeout_s
        self._api: Any = None
        self._uids: dict[tuple[str, str], str | None] = {}

    def render(self, launch: ExecutorRegistration) -> list[DesiredObject]:
        """See :func:`~mulambda.launching.kube_requests.render_kubernetes`."""
        return render_kubernetes(launch, self.options)

    async def start(self) -> None:
        """Load the configuration and open the API client."""
        if self._api is not None:
            return
        try:
            from kubernetes_asyncio import client, config
        except ImportError as exc:
            raise ConfigurationError(
                "the Kubernetes launcher needs the kubernetes extra:"
                " pip install 'mulambda[kubernetes]'"
            ) from exc
        configuration = client.Configuration()
        try:
            if self._server is not None:
                configuration.host = self._server.url
                configuration.api_key = {"BearerToken": self._server.token}
                configuration.api_key_prefix = {"BearerToken": "Bearer"}
                configuration.ssl_ca_cert = self._server.ca_file
            elif self._kubeconfig is not None:
                await config.load_kube_config(
                    config_file=self._kubeconfig, client_configuration=configuration
                )
            else:
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except config.ConfigException:
                    await config.load_kube_config(client_configuration=configuration)
        except (config.ConfigException, OSError) as exc:
            raise ConfigurationError(f"no Kubernetes configuration: {exc}") from exc
        self._api = client.ApiClient(configuration)

    async def stop(self) -> None:
        """Close the API client; the workloads keep running (they are the cluster's)."""
        api, self._api = self._api, None
        if api is not None:
            await api.close()

    async def send(self, request: KubeRequest, what: str) -> Any:
        """Send one request; the decoded answer, or the translated error."""
        if self._api is None:
            raise ConfigurationError("the Kubernetes backend is not started")
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await self._api.call_api(
                request.path,
                request.method,
                query_params=list(request.query),
                header_params={"Accept": "application/json", **request.headers},
                body=request.body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=self._timeout_s,
            )
        except ApiException as exc:
            raise api_error(exc.status, exc.reason, exc.body, what) from exc
        except (OSError, TimeoutError) as exc:
            raise TransportError(f"Kubernetes API unreachable ({what}): {exc!r}") from exc

    async def observe(self) -> list[ObservedObject]:
        """The launcher's objects of every managed kind (listed by its label only)."""
        found: list[ObservedObject] = []
        uids: dict[tuple[str, str], str | None] = {}
        for kind in MANAGED_KINDS:
            answer = await self.send(list_request(kind, self.options.namespace), f"list {kind}s")
            for item in (answer or {}).get("items") or []:
                if not is_owned(item):
                    continue  # a label selector answers only these; never trust it blindly
                observed = observed_of(kind, item)
                uids[(kind, observed.ref.name)] = uid_of(item)
                found.append(observed)
        self._uids = uids
        return found

    async def apply(self, desired: DesiredObject) -> None:
        """Server-side apply; an object of that name the launcher does not own is a
        LaunchError and left alone."""
        manifest = desired.body
        ref = desired.ref
        if (ref.kind, ref.name) not in self._uids:
            try:
                existing = await self.send(
                    get_request(ref.kind, self.options.namespace, ref.name), f"read {ref}"
                )
            except LaunchError as exc:
                if exc.status != 404:
                    raise
                existing = None
            if existing is not None and not is_owned(existing):
                raise LaunchError(f"{ref} exists and is not the launcher's: left alone")
        await self.send(apply_request(manifest), f"apply {ref}")

    async def delete(self, observed: ObservedObject) -> None:
        """Delete an owned object; gone already is fine."""
        ref = observed.ref
        if not observed.managed:
            raise LaunchError(f"{ref} is not the launcher's: not deleted")
        uid = self._uids.get((ref.kind, ref.name))
        try:
            await self.send(
                delete_request(ref.kind, self.options.namespace, ref.name, uid), f"delete {ref}"
            )
        except LaunchError as exc:
            if exc.status != 404:
                raise
