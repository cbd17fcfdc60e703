"""`devloop up` end to end: a subprocess on a small app, the real engine and the real cluster.

Each test copies a tiny app (a busybox image whose build can be made slow or broken by editing
files), runs `devloop up --log-format json` on it, edits files as a developer would, and waits
for the events of the JSON stream; what reached the cluster is read back from the API server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from devloop.kbld.building import Engine
from tests.daemon_driver import ROOT, Devloop
from tests.engine_proxy import EngineProxy
from tests.fixtures.cluster import SCRIPT as LOCAL_CLUSTER
from tests.fixtures.engine import BaseImages, Leftovers
from tests.fixtures.registry import free_port
from tests.procs import live_processes

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

DOCKERFILE = """\
FROM {busybox}
COPY . /app/
RUN if grep -q slow /app/mode.txt; then echo {token} sleeping; sleep 120; fi
RUN if grep -q broken /app/mode.txt; then echo {token} failing on purpose; exit 3; fi
"""
DEPLOYMENT = """\
# the app under test; devloop rewrites the image below
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: {image}
"""
EXTRA = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: extra
data:
  greeting: hello
"""
BUILD = """\
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
sources:
  - image: {image}
    path: app
"""


class App:
    """A temporary project: app/ (the build context) and config/ (the manifests)."""

    def __init__(self, root: Path, image: str, token: str, busybox: str) -> None:
        self.root, self.image = root, image
        (root / "app").mkdir(parents=True)
        (root / "config").mkdir()
        self.write("app/Dockerfile", DOCKERFILE.format(busybox=busybox, token=token))
        self.write("app/.dockerignore", "scratch/\n")
        self.write("app/mode.txt", "fast\n")
        self.write("app/content.txt", "v1\n")
        self.write("config/deployment.yml", DEPLOYMENT.format(image=image))
        self.write("config/extra.yml", EXTRA)
        self.write("config/build.yml", BUILD.format(image=image))

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def app(tmp_path: Path, leftovers: Leftovers, base_images: BaseImages) -> App:
    return App(tmp_path / "project", leftovers.image, leftovers.token, base_images.busybox)


@pytest.fixture
def up(app: App, cluster: Any, namespace: str) -> Iterator[Any]:
    """`up(*extra_args)` starts devloop in the app; every process is killed at the end."""
    started: list[Devloop] = []

    def start(*extra: str, kubeconfig: Path | None = None, ns: str = namespace) -> Devloop:
        args = ["--app", "web", "--namespace", ns, "--debounce-ms", "50"]
        args += ["--kubeconfig", str(kubeconfig or cluster.kubeconfig), *extra]
        started.append(Devloop(app.root, args))
        return started[-1]

    yield start
    for devloop in started:
        devloop.stop()


def deployed_image(kube_api: client.ApiClient, namespace: str) -> str:
    deployment = client.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace)
    return str(deployment.spec.template.spec.containers[0].image)


def file_in_image(engine: Engine, image: str, path: str) -> str:
    """Read one file out of a built image (create a container, copy, remove)."""
    container = engine.api.create_container(image, command=["true"])
    try:
        stream, _ = engine.api.get_archive(container["Id"], path)
        import io
        import tarfile

        data = io.BytesIO(b"".join(stream))
        with tarfile.open(fileobj=data) as tar:
            member = tar.next()
            assert member is not None
            extracted = tar.extractfile(member)
            assert extracted is not None
            return extracted.read().decode()
    finally:
        engine.api.remove_container(container["Id"], force=True)


def first_deploy(devloop: Devloop) -> str:
    """Wait for the first build and rollout; return the deployed reference."""
    built = devloop.wait("build.finished")
    devloop.wait("rollout.finished")
    return str(built["ref"])


def test_first_start_builds_the_image_and_rolls_it_out(
    up: Any, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up()
    ref = first_deploy(devloop)
    assert ref.startswith("kbld:devloop-test-")
    assert deployed_image(kube_api, namespace) == ref
    finals = [e["line"] for e in devloop.named("output") if e["source"] == "resolve"]
    assert any(line.endswith(f"-> {ref}") for line in finals)
    logs = list((Path(devloop.cwd) / ".devloop" / "logs").glob("devloop.test-*.log"))
    assert len(logs) == 1 and "finished build (using BuildKit)" in logs[0].read_text()


def test_an_edit_rolls_out_a_new_image_and_an_unchanged_save_builds_nothing(
    up: Any, app: App, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up()
    first = first_deploy(devloop)
    mark = devloop.mark()
    app.write("app/content.txt", "v2\n")
    started = devloop.wait("build.started", after=mark)
    assert "content.txt" in started["reason"]
    second = devloop.wait("build.finished", after=mark)["ref"]
    devloop.wait("rollout.finished", after=mark)
    assert second != first and deployed_image(kube_api, namespace) == second

    mark = devloop.mark()
    app.write("app/content.txt", "v2\n")  # saved again, same bytes
    devloop.wait("build.skipped", after=mark)
    app.write("config/extra.yml", EXTRA.replace("hello", "sentinel"))  # a barrier: one apply
    devloop.wait("apply.finished", after=mark)
    assert devloop.named("build.started", after=mark) == []
    assert len(devloop.named("apply.started", after=mark)) == 1, "the no-op save applied nothing"


def test_a_burst_of_saves_deploys_the_last_content_with_at_most_two_builds(
    up: Any, app: App, engine: Engine, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up()
    first_deploy(devloop)
    mark = devloop.mark()
    for n in range(20):
        app.write("app/content.txt", f"burst {n}\n")
    deadline = time.monotonic() + 60
    while True:
        rolled = devloop.wait("rollout.finished", after=mark)
        ref = deployed_image(kube_api, namespace)
        if file_in_image(engine, ref, "/app/content.txt") == "burst 19\n":
            break
        assert time.monotonic() < deadline, devloop.transcript()
        mark = devloop.events.index(rolled) + 1
    builds = [e for e in devloop.named("build.started") if "content.txt" in e["reason"]]
    assert 1 <= len(builds) <= 2, devloop.transcript()


def test_an_edit_during_a_slow_build_cancels_it(
    up: Any, app: App, engine: Engine, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up()
    first_deploy(devloop)
    mark = devloop.mark()
    app.write("app/mode.txt", "slow\n")
    devloop.wait("output", lambda e: "sleeping" in e["line"], after=mark)
    app.write("app/mode.txt", "fast\n")
    app.write("app/content.txt", "after the slow one\n")
    cancelled = devloop.wait("build.cancelled", after=mark)
    assert cancelled["seconds"] < 60
    ref = devloop.wait("build.finished", after=mark)["ref"]
    devloop.wait("rollout.finished", after=mark)
    assert deployed_image(kube_api, namespace) == ref
    assert file_in_image(engine, ref, "/app/content.txt") == "after the slow one\n"


def test_a_broken_build_keeps_the_old_image_running_and_the_fix_recovers(
    up: Any, app: App, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up()
    good = first_deploy(devloop)
    mark = devloop.mark()
    app.write("app/mode.txt", "broken\n")
    failed = devloop.wait("build.failed", after=mark)
    assert "failing on purpose" in failed["reason"]
    assert f"{app.image} | " in failed["reason"], "the tail of the build is shown, prefixed"
    assert deployed_image(kube_api, namespace) == good

    mark = devloop.mark()
    app.write("app/mode.txt", "fast\n")
    app.write("app/content.txt", "fixed\n")
    fixed = devloop.wait("build.finished", after=mark)["ref"]
    devloop.wait("rollout.finished", after=mark)
    assert deployed_image(kube_api, namespace) == fixed != good


def test_a_removed_manifest_is_pruned(
    up: Any, app: App, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up()
    first_deploy(devloop)
    core = client.CoreV1Api(kube_api)
    assert core.read_namespaced_config_map("extra", namespace).data == {"greeting": "hello"}
    mark = devloop.mark()
    (app.root / "config" / "extra.yml").unlink()
    applied = devloop.wait("apply.finished", after=mark)
    assert applied["pruned"] == 1
    names = [c.metadata.name for c in core.list_namespaced_config_map(namespace).items]
    assert "extra" not in names


def test_a_config_error_is_reported_and_its_fix_recovers(
    up: Any, app: App, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up()
    first_deploy(devloop)
    mark = devloop.mark()
    app.write("config/extra.yml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra\n")
    failed = devloop.wait("config.failed", after=mark)
    assert "extra.yml, document 1" in failed["reason"]
    assert "Traceback" not in failed["reason"]
    mark = devloop.mark()
    app.write("config/extra.yml", EXTRA.replace("hello", "fixed"))
    devloop.wait("apply.finished", after=mark)
    data = client.CoreV1Api(kube_api).read_namespaced_config_map("extra", namespace).data
    assert data == {"greeting": "fixed"}
    assert devloop.proc.poll() is None


def test_ctrl_c_stops_a_running_build_and_exits_in_time_leaving_nothing(up: Any, app: App) -> None:
    devloop = up()
    first_deploy(devloop)
    mark = devloop.mark()
    app.write("app/mode.txt", "slow\n")
    devloop.wait("output", lambda e: "sleeping" in e["line"], after=mark)
    seconds = devloop.interrupt()
    assert seconds < 3, devloop.transcript()
    assert devloop.proc.returncode == 0
    assert live_processes(pgrp=devloop.proc.pid) == set()
    # the `leftovers` fixture then fails the test if a temporary tag or build container is left


def test_cleanup_deletes_the_app_on_exit(
    up: Any, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up("--cleanup")
    first_deploy(devloop)
    devloop.interrupt()
    names = [
        d.metadata.name
        for d in client.AppsV1Api(kube_api).list_namespaced_deployment(namespace).items
    ]
    assert names == []


def test_a_render_command_is_rerun_when_its_inputs_change(
    up: Any, app: App, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up(
        "--render",
        "for f in config/*.yml; do echo ---; cat $f; done",
        "--render-input",
        "config",
    )
    first_deploy(devloop)
    mark = devloop.mark()
    app.write("config/extra.yml", EXTRA.replace("hello", "rendered"))
    devloop.wait("apply.finished", after=mark)
    data = client.CoreV1Api(kube_api).read_namespaced_config_map("extra", namespace).data
    assert data == {"greeting": "rendered"}
    assert devloop.named("build.started", after=mark) == []


def test_the_cluster_going_away_and_coming_back_is_recovered(
    up: Any, app: App, tmp_path: Path, kube_api: client.ApiClient
) -> None:
    own = tmp_path / "cluster"
    done = subprocess.run(
        [str(LOCAL_CLUSTER), "up", "--dir", str(own)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    kubeconfig = Path(done.stdout.strip().splitlines()[-1])
    try:
        devloop = up(kubeconfig=kubeconfig, ns="default")
        first_deploy(devloop)
        record = _stop_component(own, "kube-apiserver")
        mark = devloop.mark()
        app.write("app/content.txt", "while the cluster was away\n")
        ref = devloop.wait("build.finished", after=mark)["ref"]
        failed = devloop.wait("apply.failed", after=mark)
        assert failed.get("retrying") is True
        assert devloop.proc.poll() is None
        _start_component(own, "kube-apiserver", record)
        devloop.wait("rollout.finished", after=mark, timeout=120)
        assert devloop.proc.poll() is None
        api = client.ApiClient(_configuration(kubeconfig))
        assert deployed_image(api, "default") == ref
    finally:
        subprocess.run([str(LOCAL_CLUSTER), "down", "--dir", str(own)], timeout=120, check=False)


def _configuration(kubeconfig: Path) -> client.Configuration:
    from kubernetes import config

    configuration = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=configuration)
    return configuration


def _stop_component(state: Path, name: str) -> dict[str, Any]:
    pidfile = state / "run" / f"{name}.json"
    record: dict[str, Any] = json.loads(pidfile.read_text())
    os.killpg(record["pid"], signal.SIGKILL)  # a crash, not a clean shutdown
    deadline = time.monotonic() + 30
    while Path(f"/proc/{record['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return record


def _start_component(state: Path, name: str, record: dict[str, Any]) -> None:
    with (state / "logs" / f"{name}.restarted.log").open("wb") as log:
        process = subprocess.Popen(
            record["argv"],
            stdout=log,
            stderr=log,
            cwd=state,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    record = {**record, "pid": process.pid}
    (state / "run" / f"{name}.json").write_text(json.dumps(record) + "\n")


def test_down_deletes_what_up_applied_after_up_has_exited(
    up: Any, app: App, cluster: Any, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up()
    first_deploy(devloop)
    devloop.interrupt()
    apps = client.AppsV1Api(kube_api)
    assert [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items] == ["web"]
    args = ["down", "--app", "web", "-n", namespace, "--kubeconfig", str(cluster.kubeconfig)]
    done = subprocess.run(
        [sys.executable, "-m", "devloop.cli", *args],
        cwd=app.root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert "deleted Deployment/web" in done.stdout
    assert apps.list_namespaced_deployment(namespace).items == []
    names = [
        c.metadata.name
        for c in client.CoreV1Api(kube_api).list_namespaced_config_map(namespace).items
    ]
    assert "extra" not in names and "devloop-inventory-web" not in names


def test_the_docker_engine_going_away_and_coming_back_is_recovered(
    app: App, cluster: Any, namespace: str, kube_api: client.ApiClient, tmp_path: Path
) -> None:
    proxy = EngineProxy(tmp_path / "engine.sock")
    proxy.start()
    args = ["--app", "web", "-n", namespace, "--kubeconfig", str(cluster.kubeconfig)]
    devloop = Devloop(app.root, args, env={"DOCKER_HOST": proxy.docker_host})
    try:
        first_deploy(devloop)
        proxy.stop()
        mark = devloop.mark()
        app.write("app/content.txt", "built once the engine is back\n")
        failed = devloop.wait("build.failed", after=mark)
        assert failed["retrying"] is True and "Docker engine" in failed["reason"]
        proxy.start()
        ref = devloop.wait("build.finished", after=mark)["ref"]
        devloop.wait("rollout.finished", after=mark)
        assert deployed_image(kube_api, namespace) == ref
        assert len(devloop.named("build.failed", after=mark)) == 1, "the outage is said once"
    finally:
        devloop.stop()
        proxy.stop()


def test_a_rejected_manifest_shows_the_api_server_message_with_its_file_and_resource(
    up: Any, app: App
) -> None:
    devloop = up()
    first_deploy(devloop)
    mark = devloop.mark()
    bad = DEPLOYMENT.format(image=app.image).replace("name: web", "name: bad", 1)
    app.write("config/bad.yml", bad.replace("replicas: 1", "replicas: -1"))
    failed = devloop.wait("apply.failed", after=mark)
    assert "config/bad.yml, document 1" in failed["reason"]
    assert "Deployment/bad" in failed["reason"]
    assert "greater than or equal to 0" in failed["reason"]
    mark = devloop.mark()
    (app.root / "config" / "bad.yml").unlink()
    devloop.wait("apply.finished", after=mark)
    assert devloop.proc.poll() is None


def test_an_image_the_registry_cannot_resolve_is_deployed_as_written_and_reported(
    up: Any, app: App, kube_api: client.ApiClient, namespace: str
) -> None:
    sidecar = f"127.0.0.1:{free_port()}/sidecar:1"  # nothing listens there
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: side}\nspec:\n  containers:\n"
    app.write("config/side.yml", pod + f"    - name: side\n      image: {sidecar}\n")
    devloop = up()
    first_deploy(devloop)
    skipped = devloop.wait("resolve.skipped")
    assert skipped["ref"] == sidecar and "cannot reach registry" in skipped["reason"]
    live = client.CoreV1Api(kube_api).read_namespaced_pod("side", namespace)
    assert live.spec.containers[0].image == sidecar
