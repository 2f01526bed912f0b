"""The Kubernetes backend's requests and objects, as data: no API server needed."""

from __future__ import annotations

import json

import pytest

from mulambda.errors import LaunchError, LaunchForbidden, TransportError
from mulambda.launching.kube_requests import (
    APPLY_CONTENT_TYPE,
    OWNED_SELECTOR,
    api_error,
    apply_request,
    delete_request,
    get_request,
    list_request,
    observed_of,
    render_kubernetes,
    uid_of,
)
from mulambda.launching.manifests import LaunchOptions, workload_name
from mulambda.launching.plan import (
    LAUNCH_ID_ANNOTATION,
    LAUNCH_LABEL,
    MANAGED_BY_LABEL,
    MANAGER,
    SPEC_HASH_ANNOTATION,
    ObjectRef,
)
from mulambda.wire.events import ExecutorRegistration, LaunchSpec
from tests.factories import registration

pytestmark = pytest.mark.unit

BASE = LaunchOptions(namespace="ml", mulambda_image="mulambda:test")


def _launch(launch_id: str = "wine", **spec: object) -> ExecutorRegistration:
    return registration(launch_id, launch=LaunchSpec.model_validate(spec))


def test_a_launch_is_a_marked_statefulset_and_headless_service() -> None:
    launch = registration("Wine/A", launch=LaunchSpec(replicas=1, cpu="500m", image="tfs:1"))
    workload, service = render_kubernetes(launch, BASE)
    name = workload_name("Wine/A")
    assert workload.ref == ObjectRef("StatefulSet", name)
    assert service.ref == ObjectRef("Service", name)
    for obj in (workload, service):
        meta = obj.body["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["labels"][MANAGED_BY_LABEL] == MANAGER
        assert meta["labels"][LAUNCH_LABEL] == name
        assert meta["annotations"] == {
            LAUNCH_ID_ANNOTATION: "Wine/A",
            SPEC_HASH_ANNOTATION: obj.spec_hash,
        }
        assert obj.launch_id == "Wine/A"
    spec = workload.body["spec"]
    assert spec["replicas"] == 1
    assert spec["serviceName"] == name
    assert service.body["spec"]["clusterIP"] == "None"
    serving, companion = spec["template"]["spec"]["containers"]
    assert serving["image"] == "tfs:1"
    assert serving["resources"] == {"requests": {"cpu": "500m"}}
    assert companion["image"] == "mulambda:test"  # the launcher's default
    # Even one replica registers <launch id>-<ordinal>, so scaling renames nothing.
    args = companion["args"]
    assert args[args.index("--executor-id") + 1] == "Wine/A-$(POD_INDEX)"


def test_the_digest_follows_the_spec_not_the_envelope() -> None:
    first = {d.ref.kind: d.spec_hash for d in render_kubernetes(_launch(replicas=2), BASE)}
    again = {d.ref.kind: d.spec_hash for d in render_kubernetes(_launch(replicas=2), BASE)}
    scaled = {d.ref.kind: d.spec_hash for d in render_kubernetes(_launch(replicas=3), BASE)}
    assert first == again
    assert scaled["StatefulSet"] != first["StatefulSet"]
    assert scaled["Service"] == first["Service"]
    images = render_kubernetes(_launch(mulambda_image="other:2"), BASE)[0]
    assert images.body["spec"]["template"]["spec"]["containers"][1]["image"] == "other:2"


def test_an_invalid_launch_is_refused_before_any_request() -> None:
    with pytest.raises(LaunchError, match="no launch spec"):
        render_kubernetes(registration("wine"), BASE)


def test_requests_apply_server_side_list_by_label_and_delete_what_was_listed() -> None:
    workload, _ = render_kubernetes(_launch(), BASE)
    name = workload_name("wine")
    apply = apply_request(workload.body)
    assert apply.method == "PATCH"
    assert apply.path == f"/apis/apps/v1/namespaces/ml/statefulsets/{name}"
    assert dict(apply.query) == {"fieldManager": MANAGER, "force": "true"}
    assert apply.headers == {"Content-Type": APPLY_CONTENT_TYPE}
    assert apply.body is workload.body
    listing = list_request("Service", "ml")
    assert (listing.method, listing.path) == ("GET", "/api/v1/namespaces/ml/services")
    assert listing.query == (("labelSelector", OWNED_SELECTOR),)
    assert OWNED_SELECTOR == "app.kubernetes.io/managed-by=mulambda-launcher"
    assert get_request("Deployment", "ml", "x").path == "/apis/apps/v1/namespaces/ml/deployments/x"
    delete = delete_request("StatefulSet", "ml", name, "uid-1")
    assert delete.method == "DELETE"
    assert delete.body["propagationPolicy"] == "Background"
    assert delete.body["preconditions"] == {"uid": "uid-1"}
    assert "preconditions" not in delete_request("Service", "ml", name, None).body
    with pytest.raises(LaunchError, match="manages no Secret"):
        list_request("Secret", "ml")


def test_observed_objects_carry_ownership_only_with_the_label() -> None:
    owned = {
        "metadata": {
            "name": "a",
            "uid": "u1",
            "labels": {MANAGED_BY_LABEL: MANAGER},
            "annotations": {LAUNCH_ID_ANNOTATION: "wine", SPEC_HASH_ANNOTATION: "h"},
        }
    }
    seen = observed_of("Service", owned)
    assert (seen.ref, seen.launch_id, seen.spec_hash, seen.managed) == (
        ObjectRef("Service", "a"), "wine", "h", True,
    )  # fmt: skip
    assert uid_of(owned) == "u1"
    foreign = {"metadata": {"name": "b", "labels": {MANAGED_BY_LABEL: "helm"}}}
    assert observed_of("Service", foreign).managed is False
    assert observed_of("Service", {"metadata": {"name": "c"}}).managed is False
    assert uid_of({"metadata": {}}) is None


def test_api_errors_are_translated_with_the_servers_message() -> None:
    body = json.dumps({"kind": "Status", "message": 'statefulsets.apps is forbidden: User "x"'})
    forbidden = api_error(403, "Forbidden", body, "apply StatefulSet/a")
    assert isinstance(forbidden, LaunchForbidden)
    assert forbidden.retriable is False
    assert forbidden.status == 403
    assert forbidden.reason == (
        'Kubernetes refused to apply StatefulSet/a: 403 statefulsets.apps is forbidden: User "x"'
    )
    assert isinstance(api_error(401, "Unauthorized", None, "list"), LaunchForbidden)
    invalid = api_error(422, "Unprocessable Entity", b"not json", "apply")
    assert type(invalid) is LaunchError
    assert invalid.status == 422
    assert "422 Unprocessable Entity" in invalid.reason
    for status in (429, 500, 503, None):
        transient = api_error(status, "x", None, "list")
        assert isinstance(transient, TransportError)
        assert transient.retriable is True
