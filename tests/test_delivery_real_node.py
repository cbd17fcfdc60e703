"""The sample app, with no destinations written by hand, runs on a node that really pulls.

`real_cluster` (tests/fixtures/cluster.py, `local-cluster up --nodes kubelet`) announces its
registry in the KEP-1755 ConfigMap. `devloop up` on the plain sample app (config/ only, no
config-push/) must find it on its own, push there, and the kubelet must pull and run the digest
devloop names; an edit must roll out the new digest. Skipped where the fixtures have no real node.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

import tests.fixtures.cluster as cluster_fixtures
from tests.daemon_driver import ROOT, Devloop
from tests.fixtures.cluster import wait_until
from tests.fixtures.engine import Leftovers

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not hasattr(cluster_fixtures, "real_cluster"), reason="no real_cluster fixture here"
    ),
]
PLACEHOLDER = "ghcr.io/devloop-dev/sample-app-go"
GO_BUILD_S = 300.0  # a cold Go build of the sample app on 2 busy cores, with room to spare


@pytest.fixture
def project(tmp_path: Path, leftovers: Leftovers) -> Path:
    """The sample app as a user has it, its image named uniquely for this test."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "sample-app-go", root / "sample-app-go")
    shutil.copytree(ROOT / "config", root / "config")
    for manifest in (root / "config").glob("*.yml"):
        manifest.write_text(manifest.read_text().replace(PLACEHOLDER, leftovers.image))
    return root


@pytest.fixture
def devloop(project: Path, real_cluster: Any, real_namespace: str) -> Iterator[Devloop]:
    args = ["-n", real_namespace, "--kubeconfig", str(real_cluster.kubeconfig)]
    running = Devloop(project, [*args, "--debounce-ms", "50", "--rollout-timeout", "120"])
    yield running
    running.stop()


def ready_pod_image_id(api: client.ApiClient, namespace: str, image: str) -> str:
    """The image ID the node reports once the only live sample-app pod runs `image`, Ready."""

    def settled(pods: Any) -> bool:
        live = [p for p in pods.items if p.metadata.deletion_timestamp is None]
        return len(pods.items) == len(live) == 1 and _ready_with(live[0], image)

    pods = wait_until(
        client.CoreV1Api(api).list_namespaced_pod,
        settled,
        f"one Ready pod running {image}",
        namespace=namespace,
        label_selector="app=sample-app",
    )
    return str(pods.items[0].status.container_statuses[0].image_id)


def _ready_with(pod: Any, image: str) -> bool:
    statuses = pod.status.container_statuses or []
    return pod.spec.containers[0].image == image and [s.ready for s in statuses] == [True]


def test_the_sample_app_with_no_destinations_runs_from_the_pushed_build_and_edits_roll_out(
    devloop: Devloop,
    project: Path,
    real_cluster: Any,
    real_kube_api: client.ApiClient,
    real_namespace: str,
) -> None:
    selected = devloop.wait("delivery.selected", timeout=GO_BUILD_S)
    assert selected["rung"] == "registry" and real_cluster.registry in selected["reason"]
    devloop.wait("rollout.finished")
    deployment = client.AppsV1Api(real_kube_api).read_namespaced_deployment(
        "sample-app", real_namespace
    )
    first = deployment.spec.template.spec.containers[0].image
    assert first.startswith(f"{real_cluster.registry}/") and "@sha256:" in first
    assert ready_pod_image_id(real_kube_api, real_namespace, first).endswith(first.split("@")[1])

    mark = devloop.mark()
    main = project / "sample-app-go" / "main.go"
    main.write_text(main.read_text().replace('"Hello %s!\\n"', '"Howdy %s!\\n"'))
    devloop.wait("build.finished", after=mark, timeout=GO_BUILD_S)
    devloop.wait("rollout.finished", after=mark)
    second = (
        client.AppsV1Api(real_kube_api)
        .read_namespaced_deployment("sample-app", real_namespace)
        .spec.template.spec.containers[0]
        .image
    )
    assert second != first and second.startswith(f"{real_cluster.registry}/")
    assert ready_pod_image_id(real_kube_api, real_namespace, second).endswith(second.split("@")[1])
