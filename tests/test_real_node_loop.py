"""devloop's own loop on the real node: what it reports is what runs, and an edit really serves.

`devloop up` runs on a copy of the sample app (sample-app-go/, config/) with the config-push
destination pointed at the cluster's registry, so the node pulls the digest devloop pushed. The
rollout wait's ErrImagePull and CrashLoopBackOff messages are checked here against the kubelet's
real pod statuses (test_rollout.py checks them with injected ones).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.daemon_driver import ROOT, Devloop
from tests.fixtures.cluster import RealCluster, wait_until
from tests.fixtures.engine import BaseImages, Leftovers

pytestmark = [pytest.mark.docker]
SAMPLE_IMAGE = "ghcr.io/devloop-dev/sample-app-go"
GO_BUILD_S = 240.0  # a cold Go build of the sample app on 2 busy cores, with room to spare
CRASHING = """FROM {busybox}
CMD ["sh", "-c", "echo {token} giving up; exit 7"]
"""
CRASH_CONFIG = """\
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
sources:
  - image: {image}
    path: app
destinations:
  - image: {image}
    newImage: {registry}/devloop-test/{token}-crash
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: crash
spec:
  replicas: 1
  selector:
    matchLabels: {{app: crash}}
  template:
    metadata:
      labels: {{app: crash}}
    spec:
      containers:
        - name: crash
          image: {image}
          # Without a probe the pod is Ready for the instant before its first crash, and the
          # rollout (like `kubectl rollout status`) completes: a real node shows that race.
          readinessProbe:
            exec: {{command: ["false"]}}
            periodSeconds: 1
"""
MISSING_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: missing
spec:
  containers:
    - name: missing
      image: {registry}/devloop-test/{token}-missing:1
"""


@pytest.fixture
def sample_app(tmp_path: Path, real_cluster: RealCluster, leftovers: Leftovers) -> Path:
    """A copy of the sample app whose image is unique to the test and pushed to the cluster."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "sample-app-go", project / "sample-app-go")
    shutil.copytree(ROOT / "config", project / "config")
    shutil.copytree(ROOT / "config-push", project / "config-push")
    for path in [*(project / "config").glob("*.yml"), *(project / "config-push").glob("*.yml")]:
        text = path.read_text().replace(SAMPLE_IMAGE, leftovers.image)
        path.write_text(text.replace("127.0.0.1:5000", real_cluster.registry))
    return project


@pytest.fixture
def up(real_cluster: RealCluster, real_namespace: str) -> Iterator[Any]:
    """`up(project, *files)` starts `devloop up` on the real node; killed at the end."""
    started: list[Devloop] = []

    def start(project: Path, *files: str) -> Devloop:
        args = ["--namespace", real_namespace, "--kubeconfig", str(real_cluster.kubeconfig)]
        args += ["--debounce-ms", "50", "--rollout-timeout", "90"]
        for name in files:
            args += ["-f", name]
        started.append(Devloop(project, args))
        return started[-1]

    yield start
    for devloop in started:
        devloop.stop()


def greeting(real_cluster: RealCluster, namespace: str) -> str:
    """GET / through `kubectl port-forward` on 127.0.0.1 (the API server, never the pod IP)."""
    argv = ["kubectl", f"--kubeconfig={real_cluster.kubeconfig}", "-n", namespace]
    argv += ["port-forward", "--address=127.0.0.1", "deployment/sample-app", ":8080"]
    forward = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert forward.stdout is not None
        first = forward.stdout.readline()
        port = re.search(r"127\.0\.0\.1:(\d+) ->", first)
        assert port, f"kubectl port-forward said {first!r}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/", timeout=10) as answer:
            return str(answer.read().decode())
    finally:
        forward.terminate()
        forward.communicate(timeout=10)


def running_image_ids(api: client.ApiClient, namespace: str, image: str) -> list[str]:
    """Once exactly one ready sample-app pod runs `image`: the image IDs its node reports."""
    core: Any = client.CoreV1Api(api)

    def only(found: Any) -> bool:
        pods = [p for p in found.items if p.metadata.deletion_timestamp is None]
        statuses = [s for p in found.items for s in p.status.container_statuses or ()]
        return (
            len(found.items) == 1
            and [p.spec.containers[0].image for p in pods] == [image]
            and [s.ready for s in statuses] == [True]
        )

    listed = wait_until(
        core.list_namespaced_pod, only, f"one ready pod of {image}", namespace=namespace
    )
    return [s.image_id for s in listed.items[0].status.container_statuses]


def test_up_runs_the_pushed_digest_and_an_edit_serves_the_new_greeting(
    up: Any,
    sample_app: Path,
    real_cluster: RealCluster,
    real_kube_api: client.ApiClient,
    real_namespace: str,
    base_images: BaseImages,
) -> None:
    devloop = up(sample_app, "config/", "config-push/")
    built = devloop.wait("build.finished", timeout=GO_BUILD_S)
    devloop.wait("rollout.finished")
    ref = str(built["ref"])
    assert ref.startswith(f"{real_cluster.registry}/sample-app-go@sha256:")
    (image_id,) = running_image_ids(real_kube_api, real_namespace, ref)
    assert image_id.endswith(ref.split("@")[1])  # the node runs the digest devloop reported
    assert greeting(real_cluster, real_namespace) == "Hello devloop user!\n"

    mark = devloop.mark()
    main = sample_app / "sample-app-go" / "main.go"
    main.write_text(main.read_text().replace('"Hello %s!\\n"', '"Howdy %s!\\n"'))
    rebuilt = devloop.wait("build.finished", after=mark, timeout=GO_BUILD_S)
    devloop.wait("rollout.finished", after=mark)

    new_ref = str(rebuilt["ref"])
    assert new_ref != ref
    (image_id,) = running_image_ids(real_kube_api, real_namespace, new_ref)
    assert image_id.endswith(new_ref.split("@")[1])
    assert greeting(real_cluster, real_namespace) == "Howdy devloop user!\n"


def test_the_rollout_wait_reports_a_missing_image_as_the_cluster_failing_to_pull_it(
    up: Any, tmp_path: Path, real_cluster: RealCluster, leftovers: Leftovers
) -> None:
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    pod = MISSING_POD.format(registry=real_cluster.registry, token=leftovers.token)
    (project / "config" / "pod.yml").write_text(pod)
    devloop = up(project, "config/")

    failed = devloop.wait("rollout.failed")

    message = str(failed.get("reason") or failed.get("message") or failed)
    missing = f"{real_cluster.registry}/devloop-test/{leftovers.token}-missing:1"
    assert f"pod missing, container missing: the cluster cannot pull {missing}" in message
    assert "not found" in message


def test_the_rollout_wait_reports_a_crashing_image_with_its_exit_code(
    up: Any,
    tmp_path: Path,
    real_cluster: RealCluster,
    leftovers: Leftovers,
    base_images: BaseImages,
) -> None:
    project = tmp_path / "project"
    (project / "app").mkdir(parents=True)
    (project / "config").mkdir()
    dockerfile = CRASHING.format(busybox=base_images.busybox, token=leftovers.token)
    (project / "app" / "Dockerfile").write_text(dockerfile)
    config = CRASH_CONFIG.format(
        image=leftovers.image, registry=real_cluster.registry, token=leftovers.token
    )
    (project / "config" / "app.yml").write_text(config)
    devloop = up(project, "config/")

    failed = devloop.wait("rollout.failed")

    message = str(failed.get("reason") or failed.get("message") or failed)
    assert "container crash: the container keeps crashing" in message
    assert "last exit code 7, Error" in message
