"""Launching model executors on Kubernetes: a TF Serving pod with a companion sidecar.

The manifest is built by a pure function (``executor_deployment``) so it can be reviewed
(``mulambda executors launch --dry-run``) and tested without a cluster; only applying it
(``apply_deployment``) needs the ``kubernetes`` extra (``kubernetes-asyncio``). The pod:

* an init container runs ``mulambda models download`` to copy ``models/{name}/{version}``
  from MinIO into an ``emptyDir`` — TF Serving 2.7+ cannot read ``s3://`` paths itself;
* the ``tensorflow/serving`` container serves it (``--rest_api_port=8501``), with a
  readiness probe on the model status URL;
* the companion registers the executor with the pod IP as endpoint, heartbeats, probes
  clients, and deregisters when the pod terminates; it talks to Kafka as the
  ``mulambda-companion`` user (password from the Secret Strimzi makes for it, the brokers'
  CA mounted where ``MULAMBDA_KAFKA_SSL_CAFILE`` points in deploy/k8s).

Every container runs as uid 10001 on a read-only root with no capabilities, with requests,
a memory limit and a startup probe (TF Serving's counts while the model loads).

Connection settings reach the pod as ``MULAMBDA_*`` variables from a ConfigMap and a
Secret (names configurable), never inline.

One replica is a Deployment whose companion registers the executor id as given. Several
replicas are a StatefulSet whose pods register ``<id>-<ordinal>`` each (the ordinal from
the ``apps.kubernetes.io/pod-index`` label, Kubernetes 1.28+): every replica is its own
executor, so one replica's deregistration on shutdown leaves the others selectable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mulambda.deploy.strimzi import CLUSTER_CA_SECRET, user_name
from mulambda.errors import ConfigurationError, TransportError
from mulambda.wire.events import ExecutorRegistration

TF_SERVING_REST_PORT = 8501
"""TF Serving's conventional REST port (it serves REST only when given one)."""

COMPANION_HEALTH_PORT = 9188
"""Port of the companion sidecar's /metrics, /healthz and /readyz."""

POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
"""Label the StatefulSet controller puts on each pod: its ordinal."""

REPLICA_SUFFIX = "-$(POD_INDEX)"
"""Appended to a replicated executor's id; Kubernetes expands it from the pod's label."""

KAFKA_CA_MOUNT = "/etc/mulambda/kafka-ca"
"""Where the brokers' CA (``ca.crt``) is mounted in MuLambda containers (deploy/k8s)."""

RUN_AS_USER = 10001
"""The uid of deploy/Dockerfile's user; every executor container runs as it."""

_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
_SMALL = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
_SERVING_DEFAULT = {"requests": {"cpu": "500m", "memory": "1Gi"}}


def replica_executor_ids(executor_id: str, replicas: int) -> list[str]:
    """The executor ids the replicas of a launch register (one each)."""
    if replicas == 1:
        return [executor_id]
    return [f"{executor_id}-{ordinal}" for ordinal in range(replicas)]


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    """Where and how to run an executor pod."""

    namespace: str = "mulambda"
    serving_image: str = "tensorflow/serving:2.18.0"
    mulambda_image: str = "ghcr.io/mulambda/mulambda:0.1.0"
    config_map: str = "mulambda-config"
    secret_name: str = "mulambda-secrets"  # noqa: S105 - the name of a Secret, not a secret
    replicas: int = 1
    cpu: str | None = None
    memory: str | None = None
    ordinal_ids: bool = False
    """Register ``<id>-<ordinal>`` even for one replica (a StatefulSet whatever the count):
    the launcher's choice, so scaling never renames or replaces the executors."""


def workload_name(executor_id: str) -> str:
    """Name of the workload (and Service) running ``executor_id``."""
    # Kubernetes names are DNS labels: lowercase alphanumerics and '-', at most 63.
    # Executor ids start with an alphanumeric (events.Identifier), so this is never empty.
    cleaned = "".join(c if c.isalnum() else "-" for c in executor_id.lower()).strip("-")
    return f"mulambda-executor-{cleaned}"[:63].rstrip("-")


def companion_args(
    reg: ExecutorRegistration,
    executor_id: str,
    *,
    endpoint: str = f"http://$(POD_IP):{TF_SERVING_REST_PORT}",
    status_endpoint: str | None = f"http://127.0.0.1:{TF_SERVING_REST_PORT}",
    node: str = "$(NODE_NAME)",
) -> list[str]:
    """``mulambda companion`` arguments registering ``executor_id`` with ``reg``'s model,
    traits and accuracy at ``endpoint`` (by default the pod's, for the sidecar)."""
    args = [
        "companion",
        "--executor-id", executor_id,
        "--endpoint", endpoint,
        "--model-name", reg.model_name,
        "--model-type", reg.traits.model_type,
        "--input-format", reg.traits.input_format,
        "--output-format", reg.traits.output_format,
        "--accuracy", repr(reg.accuracy),
        "--model-data-delay-ms-per-element", repr(reg.model_data_delay_ms_per_element),
        "--zone", reg.zone,
        "--node", node,
        "--heartbeat-interval", repr(reg.heartbeat_interval_s),
    ]  # fmt: skip
    if status_endpoint is not None:
        args += ["--status-endpoint", status_endpoint]
    if reg.model_version is not None:
        args += ["--model-version", str(reg.model_version)]
    return args


def executor_deployment(
    reg: ExecutorRegistration, options: LaunchOptions | None = None
) -> dict[str, Any]:
    """The apps/v1 workload running ``reg``'s model with its companion.

    A Deployment for one replica; a StatefulSet (one executor id per pod) for several.
    """
    options = options or LaunchOptions()
    replicated = options.replicas > 1 or options.ordinal_ids
    name = workload_name(reg.executor_id)
    labels = {"app.kubernetes.io/name": "mulambda-executor", "mulambda.dev/executor": name}
    env_from = [
        {"configMapRef": {"name": options.config_map}},
        {"secretRef": {"name": options.secret_name}},
    ]
    # TF Serving wants a numeric version folder; an unpinned model (the latest in MinIO)
    # is served as version 1.
    folder = str(reg.model_version) if reg.model_version is not None else "1"
    fetch_args = ["models", "download", reg.model_name, f"/models/{reg.model_name}/{folder}"]
    if reg.model_version is not None:
        fetch_args += ["--version", folder]
    resources: dict[str, Any] = {}
    requests = {k: v for k, v in (("cpu", options.cpu), ("memory", options.memory)) if v}
    if requests:
        resources = {"requests": requests}
    downward = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    companion_env = [
        # The sidecar's probes dial the pod IP, so its health server binds every interface.
        {"name": "MULAMBDA_METRICS_HOST", "value": "0.0.0.0"},  # noqa: S104
        {"name": "MULAMBDA_METRICS_PORT", "value": str(COMPANION_HEALTH_PORT)},
    ]
    executor_id = reg.executor_id
    if replicated:
        pod_index = {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}}
        downward.append({"name": "POD_INDEX", "valueFrom": pod_index})
        executor_id += REPLICA_SUFFIX
    spec: dict[str, Any] = {
        "replicas": options.replicas,
        "selector": {"matchLabels": labels},
    }
    if replicated:
        # Pods are independent executors: start and stop them all at once, not in order.
        spec["serviceName"] = name
        spec["podManagementPolicy"] = "Parallel"
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet" if replicated else "Deployment",
        "metadata": {"name": name, "namespace": options.namespace, "labels": labels},
        "spec": {
            **spec,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # The companion's deregistration needs a moment after SIGTERM.
                    "terminationGracePeriodSeconds": 30,
                    "volumes": [{"name": "models", "emptyDir": {}}],
                    "initContainers": [
                        {
                            "name": "fetch-model",
                            "image": options.mulambda_image,
                            "args": fetch_args,
                            "envFrom": env_from,
                            "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                        }
                    ],
                    "containers": [
                        {
                            "name": "tfserving",
                            "image": options.serving_image,
                            "args": [
                                f"--rest_api_port={TF_SERVING_REST_PORT}",
                                f"--model_name={reg.model_name}",
                                f"--model_base_path=/models/{reg.model_name}",
                            ],
                            "ports": [{"name": "rest", "containerPort": TF_SERVING_REST_PORT}],
                            "readinessProbe": {
                                "httpGet": {
                                    "path": f"/v1/models/{reg.model_name}",
                                    "port": TF_SERVING_REST_PORT,
                                },
                                "periodSeconds": 5,
                            },
                            "resources": resources,
                            "volumeMounts": [
                                {"name": "models", "mountPath": "/models", "readOnly": True}
                            ],
                        },
                        {
                            "name": "companion",
                            "image": options.mulambda_image,
                            "args": companion_args(reg, executor_id),
                            "env": downward + companion_env,
                            "envFrom": env_from,
                            "ports": [{"name": "health", "containerPort": COMPANION_HEALTH_PORT}],
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": COMPANION_HEALTH_PORT},
                                "periodSeconds": 10,
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", "port": COMPANION_HEALTH_PORT},
                                "periodSeconds": 5,
                            },
                        },
                    ],
                },
            },
        },
    }
    _harden(manifest["spec"]["template"]["spec"])
    return manifest


def _harden(pod: dict[str, Any]) -> None:
    """Non-root, read-only, bounded containers with startup probes; the companion's Kafka
    user and the brokers' CA (optional: a cluster without SASL/TLS has neither Secret)."""
    pod["automountServiceAccountToken"] = False
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["volumes"] += [
        # Read-only roots: Python and TF Serving may still want a scratch directory.
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {
            "name": "kafka-ca",
            "secret": {
                "secretName": CLUSTER_CA_SECRET,
                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                "optional": True,
            },
        },
    ]
    tmp = {"name": "tmp", "mountPath": "/tmp"}  # noqa: S108 - a pod-private emptyDir
    kafka_ca = {"name": "kafka-ca", "mountPath": KAFKA_CA_MOUNT, "readOnly": True}
    (fetch,) = pod["initContainers"]
    serving, companion = pod["containers"]
    for container in (fetch, serving, companion):
        container["securityContext"] = dict(_CONTAINER_SECURITY)
        container["volumeMounts"] = [*container.get("volumeMounts", []), tmp]
    fetch["resources"] = _SMALL
    companion["resources"] = _SMALL
    companion["volumeMounts"].append(kafka_ca)
    resources = serving.get("resources") or dict(_SERVING_DEFAULT)
    if "memory" in resources["requests"]:
        resources["limits"] = {"memory": resources["requests"]["memory"]}
    serving["resources"] = resources
    # Loading a large model takes minutes; readiness and liveness count after it.
    serving["startupProbe"] = {
        "httpGet": dict(serving["readinessProbe"]["httpGet"]),
        "periodSeconds": 5,
        "failureThreshold": 120,
    }
    companion["startupProbe"] = {
        "httpGet": {"path": "/healthz", "port": COMPANION_HEALTH_PORT},
        "periodSeconds": 2,
        "failureThreshold": 60,
    }
    user = user_name("companion")
    companion["env"] = [
        *companion["env"],
        {"name": "MULAMBDA_KAFKA_SASL_USERNAME", "value": user},
        {
            "name": "MULAMBDA_KAFKA_SASL_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": user, "key": "password", "optional": True}},
        },
    ]


def executor_service(
    reg: ExecutorRegistration, options: LaunchOptions | None = None
) -> dict[str, Any]:
    """The headless Service a StatefulSet of ``reg`` names (stable pod DNS names)."""
    options = options or LaunchOptions()
    name = workload_name(reg.executor_id)
    labels = {"app.kubernetes.io/name": "mulambda-executor", "mulambda.dev/executor": name}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": options.namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "selector": labels,
            "ports": [{"name": "rest", "port": TF_SERVING_REST_PORT, "targetPort": "rest"}],
        },
    }


async def apply_deployment(manifest: dict[str, Any], *, kubeconfig: str | None = None) -> str:
    """Create the Deployment or StatefulSet, or replace it when it exists; returns
    ``created``/``updated``.

    Needs the ``kubernetes`` extra; without it, a ConfigurationError says how to install it.
    """
    try:
        from kubernetes_asyncio import client, config
        from kubernetes_asyncio.client.exceptions import ApiException
    except ImportError as exc:
        raise ConfigurationError(
            "launching executors on Kubernetes needs the kubernetes extra:"
            " pip install 'mulambda[kubernetes]'"
        ) from exc

    try:
        if kubeconfig is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                await config.load_kube_config()
        else:
            await config.load_kube_config(config_file=kubeconfig)
    except (config.ConfigException, OSError) as exc:
        raise ConfigurationError(f"no Kubernetes configuration: {exc}") from exc
    meta = manifest["metadata"]
    async with client.ApiClient() as api:
        apps = client.AppsV1Api(api)
        if manifest["kind"] == "StatefulSet":
            create = apps.create_namespaced_stateful_set
            replace = apps.replace_namespaced_stateful_set
        else:
            create = apps.create_namespaced_deployment
            replace = apps.replace_namespaced_deployment
        try:
            await create(meta["namespace"], manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise TransportError(
                    f"Kubernetes refused the {manifest['kind']}: {exc.status} {exc.reason}",
                    retriable=exc.status is not None and exc.status >= 500,
                ) from exc
            await replace(meta["name"], meta["namespace"], manifest)
            return "updated"
        except OSError as exc:
            raise TransportError(f"Kubernetes API unreachable: {exc}") from exc
    return "created"
