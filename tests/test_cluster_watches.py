"""The watches of the Kubernetes target against a real control plane (kwok node).

The rollout wait is woken by watch events (its fallback pause is made an hour here, so only an
event can end a pause), the pod board lists and watches the pods a Deployment owns through its
ReplicaSet, and `devloop up` says when the port it would forward to is taken. kwok runs no
containers, so the logs and the forwarded bytes are tested on the real node
(test_real_node_streams.py).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from devloop.targets.kubernetes import rollout, rollout_watch
from devloop.targets.kubernetes.applying import Cluster, ManifestObject, apply_objects, delete_app
from devloop.targets.kubernetes.pods import PodBoard, app_workloads
from devloop.targets.kubernetes.rollout import wait_for_rollouts
from tests.daemon_driver import Devloop

DIGEST = "example.test/web@sha256:" + "ab" * 32  # resolves offline: no build, no registry
APP = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - {{name: app, image: "{image}", ports: [{{containerPort: {port}}}]}}
"""


@pytest.fixture
def kube(cluster: Any) -> Cluster:
    return Cluster(str(cluster.kubeconfig))


def deployment(image: str = "example.test/web:v1") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


@pytest.mark.timeout(90)
def test_the_rollout_wait_is_woken_by_watch_events_and_closes_its_watches(
    kube: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rollout_watch, "FALLBACK_S", 3600.0)
    threads = threading.active_count()
    for image in ("example.test/web:v1", "example.test/web:v2"):
        docs = [ManifestObject(deployment(image), "config/web.yml, document 1")]
        result = apply_objects(kube, docs, "shop", namespace, None)
        heard: list[rollout.Status] = []
        with rollout_watch.changes(kube, result.changed_workloads()) as changes:
            wait_for_rollouts(
                kube, result.changed_workloads(), 60, lambda _w, s, h=heard: h.append(s),
                sleep=changes.wait,
            )  # fmt: skip
        assert heard[-1].done
    assert threading.active_count() == threads


@pytest.mark.anyio
@pytest.mark.timeout(90)
async def test_the_board_shows_the_pods_a_deployment_owns_and_drops_them_when_deleted(
    kube: Cluster, namespace: str
) -> None:
    (web,) = app_workloads([deployment()], namespace)
    docs = [ManifestObject(deployment(), "config/web.yml, document 1")]
    async with anyio.create_task_group() as group:
        board = PodBoard(kube, group)
        board.show([web])
        await anyio.to_thread.run_sync(apply_objects, kube, docs, "shop", namespace, None)
        version = 0
        while len(board.pods_of(web)) < 2:
            version = await board.changed(version)
        names = {pod["metadata"]["name"] for pod in board.pods_of(web)}
        assert all(name.startswith("web-") for name in names)
        await anyio.to_thread.run_sync(delete_app, kube, "shop", namespace)
        while board.pods_of(web):
            version = await board.changed(version)
        group.cancel_scope.cancel()


def up_with_a_taken_port(tmp_path: Path, cluster: Any, namespace: str, *extra: str) -> Any:
    (tmp_path / "config").mkdir()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = int(taken.getsockname()[1])
    (tmp_path / "config" / "app.yml").write_text(APP.format(image=DIGEST, port=port))
    args = ["--namespace", namespace, "--kubeconfig", str(cluster.kubeconfig), *extra]
    return Devloop(tmp_path, args), taken, port


def test_a_local_port_already_taken_fails_the_deploy_with_its_address_and_the_way_out(
    tmp_path: Path, cluster: Any, namespace: str
) -> None:
    devloop, taken, port = up_with_a_taken_port(tmp_path, cluster, namespace)
    try:
        failed = devloop.wait("apply.failed")
        reason = str(failed["reason"])
        assert f"Deployment/web: cannot forward port {port} to 127.0.0.1:{port}" in reason
        assert "--port-forward=false" in reason
    finally:
        devloop.stop()
        taken.close()


def test_with_port_forward_false_nothing_listens_and_the_deploy_succeeds(
    tmp_path: Path, cluster: Any, namespace: str
) -> None:
    devloop, taken, _ = up_with_a_taken_port(
        tmp_path, cluster, namespace, "--port-forward=false", "--logs=false"
    )
    try:
        devloop.wait("rollout.finished")
        assert devloop.interrupt() < 10
        assert not devloop.named("apply.failed") and not devloop.named("portforward.ready")
    finally:
        devloop.stop()
        taken.close()
