"""Server-side apply, pruning, `devloop down` and rollout waits against a real control plane.

The cluster (tests/fixtures/cluster.py) is a real kube-apiserver with controllers and a kwok fake
node: Deployments roll out, pods become Ready, nothing is pulled. Faults the fake node cannot show
(ErrImagePull) are injected through the pods' status subresource on pods kwok does not manage.
The PATCH counter on `Cluster.requests` is the seam that shows what was (not) sent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from devloop.errors import ApplyError, ClusterUnavailable, InputError, RolloutError
from devloop.targets.kubernetes.applying import (
    APP_LABEL,
    HASH_ANNOTATION,
    Cluster,
    Inventory,
    ManifestObject,
    ObjectKey,
    apply_objects,
    content_hash,
    delete_app,
    rank,
    read_inventory,
    write_inventory,
)
from devloop.targets.kubernetes.rollout import Workload, wait_for_rollouts
from tests.fixtures.cluster import wait_until


def deployment(name: str = "web", image: str = "example.test/web:v1", **pod: Any) -> Any:
    container = {"name": "app", "image": image} if image else {"name": "app"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container], **pod},
            },
        },
    }


def config_map(name: str = "settings", **data: str) -> Any:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def objects(*docs: Any) -> list[ManifestObject]:
    return [ManifestObject(doc, f"config/app.yml, document {i}") for i, doc in enumerate(docs, 1)]


@pytest.fixture
def kube(cluster: Any) -> Cluster:
    return Cluster(str(cluster.kubeconfig))


# -- pure parts ---------------------------------------------------------------------------------


def test_the_content_hash_ignores_key_order_but_not_values() -> None:
    a = {"kind": "ConfigMap", "data": {"x": "1", "y": "2"}}
    b = {"data": {"y": "2", "x": "1"}, "kind": "ConfigMap"}
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash({**a, "data": {"x": "1", "y": "3"}})


def test_namespaces_and_crds_go_first_and_workloads_after_their_config() -> None:
    kinds = ["Deployment", "Widget", "Service", "ConfigMap", "ServiceAccount", "ClusterRole"]
    kinds += ["CustomResourceDefinition", "Namespace"]
    assert sorted(kinds, key=rank) == [
        "Namespace", "CustomResourceDefinition", "ClusterRole", "ServiceAccount", "ConfigMap",
        "Service", "Deployment", "Widget",
    ]  # fmt: skip


def test_a_missing_kubeconfig_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InputError) as raised:
        Cluster(str(missing))
    assert str(raised.value).startswith(f"kubeconfig {missing}: no such file")


def test_a_manifest_without_a_name_is_rejected_before_anything_is_sent() -> None:
    nameless = ManifestObject({"apiVersion": "v1", "kind": "ConfigMap"}, "a.yml, document 3")
    with pytest.raises(ApplyError, match=r"^a.yml, document 3: metadata.name: missing"):
        apply_objects(None, [nameless], "app", "ns", None)  # type: ignore[arg-type]


# -- against the cluster ------------------------------------------------------------------------


@pytest.mark.cluster
def test_apply_creates_objects_labelled_and_owned_by_the_devloop_field_manager(
    kube: Cluster, namespace: str
) -> None:
    result = apply_objects(kube, objects(deployment(), config_map(a="1")), "shop", namespace, None)
    assert result.counts() == {"created": 2, "configured": 0, "unchanged": 0, "pruned": 0}
    live = kube.get_object("apps/v1", "Deployment", namespace, "web")
    assert live is not None
    assert live["metadata"]["labels"][APP_LABEL] == "shop"
    assert (
        live["metadata"]["annotations"][HASH_ANNOTATION]
        == result.inventory.objects[ObjectKey("apps/v1", "Deployment", namespace, "web")]
    )
    managers = {(f["manager"], f["operation"]) for f in live["metadata"]["managedFields"]}
    assert ("devloop", "Apply") in managers
    assert [str(w) for w in result.changed_workloads()] == ["Deployment/web"]


@pytest.mark.cluster
def test_reapplying_the_same_content_sends_nothing(kube: Cluster, namespace: str) -> None:
    docs = objects(deployment(), config_map(a="1"))
    first = apply_objects(kube, docs, "shop", namespace, None)
    version = kube.get_object("v1", "ConfigMap", namespace, "settings")["metadata"]  # type: ignore[index]
    patches = kube.requests["PATCH"]
    again = apply_objects(kube, docs, "shop", namespace, first.inventory)
    assert kube.requests["PATCH"] == patches
    assert again.counts()["unchanged"] == 2 and again.changed_workloads() == []
    after = kube.get_object("v1", "ConfigMap", namespace, "settings")["metadata"]  # type: ignore[index]
    assert after["resourceVersion"] == version["resourceVersion"]


@pytest.mark.cluster
def test_a_restarted_devloop_does_not_resend_unchanged_objects(
    cluster: Any, kube: Cluster, namespace: str
) -> None:
    docs = objects(deployment(), config_map(a="1"))
    apply_objects(kube, docs, "shop", namespace, None)
    restarted = Cluster(str(cluster.kubeconfig))
    result = apply_objects(restarted, docs, "shop", namespace, None)
    assert result.counts()["unchanged"] == 2
    assert restarted.requests["PATCH"] == 1  # only the inventory record, rewritten once


@pytest.mark.cluster
def test_a_changed_image_rolls_out_and_the_wait_returns_when_done(
    kube: Cluster, namespace: str
) -> None:
    first = apply_objects(kube, objects(deployment()), "shop", namespace, None)
    wait_for_rollouts(kube, first.changed_workloads(), 30)
    second = apply_objects(
        kube, objects(deployment(image="example.test/web:v2")), "shop", namespace, first.inventory
    )
    assert second.counts()["configured"] == 1
    heard: list[str] = []
    wait_for_rollouts(kube, second.changed_workloads(), 30, lambda w, s: heard.append(s.message))
    assert heard[-1] == "rolled out"
    live = kube.get_object("apps/v1", "Deployment", namespace, "web")
    assert live is not None
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "example.test/web:v2"
    assert live["status"]["updatedReplicas"] == live["status"]["readyReplicas"] == 2
    assert live["status"]["observedGeneration"] == live["metadata"]["generation"] == 2


@pytest.mark.cluster
def test_an_object_no_longer_rendered_is_pruned(kube: Cluster, namespace: str) -> None:
    first = apply_objects(kube, objects(deployment(), config_map(a="1")), "shop", namespace, None)
    second = apply_objects(kube, objects(deployment()), "shop", namespace, first.inventory)
    assert [(str(o.key), o.action) for o in second.outcomes if o.action == "pruned"] == [
        ("ConfigMap/settings", "pruned")
    ]
    assert kube.get_object("v1", "ConfigMap", namespace, "settings") is None
    assert set(read_inventory(kube, "shop", namespace).objects) == set(second.inventory.objects)


@pytest.mark.cluster
def test_pruning_still_works_after_a_restart(cluster: Any, kube: Cluster, namespace: str) -> None:
    apply_objects(kube, objects(deployment(), config_map(a="1")), "shop", namespace, None)
    restarted = Cluster(str(cluster.kubeconfig))
    result = apply_objects(restarted, objects(deployment()), "shop", namespace, None)
    assert result.counts() == {"created": 0, "configured": 0, "unchanged": 1, "pruned": 1}
    assert restarted.get_object("v1", "ConfigMap", namespace, "settings") is None


@pytest.mark.cluster
def test_an_object_applied_just_before_a_crash_is_found_by_its_label(
    cluster: Any, kube: Cluster, namespace: str
) -> None:
    first = apply_objects(kube, objects(deployment(), config_map(a="1")), "shop", namespace, None)
    # The crash came after applying the ConfigMap but before the record listed it.
    web = {k: v for k, v in first.inventory.objects.items() if k.kind == "Deployment"}
    write_inventory(kube, Inventory("shop", namespace, web, first.inventory.kinds))
    result = apply_objects(Cluster(str(cluster.kubeconfig)), objects(deployment()), "shop",
                           namespace, None)  # fmt: skip
    assert [str(o.key) for o in result.outcomes if o.action == "pruned"] == ["ConfigMap/settings"]


@pytest.mark.cluster
def test_other_apps_objects_are_left_alone(cluster: Any, kube: Cluster, namespace: str) -> None:
    apply_objects(kube, objects(config_map("theirs", a="1")), "other", namespace, None)
    apply_objects(kube, objects(config_map("ours", a="1")), "shop", namespace, None)
    apply_objects(Cluster(str(cluster.kubeconfig)), objects(), "shop", namespace, None)
    assert kube.get_object("v1", "ConfigMap", namespace, "ours") is None
    assert kube.get_object("v1", "ConfigMap", namespace, "theirs") is not None


@pytest.mark.cluster
def test_the_api_servers_rejection_names_file_document_object_and_reason(
    kube: Cluster, namespace: str
) -> None:
    bad = ManifestObject(deployment("sample-app", image=""), "config/deployment.yml, document 1")
    with pytest.raises(ApplyError) as raised:
        apply_objects(kube, [bad], "shop", namespace, None)
    assert str(raised.value) == (
        "config/deployment.yml, document 1: Deployment/sample-app: the API server rejected it: "
        "spec.template.spec.containers[0].image: Required value"
    )


@pytest.mark.cluster
def test_changing_an_immutable_field_says_how_to_recover(kube: Cluster, namespace: str) -> None:
    first = apply_objects(kube, objects(deployment()), "shop", namespace, None)
    moved = deployment()
    moved["spec"]["selector"]["matchLabels"]["tier"] = "front"
    moved["spec"]["template"]["metadata"]["labels"]["tier"] = "front"
    with pytest.raises(ApplyError) as raised:
        apply_objects(kube, objects(moved), "shop", namespace, first.inventory)
    message = str(raised.value)
    assert message.startswith("config/app.yml, document 1: Deployment/web: the API server rejec")
    assert "field is immutable" in message
    assert f"kubectl delete deployment web -n {namespace}" in message


@pytest.mark.cluster
def test_a_kind_the_cluster_does_not_serve_is_an_apply_error(kube: Cluster, namespace: str) -> None:
    widget = {"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(ApplyError, match=r"does not serve kind Widget in example\.test/v1"):
        apply_objects(kube, objects(widget), "shop", namespace, None)


@pytest.mark.cluster
def test_a_custom_resource_applies_together_with_its_definition(
    kube: Cluster, namespace: str
) -> None:
    group = f"{namespace}.example.test"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            }}],
        },
    }  # fmt: skip
    widget = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}}
    try:
        result = apply_objects(kube, objects(widget, crd), "crd-app", namespace, None)
        assert [(o.key.kind, o.action) for o in result.outcomes] == [
            ("CustomResourceDefinition", "created"), ("Widget", "created")
        ]  # fmt: skip
        assert kube.get_object(f"{group}/v1", "Widget", namespace, "w") is not None
    finally:
        delete_app(kube, "crd-app", namespace)


@pytest.mark.cluster
def test_a_namespace_is_applied_before_the_objects_in_it(kube: Cluster, namespace: str) -> None:
    own = f"{namespace}-own"
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": own}}
    web = deployment()
    web["metadata"]["namespace"] = own
    try:
        result = apply_objects(kube, objects(web, ns), "shop", namespace, None)
        assert [(str(o.key), o.action) for o in result.outcomes] == [
            (f"Namespace/{own}", "created"), ("Deployment/web", "created")
        ]  # fmt: skip
    finally:
        delete_app(kube, "shop", namespace)
    gone = kube.get_object("v1", "Namespace", "", own)
    assert gone is None or "deletionTimestamp" in gone["metadata"]


@pytest.mark.cluster
def test_delete_app_removes_everything_and_its_inventory(
    cluster: Any, kube: Cluster, namespace: str
) -> None:
    apply_objects(kube, objects(deployment(), config_map(a="1")), "shop", namespace, None)
    deleted = delete_app(Cluster(str(cluster.kubeconfig)), "shop", namespace)
    assert deleted == ["Deployment/web", "ConfigMap/settings"]
    assert kube.get_object("apps/v1", "Deployment", namespace, "web") is None
    assert kube.get_object("v1", "ConfigMap", namespace, "settings") is None
    assert kube.get_object("v1", "ConfigMap", namespace, "devloop-inventory-shop") is None
    assert delete_app(kube, "shop", namespace) == []


@pytest.mark.cluster
def test_an_image_pull_failure_fails_the_wait_fast_with_the_helpful_message(
    kube: Cluster, kube_api: Any, namespace: str
) -> None:
    # nodeName of a node nobody runs: neither the scheduler nor kwok touch the pod, so the
    # injected status stays as written.
    image = "kbld:web-sha256-0123456789abcdef"
    web = deployment(image=image, nodeName="no-such-node")
    web["spec"]["replicas"] = 1
    result = apply_objects(kube, objects(web), "shop", namespace, None)
    pods = wait_until(
        client.CoreV1Api(kube_api).list_namespaced_pod, lambda found: bool(found.items),
        "the Deployment's pod", namespace=namespace, label_selector="app=web",
    )  # fmt: skip
    inject_pull_failure(kube, namespace, pods.items[0].metadata.name, image)
    with pytest.raises(RolloutError) as raised:
        wait_for_rollouts(kube, result.changed_workloads(), 60)
    message = str(raised.value)
    assert message.startswith(f"Deployment/web in namespace {namespace}: pod web-")
    assert f"the cluster cannot pull {image}: this image exists only in your local" in message


def inject_pull_failure(kube: Cluster, namespace: str, pod: str, image: str) -> None:
    status = {"status": {"containerStatuses": [{
        "name": "app", "image": image, "imageID": "", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}},
    }]}}  # fmt: skip
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}"
    reply = kube.request(
        "PATCH", path + "/status", body=status, content_type="application/merge-patch+json"
    )
    assert reply.status == 200, reply.body


@pytest.mark.cluster
def test_an_unschedulable_pod_fails_the_wait_fast(kube: Cluster, namespace: str) -> None:
    web = deployment(nodeSelector={"devloop.test/pool": "none"})
    result = apply_objects(kube, objects(web), "shop", namespace, None)
    with pytest.raises(RolloutError, match=r"cannot be scheduled: 0/1 nodes are available"):
        wait_for_rollouts(kube, result.changed_workloads(), 60)


@pytest.mark.cluster
def test_a_rollout_that_cannot_finish_in_time_lists_what_is_pending(
    kube: Cluster, namespace: str
) -> None:
    missing = Workload("apps/v1", "Deployment", namespace, "never-applied")
    with pytest.raises(RolloutError, match=r"Deployment/never-applied .*not found"):
        wait_for_rollouts(kube, [missing], 0.5, poll_s=0.1)


@pytest.fixture
def closed_port_kubeconfig(tmp_path: Path) -> Iterator[Path]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        f"clusters: [{{name: gone, cluster: {{server: 'https://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: me, user: {token: not-a-secret}}]\n"
        "contexts: [{name: gone, context: {cluster: gone, user: me, namespace: dev}}]\n"
    )
    yield path


@pytest.mark.timeout(15)
def test_an_unreachable_cluster_is_reported_as_retryable(closed_port_kubeconfig: Path) -> None:
    kube = Cluster(str(closed_port_kubeconfig))
    assert kube.namespace == "dev"
    with pytest.raises(ClusterUnavailable) as raised:
        kube.ping()
    assert str(raised.value) == (
        f"cannot reach the Kubernetes API at {kube.server}: connection refused; devloop will retry"
    )
    assert raised.value.retryable
    with pytest.raises(ClusterUnavailable):
        apply_objects(kube, objects(config_map(a="1")), "shop", None, None)
