"""deploy/k8s overlays, rendered by a real kustomize and validated against Kubernetes'
schemas (kubernetes-validate, strict), plus the properties the schemas cannot see."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import click
import pytest

from mulambda.cli import cli
from mulambda.deploy import strimzi
from mulambda.launching.manifests import (
    COMPANION_HEALTH_PORT,
    TF_SERVING_REST_PORT,
    LaunchOptions,
    executor_deployment,
)
from mulambda.runtime.settings import Settings
from mulambda.security.acls import DEFAULT_ROUTER_GROUP, ROLES, role_acls
from mulambda.wire.catalog import Topic, load_catalog
from tests.factories import registration
from tests.unit.deploy.manifests import (
    DEPLOY,
    KUBERNETES_VERSION,
    OVERLAYS,
    by_kind,
    documents,
    kustomize_command,
    render,
)

pytestmark = pytest.mark.unit

WORKERS = ("selector", "router")
WORKLOADS = ("Deployment", "StatefulSet")
CUSTOM_KINDS = {
    "Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ScaledObject", "TriggerAuthentication",
}  # fmt: skip
"""Kinds of Strimzi and KEDA: kubernetes-validate has no schema for them; the API server test
(tests/integration/deploy/test_k8s_apply.py) checks them against the real CRDs."""


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    if kustomize_command() is None:
        pytest.skip("no kustomize on PATH and no go to build it (sigs.k8s.io/kustomize v5)")
    overlay = str(request.param)
    return overlay, render(overlay)


def _validator() -> Any:
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (dev extra)"
    )


def _pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in WORKLOADS:
        for workload in by_kind(objects, kind).values():
            yield workload["metadata"]["name"], workload["spec"]["template"]["spec"]


def _launched(replicas: int) -> tuple[str, dict[str, Any]]:
    manifest = executor_deployment(registration("wine-1"), LaunchOptions(replicas=replicas))
    return f"launched x{replicas}", manifest["spec"]["template"]["spec"]


def _every_pod_spec(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The rendered workloads' pod specs and those `mulambda executors launch` applies."""
    yield from _pod_specs(objects)
    yield _launched(1)
    yield _launched(3)


def _config(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(by_kind(objects, "ConfigMap")["mulambda-config"]["data"])


def test_every_rendered_object_is_valid_for_kubernetes(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    kv = _validator()
    _, objects = rendered
    kinds = {o["kind"] for o in objects}
    assert kinds == {
        "Namespace", "ConfigMap", "Deployment", "StatefulSet", "Service", "PodDisruptionBudget",
        "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", *CUSTOM_KINDS,
    }  # fmt: skip
    for obj in objects:
        if obj["kind"] not in CUSTOM_KINDS:
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["metadata"].get("namespace", "mulambda") == "mulambda"


def test_the_validator_rejects_what_it_should(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    kv = _validator()
    _, objects = rendered
    broken = copy.deepcopy(by_kind(objects, "Deployment")["mulambda-router"])
    broken["spec"]["replicas"] = "3"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = copy.deepcopy(by_kind(objects, "Deployment")["mulambda-router"])
    unknown["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(unknown, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("replicas", [1, 3])
def test_launched_executor_workloads_are_valid_for_kubernetes(replicas: int) -> None:
    kv = _validator()
    manifest = executor_deployment(registration("wine-1"), LaunchOptions(replicas=replicas))
    kv.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_workers_run_real_commands_and_probe_where_they_bind(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    config = _config(objects)
    # Kubelet dials the pod IP: a loopback bind (the local default) fails every probe.
    assert config["MULAMBDA_METRICS_HOST"] in {"0.0.0.0", "::"}  # noqa: S104
    port = int(config["MULAMBDA_METRICS_PORT"])
    assert isinstance(cli, click.Group)
    for worker in WORKERS:
        spec = by_kind(objects, "Deployment")[f"mulambda-{worker}"]["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        command = cli.get_command(click.Context(cli), container["args"][0])
        assert command is not None
        assert container["args"][1] in {o for p in command.params for o in p.opts}
        (metrics,) = container["ports"]
        assert metrics["containerPort"] == port
        probes = {k: container[k]["httpGet"] for k in container if k.endswith("Probe")}
        assert probes == {
            "startupProbe": {"path": "/healthz", "port": "metrics"},
            "livenessProbe": {"path": "/healthz", "port": "metrics"},
            "readinessProbe": {"path": "/readyz", "port": "metrics"},
        }
        assert metrics["name"] == "metrics"


def test_workers_are_non_root_read_only_and_bounded(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for name, spec in _every_pod_spec(objects):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        # Only the launcher talks to the Kubernetes API, as its own ServiceAccount.
        launcher = name == "mulambda-launcher"
        assert spec["automountServiceAccountToken"] is launcher, name
        assert spec.get("serviceAccountName") == ("mulambda-launcher" if launcher else None)
        for container in spec.get("initContainers", []) + spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name


def _replica_range(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> tuple[int, int]:
    """(min, max) replicas: a KEDA ScaledObject's when one targets the Deployment (and then
    the Deployment must leave ``replicas`` to its HPA), else the fixed count."""
    name = deployment["metadata"]["name"]
    scalers = [
        o for o in by_kind(objects, "ScaledObject").values()
        if o["spec"]["scaleTargetRef"]["name"] == name
    ]  # fmt: skip
    if not scalers:
        return deployment["spec"]["replicas"], deployment["spec"]["replicas"]
    (scaler,) = scalers
    assert "replicas" not in deployment["spec"], name
    return scaler["spec"]["minReplicaCount"], scaler["spec"]["maxReplicaCount"]


def test_each_worker_has_a_disruption_budget_and_spreads(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = rendered
    budgets = by_kind(objects, "PodDisruptionBudget")
    for worker in WORKERS:
        deployment = by_kind(objects, "Deployment")[f"mulambda-{worker}"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (budget,) = [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert budget["spec"]["maxUnavailable"] == 1
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
        for constraint in spread:
            assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        hard = {c["topologyKey"] for c in spread if c["whenUnsatisfiable"] == "DoNotSchedule"}
        replicas = _replica_range(objects, deployment)
        if overlay == "dev":
            assert replicas[0] == 1
            assert not hard  # one node: a hard spread would leave pods pending
        else:
            assert replicas[0] > 1
            assert hard == {"kubernetes.io/hostname"}
            assert "topology.kubernetes.io/zone" in {c["topologyKey"] for c in spread}


def _secret_refs(spec: dict[str, Any]) -> set[str]:
    """Names of the Secrets a pod spec reads (envFrom, secretKeyRef, volumes)."""
    names = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for container in spec.get("initContainers", []) + spec["containers"]:
        names |= {r["secretRef"]["name"] for r in container.get("envFrom", []) if "secretRef" in r}
        names |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
    return names


def test_secrets_are_referenced_never_written(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    assert not by_kind(objects, "Secret")
    # Secrets made outside git (README) or by Strimzi (a KafkaUser's, the cluster CA).
    made_by_strimzi = {*by_kind(objects, "KafkaUser"), f"{strimzi.KAFKA_CLUSTER}-cluster-ca-cert"}
    for name, spec in _pod_specs(objects):
        assert _secret_refs(spec) <= {"mulambda-secrets", *made_by_strimzi}, name
    for worker in WORKERS:
        spec = by_kind(objects, "Deployment")[f"mulambda-{worker}"]["spec"]["template"]["spec"]
        refs = [r for c in spec["containers"] for r in c.get("envFrom", [])]
        assert {"secretRef": {"name": "mulambda-secrets"}} in refs, worker
    secret_settings = {
        f"MULAMBDA_{n.upper()}"
        for n in ("minio_access_key", "minio_secret_key", "kafka_sasl_password", "redis_url")
    }
    assert not secret_settings & set(_config(objects))
    for path in (DEPLOY / "k8s").rglob("*.yaml"):
        text = path.read_text()
        assert "change-me" not in text, path
        assert "password:" not in text.replace("key: password", ""), path


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_workers_use_their_own_kafka_user_and_the_tls_listener(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    config = _config(objects)
    (kafka,) = by_kind(objects, "Kafka").values()
    host, _, port = config["MULAMBDA_KAFKA_BOOTSTRAP_SERVERS"].partition(":")
    assert host == f"{kafka['metadata']['name']}-kafka-bootstrap"
    # Every listener is TLS with SCRAM, and the workers' port is one of them.
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert all(lst["tls"] and lst["authentication"]["type"] == "scram-sha-512" for lst in listeners)
    assert int(port) in {lst["port"] for lst in listeners}
    assert config["MULAMBDA_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["MULAMBDA_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    users = by_kind(objects, "KafkaUser")
    for worker in (*WORKERS, "launcher"):
        spec = by_kind(objects, "Deployment")[f"mulambda-{worker}"]["spec"]["template"]["spec"]
        env = _env(spec["containers"][0])
        user = strimzi.user_name(worker)
        assert env["MULAMBDA_KAFKA_SASL_USERNAME"] == user
        assert env["MULAMBDA_KAFKA_SASL_PASSWORD"] == {
            "secretKeyRef": {"name": user, "key": "password"}
        }
        assert users[user]["spec"]["authentication"]["type"] == "scram-sha-512"
        assert users[user]["metadata"]["labels"][strimzi.CLUSTER_LABEL] == kafka["metadata"]["name"]


def test_redis_url_embeds_the_password_dragonfly_requires(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    (dragonfly,) = by_kind(objects, "StatefulSet")["dragonfly"]["spec"]["template"]["spec"][
        "containers"
    ]
    required = _env(dragonfly)["DFLY_requirepass"]["secretKeyRef"]
    assert required["name"] == "mulambda-secrets"
    (service,) = [
        s
        for s in by_kind(objects, "Service").values()
        if "dragonfly" in s["metadata"]["name"] and "clusterIP" not in s["spec"]
    ]
    port = service["spec"]["ports"][0]["port"]
    for worker in WORKERS:
        spec = by_kind(objects, "Deployment")[f"mulambda-{worker}"]["spec"]["template"]["spec"]
        # kubelet expands $(REDIS_PASSWORD) from the envFrom Secret holding that key.
        url = _env(spec["containers"][0])["MULAMBDA_REDIS_URL"]
        assert url == f"redis://:$({required['key']})@{service['metadata']['name']}:{port}/0"


def test_kafka_topics_and_users_are_the_catalogs(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = rendered
    catalog = load_catalog()
    (pool,) = by_kind(objects, "KafkaNodePool").values()
    nodes = pool["spec"]["replicas"]
    topics = by_kind(objects, "KafkaTopic")
    assert set(topics) == {catalog.name(t) for t in catalog.specs}
    for key, spec in catalog.specs.items():
        topic = topics[catalog.name(key)]["spec"]
        assert topic["topicName"] == catalog.name(key)
        assert topic["partitions"] == spec.partitions
        assert topic["config"] == dict(spec.config)
        # Every replica on its own node; prod keeps a write on two of three.
        assert topic["replicas"] == (spec.replication if overlay == "dev" else nodes)
    assert nodes == (1 if overlay == "dev" else 3)
    config = by_kind(objects, "Kafka")[strimzi.KAFKA_CLUSTER]["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] == (1 if overlay == "dev" else 2)
    assert config["auto.create.topics.enable"] is False
    users = by_kind(objects, "KafkaUser")
    assert set(users) == {strimzi.user_name(role) for role in ROLES}
    for role in ROLES:
        acls = users[strimzi.user_name(role)]["spec"]["authorization"]["acls"]
        assert len(acls) == len(role_acls(role, catalog))


def test_routers_scale_on_their_groups_lag_up_to_the_partitions(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    catalog = load_catalog()
    router = by_kind(objects, "Deployment")["mulambda-router"]
    (scaler,) = by_kind(objects, "ScaledObject").values()
    assert scaler["spec"]["scaleTargetRef"] == {"name": "mulambda-router"}
    (trigger,) = scaler["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["topic"] == catalog.name(Topic.INFERENCE_REQUESTS)
    assert meta["consumerGroup"] == DEFAULT_ROUTER_GROUP
    assert "--group-id" not in router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert meta["bootstrapServers"] == _config(objects)["MULAMBDA_KAFKA_BOOTSTRAP_SERVERS"]
    partitions = catalog.spec(Topic.INFERENCE_REQUESTS).partitions
    assert scaler["spec"]["minReplicaCount"] <= scaler["spec"]["maxReplicaCount"] == partitions
    auth = by_kind(objects, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    (from_env,) = auth["spec"]["env"]
    (container,) = router["spec"]["template"]["spec"]["containers"]
    assert from_env["containerName"] == container["name"]
    assert from_env["name"] in _env(container)
    targets = {r["parameter"]: r["name"] for r in auth["spec"]["secretTargetRef"]}
    assert targets["password"] == strimzi.user_name("router")


def test_generated_manifests_are_up_to_date() -> None:
    copy = strimzi.manifest_copy(load_catalog())
    assert copy is not None
    assert copy.stale() == [], "run `mulambda deploy generate`"
    # A catalog that differs is noticed.
    drifted = strimzi.manifest_copy(load_catalog("other."))
    assert drifted is not None
    assert set(drifted.stale()) == {strimzi.TOPICS_FILE, strimzi.USERS_FILE}


def test_configmaps_set_only_known_settings(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    known = {f"MULAMBDA_{name.upper()}" for name in Settings.model_fields}
    keys = set(_config(objects))
    assert keys <= known, keys - known
    Settings.model_validate(
        {k.removeprefix("MULAMBDA_").lower(): v for k, v in _config(objects).items()}
    )


def test_the_launcher_runs_its_command_on_the_kubernetes_backend_and_probes_it(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    deployment = by_kind(objects, "Deployment")["mulambda-launcher"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(cli, click.Group)
    assert cli.get_command(click.Context(cli), container["args"][0]) is not None
    assert container["args"] == ["launcher"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MULAMBDA_LAUNCHER_BACKEND"]["value"] == "kubernetes"
    namespace = env["MULAMBDA_LAUNCHER_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert namespace == "metadata.namespace"  # where its Role is bound
    (metrics,) = container["ports"]
    assert metrics["containerPort"] == int(_config(objects)["MULAMBDA_METRICS_PORT"])
    probes = {k: container[k]["httpGet"] for k in container if k.endswith("Probe")}
    assert probes == {
        "startupProbe": {"path": "/healthz", "port": "metrics"},
        "livenessProbe": {"path": "/healthz", "port": "metrics"},
        "readinessProbe": {"path": "/readyz", "port": "metrics"},
    }


def test_launcher_role_allows_exactly_what_the_launcher_applies(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    (role,) = by_kind(objects, "Role").values()
    allowed = {
        (group, resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    applied = {
        (
            "apps",
            executor_deployment(registration(), LaunchOptions(replicas=n))["kind"].lower() + "s",
        )
        for n in (1, 2)
    }
    assert applied <= allowed
    assert allowed <= applied | {("", "services")}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    (binding,) = by_kind(objects, "RoleBinding").values()
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"],
    }  # fmt: skip
    (account,) = by_kind(objects, "ServiceAccount").values()
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "mulambda"}
    ]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_only_routers_reach_executors_rest_port(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    executor_labels = executor_deployment(registration())["spec"]["template"]["metadata"]["labels"]
    pod_labels = {
        name.removeprefix("mulambda-"): d["spec"]["template"]["metadata"]["labels"]
        for name, d in by_kind(objects, "Deployment").items()
    }
    policies = [
        p
        for p in by_kind(objects, "NetworkPolicy").values()
        if _selects(p["spec"]["podSelector"], executor_labels)
    ]
    assert policies, "no NetworkPolicy selects the launcher's executor pods"
    open_to: dict[int, list[dict[str, Any]]] = {}
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"]["ingress"]:
            for port in rule["ports"]:
                open_to.setdefault(port["port"], []).extend(rule["from"])
    assert set(open_to) == {TF_SERVING_REST_PORT, COMPANION_HEALTH_PORT}
    rest_peers = open_to[TF_SERVING_REST_PORT]
    assert all(set(peer) == {"podSelector"} for peer in rest_peers)
    reaching = {
        w
        for w, labels in pod_labels.items()
        for p in rest_peers
        if _selects(p["podSelector"], labels)
    }
    assert reaching == {"router"}
    # Workers themselves admit only their metrics port.
    for worker, labels in pod_labels.items():
        ports = {
            port["port"]
            for p in by_kind(objects, "NetworkPolicy").values()
            if _selects(p["spec"]["podSelector"], labels)
            for rule in p["spec"]["ingress"]
            for port in rule["ports"]
        }
        assert ports == {int(_config(objects)["MULAMBDA_METRICS_PORT"])}, worker


def test_files_the_config_names_are_mounted(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    files = [v for k, v in _config(objects).items() if k.endswith("FILE")]
    assert files, "the config names no file (the brokers' CA)"
    for name, spec in _every_pod_spec(objects):
        for container in spec["containers"]:
            refs = container.get("envFrom", [])
            if {"configMapRef": {"name": "mulambda-config"}} not in refs:
                continue  # not a MuLambda container (DragonflyDB, MinIO)
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
            for path in files:
                assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), (name, path)


def test_every_probed_container_has_a_startup_probe(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for name, spec in _every_pod_spec(objects):
        for container in spec["containers"]:
            assert "readinessProbe" in container, (name, container["name"])
            startup = container["startupProbe"]
            # Liveness and readiness only count once it passed: it must allow for start-up.
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, name


def test_launched_companions_use_their_kafka_user_and_the_brokers_ca(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for replicas in (1, 3):
        name, spec = _launched(replicas)
        companion = next(c for c in spec["containers"] if c["name"] == "companion")
        env = _env(companion)
        user = strimzi.user_name("companion")
        assert user in by_kind(objects, "KafkaUser")
        assert env["MULAMBDA_KAFKA_SASL_USERNAME"] == user
        assert env["MULAMBDA_KAFKA_SASL_PASSWORD"]["secretKeyRef"]["name"] == user
        (ca,) = [v for v in spec["volumes"] if "secret" in v]
        assert ca["secret"]["secretName"] == strimzi.CLUSTER_CA_SECRET
        assert _secret_refs(spec) <= {"mulambda-secrets", user, strimzi.CLUSTER_CA_SECRET}, name


def test_only_their_clients_reach_dragonfly_and_minio(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    pods = {
        name: workload["spec"]["template"]["metadata"]["labels"]
        for kind in WORKLOADS
        for name, workload in by_kind(objects, kind).items()
    }
    pods["executor"] = executor_deployment(registration())["spec"]["template"]["metadata"]["labels"]
    expected = {
        "dragonfly": {"mulambda-selector", "mulambda-router"},
        "minio": {"executor"},
    }
    for server, clients in expected.items():
        policies = [
            p
            for p in by_kind(objects, "NetworkPolicy").values()
            if _selects(p["spec"]["podSelector"], pods[server])
        ]
        assert policies, server
        peers = [peer for p in policies for rule in p["spec"]["ingress"] for peer in rule["from"]]
        assert all(set(peer) == {"podSelector"} for peer in peers), server
        reaching = {
            name
            for name, labels in pods.items()
            for peer in peers
            if _selects(peer["podSelector"], labels)
        }
        assert reaching == clients, server


def test_compose_and_kubernetes_pin_the_same_server_images(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    compose = documents(DEPLOY / "compose" / "compose.yaml")[0]["services"]
    for server in ("dragonfly", "minio"):
        (container,) = by_kind(objects, "StatefulSet")[server]["spec"]["template"]["spec"][
            "containers"
        ]
        assert container["image"] == compose[server]["image"], server
    assert compose["tfserving"]["image"] == LaunchOptions().serving_image
