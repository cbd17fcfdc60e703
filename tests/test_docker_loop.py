"""`devloop up` on the local Docker target: the loop with no cluster at all.

A subprocess on a small app, the real Docker engine, HTTP requests on 127.0.0.1; no kubeconfig
exists in the test's HOME, so `devloop up` picks the Docker target by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devloop.kbld.building import Engine
from tests.daemon_driver import Devloop
from tests.fixtures.engine import BaseImages, Leftovers
from tests.fixtures.registry import free_port

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[1]

DOCKERFILE = (
    'FROM {busybox}\nCOPY www /www\nCMD ["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]\n'
)
MANIFESTS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: {image}
          ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: {port}, targetPort: http}}]
---
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
sources: [{{image: {image}, path: app}}]
"""


def get(url: str, timeout: float = 30.0) -> str:
    """The body of GET url, retried until the deadline (a replaced container may be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def app_containers(engine: Engine, app: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = engine.api.containers(
        all=True, filters={"label": f"devloop.dev/app={app}"}
    )
    return found


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment with no kubeconfig anywhere (the Docker config, buildx included, stays)."""
    (tmp_path / "home").mkdir()
    docker_config = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return {"HOME": str(tmp_path / "home"), "KUBECONFIG": "", "DOCKER_CONFIG": docker_config}


@pytest.fixture
def running(
    tmp_path: Path,
    leftovers: Leftovers,
    base_images: BaseImages,
    home: dict[str, str],
    engine: Engine,
) -> Iterator[tuple[Devloop, Path, int]]:
    project, port = tmp_path / "project", free_port()
    (project / "app" / "www").mkdir(parents=True)
    (project / "config").mkdir()
    (project / "app" / "Dockerfile").write_text(DOCKERFILE.format(busybox=base_images.busybox))
    (project / "app" / "www" / "index.html").write_text("v1\n")
    (project / "config" / "app.yml").write_text(MANIFESTS.format(image=leftovers.image, port=port))
    devloop = Devloop(project, ["--app", leftovers.token, "--debounce-ms", "50"], env=home)
    yield devloop, project, port
    if devloop.proc.poll() is None:
        devloop.interrupt()  # the way a user stops it: devloop removes what it started
    devloop.stop()
    remove_app(engine, leftovers.token)  # whatever a killed run left (a test may kill it)


def remove_app(engine: Engine, app: str) -> None:
    for container in app_containers(engine, app):
        engine.api.remove_container(container["Id"], force=True)
    for network in engine.api.networks(filters={"label": f"devloop.dev/app={app}"}):
        engine.api.remove_network(network["Id"])


def test_without_a_cluster_the_app_runs_on_docker_and_an_edit_changes_the_answer(
    running: tuple[Devloop, Path, int], engine: Engine, leftovers: Leftovers
) -> None:
    devloop, project, port = running
    selected = devloop.wait("target.selected")
    assert selected["target"] == "docker" and "--kubeconfig" in selected["reason"]
    devloop.wait("rollout.finished")
    assert get(f"http://127.0.0.1:{port}/index.html") == "v1\n"

    mark = devloop.mark()
    (project / "app" / "www" / "index.html").write_text("v2\n")
    devloop.wait("build.finished", after=mark)
    devloop.wait("rollout.finished", after=mark)
    assert get(f"http://127.0.0.1:{port}/index.html") == "v2\n"
    assert len([c for c in app_containers(engine, leftovers.token) if c["State"] == "running"]) == 1

    assert devloop.interrupt() < 3
    assert app_containers(engine, leftovers.token) == []


def test_on_docker_the_built_tag_runs_as_built_and_the_delivery_is_said_once(
    running: tuple[Devloop, Path, int], engine: Engine, leftovers: Leftovers
) -> None:
    devloop, project, _ = running
    ref = devloop.wait("build.finished")["ref"]
    devloop.wait("rollout.finished")
    mark = devloop.mark()
    (project / "app" / "www" / "index.html").write_text("v2\n")
    second = devloop.wait("build.finished", after=mark)["ref"]
    devloop.wait("rollout.finished", after=mark)
    selected = devloop.named("delivery.selected")
    assert [(e["rung"], e["target"]) for e in selected] == [("engine", "docker")]
    assert "kbld: tags are used" in selected[0]["reason"]
    images = [
        c["Image"] for c in app_containers(engine, leftovers.token) if c["State"] == "running"
    ]
    assert ref.startswith("kbld:") and len(images) == 1  # the tag's image, pinned by its ID
    assert second.endswith("-" + images[0].replace(":", "-"))


def test_leftovers_of_a_killed_run_are_cleaned_up_on_the_next_start(
    running: tuple[Devloop, Path, int], engine: Engine, leftovers: Leftovers, home: dict[str, str]
) -> None:
    devloop, project, port = running
    devloop.wait("rollout.finished")
    devloop.stop()  # SIGKILL: no cleanup ran
    assert app_containers(engine, leftovers.token) != []
    (project / "app" / "www" / "index.html").write_text("after the crash\n")
    again = Devloop(project, ["--app", leftovers.token, "--debounce-ms", "50"], env=home)
    try:
        again.wait("rollout.finished")
        assert get(f"http://127.0.0.1:{port}/index.html") == "after the crash\n"
        assert len(app_containers(engine, leftovers.token)) == 1
        again.interrupt()
        assert app_containers(engine, leftovers.token) == []
    finally:
        again.stop()


def test_the_readme_quickstart_serves_the_sample_app_and_an_edit_changes_it(
    tmp_path: Path, base_images: BaseImages, engine: Engine, home: dict[str, str]
) -> None:
    project = tmp_path / "repo"
    for part in ("config", "sample-app-go"):
        shutil.copytree(ROOT / part, project / part)
    devloop = Devloop(project, ["--app", "quickstart", "--debounce-ms", "50"], env=home)
    try:
        devloop.wait("rollout.finished", timeout=240)
        assert get("http://127.0.0.1:8080/") == "Hello devloop user!\n"
        main = project / "sample-app-go" / "main.go"
        main.write_text(main.read_text().replace('"Hello %s!\\n"', '"Howdy %s!\\n"'))
        mark = devloop.mark()
        devloop.wait("rollout.finished", after=mark, timeout=240)
        assert get("http://127.0.0.1:8080/") == "Howdy devloop user!\n"
        devloop.interrupt()
        assert app_containers(engine, "quickstart") == []
    finally:
        devloop.stop()


def test_a_second_ctrl_c_exits_at_once_without_waiting_for_the_cleanup(
    running: tuple[Devloop, Path, int], engine: Engine, leftovers: Leftovers
) -> None:
    devloop, _, _ = running
    devloop.wait("rollout.finished")
    mark = devloop.mark()
    # busybox httpd is PID 1 and ignores SIGTERM: removing it takes the whole grace period,
    # so a cleanup that ran to its end would have removed the container.
    devloop.proc.send_signal(signal.SIGINT)
    devloop.wait("shutdown", after=mark)
    devloop.proc.send_signal(signal.SIGINT)
    assert devloop.proc.wait(timeout=10) == 130
    assert app_containers(engine, leftovers.token) != []  # the cleanup was cut short
    assert not any("Traceback" in line for line in devloop.stderr)
