"""The local test cluster is a real Kubernetes: it applies, validates, conflicts and rolls out.

Every later test of devloop's apply and rollout stages leans on these behaviours, so they are
proven here first with the kubernetes client alone (no devloop code) against scripts/local-cluster.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, dynamic
from kubernetes.client.exceptions import ApiException

from tests.fixtures.cluster import SCRIPT, Cluster, wait_until

MANAGER = "devloop-test"
Apply = Callable[..., Any]


def deployment(image: str, replicas: int = 2, name: str = "web") -> dict[str, Any]:
    labels = {"app": name}
    container = {"name": "app", "image": image}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


@pytest.fixture(scope="module")
def apply(kube_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Apply:
    """Server-side apply through the dynamic client, like `kubectl apply --server-side`."""
    cache = tmp_path_factory.mktemp("discovery") / "cache.json"
    api: Any = dynamic.DynamicClient(kube_api, cache_file=str(cache))  # type: ignore[no-untyped-call]
    resource = api.resources.get(api_version="apps/v1", kind="Deployment")

    def apply(
        body: dict[str, Any], namespace: str, manager: str = MANAGER, force: bool = True
    ) -> Any:
        return api.server_side_apply(
            resource, body=body, namespace=namespace, field_manager=manager, force_conflicts=force
        )

    return apply


def rolled_out(listed: Any) -> bool:
    """kubectl rollout status's test: the controller saw this generation and every pod is new."""
    if len(listed.items) != 1:
        return False
    spec, meta, status = listed.items[0].spec, listed.items[0].metadata, listed.items[0].status
    counts = (
        status.replicas,
        status.updated_replicas,
        status.ready_replicas,
        status.available_replicas,
    )
    return (status.observed_generation or 0) >= meta.generation and set(counts) == {spec.replicas}


def wait_for_rollout(kube_api: client.ApiClient, namespace: str, name: str = "web") -> Any:
    apps = client.AppsV1Api(kube_api)
    listed = wait_until(
        apps.list_namespaced_deployment,
        rolled_out,
        f"deployment {name} to roll out",
        namespace=namespace,
        field_selector=f"metadata.name={name}",
    )
    return listed.items[0]


def pods(kube_api: client.ApiClient, namespace: str) -> Any:
    return client.CoreV1Api(kube_api).list_namespaced_pod(namespace, label_selector="app=web")


def status_body(error: ApiException) -> Any:
    return json.loads(error.body or "{}")


def test_applied_deployment_rolls_out_every_replica(
    kube_api: client.ApiClient, namespace: str, apply: Apply
) -> None:
    applied = apply(deployment("local/app:1", replicas=3), namespace)

    rolled = wait_for_rollout(kube_api, namespace)

    assert rolled.status.observed_generation == applied.metadata.generation
    running = [p for p in pods(kube_api, namespace).items if p.status.phase == "Running"]
    assert len(running) == 3
    managers = {entry.manager for entry in rolled.metadata.managed_fields}
    assert MANAGER in managers


def test_new_image_rolls_out_a_new_replicaset_and_old_pods_go_away(
    kube_api: client.ApiClient, namespace: str, apply: Apply
) -> None:
    apply(deployment("local/app:1"), namespace)
    wait_for_rollout(kube_api, namespace)

    apply(deployment("local/app:2"), namespace)
    wait_for_rollout(kube_api, namespace)

    apps: Any = client.AppsV1Api(kube_api)  # typed models are Optional all the way down
    sets = apps.list_namespaced_replica_set(namespace).items
    replicas = {rs.spec.template.spec.containers[0].image: rs for rs in sets}
    assert set(replicas) == {"local/app:1", "local/app:2"}
    assert replicas["local/app:1"].spec.replicas == 0
    assert replicas["local/app:2"].status.ready_replicas == 2
    new_set = replicas["local/app:2"].metadata.name
    only_new = wait_until(
        client.CoreV1Api(kube_api).list_namespaced_pod,
        lambda listed: {p.metadata.owner_references[0].name for p in listed.items} == {new_set},
        "old pods to be deleted",
        namespace=namespace,
    )
    assert {p.spec.containers[0].image for p in only_new.items} == {"local/app:2"}


def test_invalid_object_is_rejected_with_the_api_servers_message(
    kube_api: client.ApiClient, namespace: str, apply: Apply
) -> None:
    with pytest.raises(ApiException) as rejected:
        apply(deployment("local/app:1", replicas=-1), namespace)

    assert rejected.value.status == 422
    body = status_body(rejected.value)
    assert body["reason"] == "Invalid"
    assert "spec.replicas: Invalid value: -1" in body["message"]
    assert [cause["field"] for cause in body["details"]["causes"]] == ["spec.replicas"]
    assert pods(kube_api, namespace).items == []


def test_field_manager_conflict_is_reported_as_a_conflict(
    kube_api: client.ApiClient, namespace: str, apply: Apply
) -> None:
    apply(deployment("local/app:1", replicas=1), namespace, manager="first-writer")

    with pytest.raises(ApiException) as conflict:
        apply(deployment("local/app:1", replicas=3), namespace, manager="second", force=False)

    assert conflict.value.status == 409
    body = status_body(conflict.value)
    assert body["reason"] == "Conflict"
    assert '"first-writer"' in body["message"]
    assert [cause["field"] for cause in body["details"]["causes"]] == [".spec.replicas"]
    unchanged = client.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace)
    assert unchanged.spec.replicas == 1


def test_job_pods_run_to_completion(kube_api: client.ApiClient, namespace: str) -> None:
    batch: Any = client.BatchV1Api(kube_api)
    container = {"name": "once", "image": "local/job:1"}
    spec = {"template": {"spec": {"containers": [container], "restartPolicy": "Never"}}}
    batch.create_namespaced_job(namespace, {"metadata": {"name": "once"}, "spec": spec})

    done = wait_until(
        batch.list_namespaced_job,
        lambda listed: any(j.status.succeeded == 1 for j in listed.items),
        "job once to succeed",
        namespace=namespace,
    )

    conditions = {c.type: c.status for c in done.items[0].status.conditions}
    assert conditions["Complete"] == "True"


def local_only(cluster: Cluster) -> Path:
    if cluster.dir is None:
        pytest.skip("checks scripts/local-cluster itself; DEVLOOP_TEST_KUBECONFIG names another")
    return cluster.dir


def test_pods_land_on_a_ready_node_addressed_only_on_loopback(
    cluster: Cluster, kube_api: client.ApiClient, namespace: str, apply: Apply
) -> None:
    local_only(cluster)
    apply(deployment("local/app:1"), namespace)
    wait_for_rollout(kube_api, namespace)

    placed = pods(kube_api, namespace).items
    core: Any = client.CoreV1Api(kube_api)
    nodes = {n.metadata.name: n for n in core.list_node().items}

    for pod in placed:
        node = nodes[pod.spec.node_name]
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
        internal = {a.address for a in node.status.addresses if a.type == "InternalIP"}
        assert internal == {"127.0.0.1"}
        assert pod.status.host_ip == "127.0.0.1"


def test_kubeconfig_trusts_only_the_generated_ca(cluster: Cluster) -> None:
    local_only(cluster)
    kubeconfig = json.loads(cluster.kubeconfig.read_text())
    entry = kubeconfig["clusters"][0]["cluster"]
    assert "insecure-skip-tls-verify" not in entry
    entry.pop("certificate-authority-data")
    loader: Any = config.kube_config.KubeConfigLoader(kubeconfig)  # type: ignore[no-untyped-call]
    settings = client.Configuration()
    loader.load_and_set(settings)

    # Without our CA the system trust store must refuse the serving certificate.
    with client.ApiClient(settings) as untrusting, pytest.raises(Exception, match="CERTIFICATE"):
        client.VersionApi(untrusting).get_code(_request_timeout=5)


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(SCRIPT), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=300)


def test_up_refuses_a_directory_whose_cluster_is_running(cluster: Cluster) -> None:
    state = local_only(cluster)

    again = run_script("up", "--dir", str(state))

    assert again.returncode == 1
    assert "already running" in again.stderr
    assert f"down --dir {state}" in again.stderr
    assert "Traceback" not in again.stderr
    assert again.stdout == ""


def test_status_lists_every_component_running(cluster: Cluster) -> None:
    state = local_only(cluster)

    shown = run_script("status", "--dir", str(state))

    assert shown.returncode == 0
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()}
    for component in (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    ):
        assert "running pid=" in lines[component]


def test_down_is_safe_when_nothing_runs(tmp_path: Path) -> None:
    first = run_script("down", "--dir", str(tmp_path))
    second = run_script("down", "--dir", str(tmp_path))

    assert (first.returncode, second.returncode) == (0, 0)
    assert "nothing running" in second.stdout


def cached_binaries() -> dict[str, Path]:
    built = subprocess.run(
        [str(SCRIPT.parent / "build-cluster-binaries"), "--cached"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {k: Path(v) for k, v in (line.split("=", 1) for line in built.stdout.splitlines())}


def test_a_component_dying_at_start_up_is_reported_with_its_log(tmp_path: Path) -> None:
    # A cache whose kube-apiserver fails at once; the rest are the real, already built binaries.
    real, cache = cached_binaries(), tmp_path / "cache" / "bin"
    for directory in real.values():
        (cache / directory.name).mkdir(parents=True)
        for item in directory.iterdir():
            (cache / directory.name / item.name).symlink_to(item)
    broken = cache / real["kubernetes"].name / "kube-apiserver"
    broken.unlink()
    broken.write_text("#!/bin/sh\necho 'E0000 fake failure: etcd is on fire' >&2\nexit 3\n")
    broken.chmod(0o755)
    env = {**os.environ, "DEVLOOP_CACHE_DIR": str(tmp_path / "cache")}

    failed = run_script("up", "--dir", str(tmp_path / "c"), env=env)

    assert failed.returncode == 1
    assert "kube-apiserver exited with code 3 during start-up" in failed.stderr
    assert "etcd is on fire" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not list((tmp_path / "c" / "run").glob("*.json"))  # etcd was stopped again


def test_up_without_cached_binaries_fails_at_once_saying_to_run_dev_env(tmp_path: Path) -> None:
    env = {**os.environ, "DEVLOOP_CACHE_DIR": str(tmp_path / "empty")}

    failed = run_script("up", "--dir", str(tmp_path / "c"), env=env)

    assert failed.returncode == 1
    assert "is not built" in failed.stderr
    assert "run scripts/dev-env" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "empty" / "src").exists()  # nothing was even started


def running(pid: int) -> bool:
    """Alive and not a zombie: stopped components are reaped by init, not by us."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_cluster_stops_itself_when_its_owner_is_killed(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    state = tmp_path / "c"
    try:
        started = run_script("up", "--dir", str(state), "--stop-with", str(owner.pid))
        assert started.returncode == 0, started.stderr
        pidfiles = (state / "run").glob("*.json")
        pids = {path.stem: json.loads(path.read_text())["pid"] for path in pidfiles}
        watchdog = os.pidfd_open(pids["watchdog"])
    finally:
        owner.kill()
        owner.wait()

    ended, _, _ = select.select([watchdog], [], [], 60)  # readable once the watchdog has exited
    os.close(watchdog)
    assert ended, "the watchdog did not stop the cluster within 60 s"
    assert [name for name, pid in pids.items() if running(pid)] == []
    assert not (state / "run").exists()
    assert not (state / "etcd").exists()
