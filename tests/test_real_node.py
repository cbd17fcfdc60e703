"""The local cluster's real node runs what it is given: pods pull, start, probe, log and crash.

kwok only pretends, so these behaviours are proven against `local-cluster up --nodes kubelet`
with the kubernetes client and kubectl alone (no devloop code). Images are tiny busybox builds
pushed to the cluster's own registry; every connection goes through the API server (logs,
port-forward) or stays on the run's own bridge (the kubelet's probes).
"""

from __future__ import annotations

import io
import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from devloop.kbld.building import Engine
from tests.fixtures.cluster import SCRIPT, RealCluster, local_cluster, wait_until
from tests.fixtures.engine import BaseImages

WEB_DOCKERFILE = """FROM {busybox}
ARG VERSION
ENV VERSION=$VERSION
RUN mkdir /www && echo "hello from $VERSION" > /www/index.html
CMD ["sh", "-c", "trap 'exit 0' TERM; httpd -p 8080 -h /www; i=0; \
while true; do i=$((i+1)); echo tick $i version=$VERSION; sleep 1 & wait $!; done"]
"""
CRASH_DOCKERFILE = """FROM {busybox}
CMD ["sh", "-c", "echo about to fail; exit 3"]
"""


@dataclass(frozen=True)
class Images:
    """References in the cluster's registry, by digest as the node pulls them."""

    web_v1: str
    web_v2: str
    crash: str


def build_and_push(engine: Engine, context: Path, repository: str, **args: str) -> str:
    """docker build + push to the cluster registry; returns REPOSITORY@DIGEST."""
    for chunk in engine.api.build(
        path=str(context), tag=f"{repository}:test", buildargs=args, rm=True, decode=True
    ):
        if "error" in chunk:
            raise AssertionError(f"building {repository}: {chunk['error']}")
    pushed = ""
    for chunk in engine.api.push(repository, tag="test", stream=True, decode=True):
        if "error" in chunk:
            raise AssertionError(f"pushing {repository}: {chunk['error']}")
        pushed = chunk.get("aux", {}).get("Digest", pushed)
    engine.api.remove_image(f"{repository}:test")
    assert pushed, f"the push of {repository} reported no digest"
    return f"{repository}@{pushed}"


@pytest.fixture(scope="module")
def images(
    engine: Engine,
    base_images: BaseImages,
    real_cluster: RealCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Images:
    built = {}
    for name, dockerfile, args in (
        ("web_v1", WEB_DOCKERFILE, {"VERSION": "v1"}),
        ("web_v2", WEB_DOCKERFILE, {"VERSION": "v2"}),
        ("crash", CRASH_DOCKERFILE, {}),
    ):
        context = tmp_path_factory.mktemp(name)
        (context / "Dockerfile").write_text(dockerfile.format(busybox=base_images.busybox))
        repository = f"{real_cluster.registry}/devloop-test/{name.split('_')[0]}"
        built[name] = build_and_push(engine, context, repository, **args)
    return Images(**built)


def web_deployment(image: str, probe_path: str = "/") -> dict[str, Any]:
    labels = {"app": "web"}
    container = {
        "name": "web",
        "image": image,
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {
            "httpGet": {"path": probe_path, "port": 8080},
            "periodSeconds": 1,
        },
    }
    spec = {"containers": [container], "terminationGracePeriodSeconds": 2}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def bare_pod(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": name, "image": image}]},
    }


def rolled_out(listed: Any) -> bool:
    """kubectl rollout status's test: the controller saw this generation and every pod is new."""
    deployment = listed.items[0] if listed.items else None
    if deployment is None or deployment.status is None:
        return False
    status, want = deployment.status, deployment.spec.replicas
    counts = {status.replicas, status.updated_replicas, status.ready_replicas}
    current = (status.observed_generation or 0) >= deployment.metadata.generation
    return current and counts == {want}


def roll_out(api: client.ApiClient, namespace: str) -> Any:
    listed = wait_until(
        client.AppsV1Api(api).list_namespaced_deployment,
        rolled_out,
        "deployment web to roll out",
        namespace=namespace,
    )
    return listed.items[0]


def web_pods(api: client.ApiClient, namespace: str, image: str) -> Any:
    """Waits until exactly one pod runs `image` and no other pod is left; returns it."""
    listed = wait_until(
        client.CoreV1Api(api).list_namespaced_pod,
        lambda found: (
            [p.spec.containers[0].image for p in found.items] == [image]
            and found.items[0].status.phase == "Running"
        ),
        f"one running pod with {image}",
        namespace=namespace,
        label_selector="app=web",
    )
    return listed.items[0]


def conditions(pod: Any) -> dict[str, str]:
    return {c.type: c.status for c in pod.status.conditions or ()}


def events_saying(api: client.ApiClient, namespace: str, text: str) -> Any:
    return wait_until(
        client.CoreV1Api(api).list_namespaced_event,
        lambda found: any(text in (e.message or "") for e in found.items),
        f"an event saying {text!r}",
        namespace=namespace,
    )


def test_an_image_pushed_to_the_clusters_registry_becomes_a_running_ready_pod(
    real_cluster: RealCluster, real_kube_api: client.ApiClient, real_namespace: str, images: Images
) -> None:
    apps: Any = client.AppsV1Api(real_kube_api)
    apps.create_namespaced_deployment(real_namespace, web_deployment(images.web_v1))

    roll_out(real_kube_api, real_namespace)

    pod = web_pods(real_kube_api, real_namespace, images.web_v1)
    assert conditions(pod)["Ready"] == "True"
    (container,) = pod.status.container_statuses
    assert container.state.running is not None
    assert container.image_id.endswith(images.web_v1.split("@")[1])  # the pushed digest ran
    assert pod.spec.node_name == "localhost"
    ledger = (real_cluster.dir / "node" / "host.json").read_text()
    subnet = re.search(r'"subnet": "10\.244\.(\d+)\.0/24"', ledger)
    assert subnet is not None
    assert pod.status.pod_ip.startswith(f"10.244.{subnet.group(1)}.")  # only on our bridge
    assert pod.status.host_ip == f"10.244.{subnet.group(1)}.1"


def test_a_failing_httpget_readiness_probe_keeps_the_pod_unready(
    real_kube_api: client.ApiClient, real_namespace: str, images: Images
) -> None:
    apps: Any = client.AppsV1Api(real_kube_api)
    apps.create_namespaced_deployment(
        real_namespace, web_deployment(images.web_v1, probe_path="/missing")
    )

    events_saying(real_kube_api, real_namespace, "Readiness probe failed: HTTP probe failed")

    pod = web_pods(real_kube_api, real_namespace, images.web_v1)
    assert conditions(pod)["Ready"] == "False"
    assert pod.status.container_statuses[0].state.running is not None


def test_following_a_pods_log_returns_its_lines_as_they_are_written(
    real_kube_api: client.ApiClient, real_namespace: str, images: Images
) -> None:
    client.AppsV1Api(real_kube_api).create_namespaced_deployment(
        real_namespace, web_deployment(images.web_v1)
    )
    pod = web_pods(real_kube_api, real_namespace, images.web_v1)

    stream = client.CoreV1Api(real_kube_api).read_namespaced_pod_log(
        pod.metadata.name, real_namespace, follow=True, _preload_content=False
    )
    lines = []
    try:
        for line in io.TextIOWrapper(stream):
            lines.append(line.rstrip("\n"))
            if len(lines) == 3:
                break
    finally:
        stream.release_conn()

    assert lines == [f"tick {n} version=v1" for n in (1, 2, 3)]


@pytest.fixture
def port_forward(real_cluster: RealCluster) -> Iterator[Any]:
    """`forward(namespace, target, port)`: kubectl port-forward on 127.0.0.1; the local port."""
    started: list[subprocess.Popen[str]] = []

    def forward(namespace: str, target: str, port: int) -> int:
        argv = ["kubectl", f"--kubeconfig={real_cluster.kubeconfig}", "-n", namespace]
        argv += ["port-forward", "--address=127.0.0.1", target, f":{port}"]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None
        first = process.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8080"
        found = re.search(r"127\.0\.0\.1:(\d+) ->", first)
        assert found, f"kubectl port-forward said {first!r}, {process.stderr.read()!r}"
        return int(found.group(1))

    yield forward
    for process in started:
        process.terminate()
        process.communicate(timeout=10)


def test_port_forward_on_loopback_reaches_the_pod(
    real_kube_api: client.ApiClient, real_namespace: str, images: Images, port_forward: Any
) -> None:
    client.AppsV1Api(real_kube_api).create_namespaced_deployment(
        real_namespace, web_deployment(images.web_v1)
    )
    roll_out(real_kube_api, real_namespace)

    local = port_forward(real_namespace, "deployment/web", 8080)
    with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as answer:
        body = answer.read().decode()

    assert body == "hello from v1\n"


def test_an_image_change_rolls_out_a_new_running_pod(
    real_kube_api: client.ApiClient, real_namespace: str, images: Images
) -> None:
    apps: Any = client.AppsV1Api(real_kube_api)
    apps.create_namespaced_deployment(real_namespace, web_deployment(images.web_v1))
    old = web_pods(real_kube_api, real_namespace, images.web_v1)

    apps.patch_namespaced_deployment("web", real_namespace, web_deployment(images.web_v2))
    roll_out(real_kube_api, real_namespace)

    new = web_pods(real_kube_api, real_namespace, images.web_v2)
    assert new.metadata.name != old.metadata.name
    assert conditions(new)["Ready"] == "True"
    log = client.CoreV1Api(real_kube_api).read_namespaced_pod_log(new.metadata.name, real_namespace)
    assert "version=v2" in log


def test_a_crashing_image_shows_crashloopbackoff_with_its_exit_code(
    real_kube_api: client.ApiClient, real_namespace: str, images: Images
) -> None:
    core: Any = client.CoreV1Api(real_kube_api)
    core.create_namespaced_pod(real_namespace, bare_pod("crash", images.crash))

    def backing_off(found: Any) -> bool:
        statuses = found.items[0].status.container_statuses if found.items else None
        waiting = statuses[0].state.waiting if statuses else None
        return waiting is not None and waiting.reason == "CrashLoopBackOff"

    listed = wait_until(
        core.list_namespaced_pod, backing_off, "CrashLoopBackOff", namespace=real_namespace
    )

    (status,) = listed.items[0].status.container_statuses
    assert status.last_state.terminated.exit_code == 3
    assert status.restart_count >= 1
    assert core.read_namespaced_pod_log("crash", real_namespace, previous=True) == "about to fail\n"


def test_a_missing_image_shows_errimagepull(
    real_cluster: RealCluster, real_kube_api: client.ApiClient, real_namespace: str
) -> None:
    missing = f"{real_cluster.registry}/devloop-test/missing:1"
    core: Any = client.CoreV1Api(real_kube_api)
    core.create_namespaced_pod(real_namespace, bare_pod("missing", missing))

    def pull_failed(found: Any) -> bool:
        statuses = found.items[0].status.container_statuses if found.items else None
        waiting = statuses[0].state.waiting if statuses else None
        return waiting is not None and waiting.reason in ("ErrImagePull", "ImagePullBackOff")

    listed = wait_until(
        core.list_namespaced_pod, pull_failed, "a pull failure", namespace=real_namespace
    )

    waiting = listed.items[0].status.container_statuses[0].state.waiting
    assert missing in waiting.message and "not found" in waiting.message
    found = events_saying(real_kube_api, real_namespace, "ErrImagePull")
    failed = [e.message for e in found.items if "Failed to pull image" in (e.message or "")]
    assert failed and missing in failed[0] and "not found" in failed[0]


def test_the_kubelet_api_refuses_a_caller_without_a_client_certificate(
    real_cluster: RealCluster,
) -> None:
    config = json.loads((real_cluster.dir / "node" / "kubelet" / "kubelet.yaml").read_text())
    trust = ssl.create_default_context(cafile=str(real_cluster.dir / "pki" / "ca.crt"))

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://localhost:{config['port']}/pods", context=trust)

    assert refused.value.code == 401


def test_a_second_real_node_on_the_same_machine_is_refused(
    real_cluster: RealCluster, tmp_path: Path
) -> None:
    other = tmp_path / "other"

    second = local_cluster("up", other, "--nodes", "kubelet")

    assert second.returncode == 1
    assert f"a real node already runs on this machine from {real_cluster.dir}" in second.stderr
    assert f"down --dir {real_cluster.dir}" in second.stderr
    assert "Traceback" not in second.stderr
    assert not list((other / "run").glob("*.json"))  # its control plane was stopped again


def test_status_lists_the_node_components(real_cluster: RealCluster) -> None:
    shown = subprocess.run(
        [str(SCRIPT), "status", "--dir", str(real_cluster.dir)], capture_output=True, text=True
    )

    assert shown.returncode == 0
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()}
    for component in ("registry", "containerd", "kubelet", "kube-apiserver"):
        assert "running pid=" in lines[component]
    assert "kwok" not in lines


def test_exec_runs_a_command_in_the_pod_and_passes_its_exit_code_back(
    real_cluster: RealCluster, real_kube_api: client.ApiClient, real_namespace: str, images: Images
) -> None:
    client.AppsV1Api(real_kube_api).create_namespaced_deployment(
        real_namespace, web_deployment(images.web_v1)
    )
    roll_out(real_kube_api, real_namespace)
    kubectl = ["kubectl", f"--kubeconfig={real_cluster.kubeconfig}", "-n", real_namespace]

    shown = subprocess.run(
        [*kubectl, "exec", "deployment/web", "--", "cat", "/www/index.html"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    failed = subprocess.run(
        [*kubectl, "exec", "deployment/web", "--", "sh", "-c", "exit 4"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert (shown.returncode, shown.stdout) == (0, "hello from v1\n")
    assert failed.returncode == 4
