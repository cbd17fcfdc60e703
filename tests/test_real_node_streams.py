"""The app's output and ports on the real node: what `devloop up` shows is what the pods say.

The app (busybox) numbers its lines and serves its greeting on :8080, so a missing or repeated
line is a missing or repeated number. `devloop up` builds it, pushes it to the cluster's
registry and follows it through an edit (a new pod replaces the old one) and through a restart
of the container in place; the forwarded port answers through both. Needs the `real_cluster`
fixture of the real-node plugin (tests/fixtures/cluster.py, issue 12).
"""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.daemon_driver import Devloop, Event
from tests.fixtures.cluster import RealCluster, wait_until
from tests.fixtures.engine import BaseImages, Leftovers

pytestmark = [pytest.mark.docker]
PREFIX = "counter/app"
# The counter survives a restart of the container in an emptyDir; the first instance exits
# after line EXIT_AT, once, so the container is restarted in place by the kubelet.
DOCKERFILE = """FROM {busybox}
COPY run.sh /run.sh
CMD ["sh", "/run.sh"]
"""
RUN_SH = """\
mkdir -p /tmp/www && echo "$MSG" > /tmp/www/index.html && httpd -p 8080 -h /tmp/www
trap 'exit 0' TERM
i=$(cat /data/n 2>/dev/null || echo 0)
while true; do
  if [ "$i" -eq "$EXIT_AT" ] && [ ! -e /data/restarted ]; then touch /data/restarted; exit 3; fi
  i=$((i+1))
  echo "$MSG $i"
  echo "$i" > /data/n
  sleep 0.05
done
"""
CONFIG = """\
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
sources:
  - image: {image}
    path: app
destinations:
  - image: {image}
    newImage: {registry}/devloop-test/{token}-counter
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: counter
spec:
  replicas: 1
  selector:
    matchLabels: {{app: counter}}
  template:
    metadata:
      labels: {{app: counter}}
    spec:
      terminationGracePeriodSeconds: 5
      initContainers:
        - {{name: init, image: {image}, command: [sh, -c, "echo init $MSG"],
            env: [{{name: MSG, value: one}}]}}
      containers:
        - name: app
          image: {image}
          env:
            - {{name: MSG, value: one}}
            - {{name: EXIT_AT, value: "{exit_at}"}}
          ports:
            - {{name: http, containerPort: 8080}}
          readinessProbe:
            httpGet: {{path: /, port: http}}
            periodSeconds: 1
          volumeMounts:
            - {{name: data, mountPath: /data}}
      volumes:
        - {{name: data, emptyDir: {{}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: counter
spec:
  selector: {{app: counter}}
  ports:
    - {{name: http, port: {port}, targetPort: http}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def counter(
    tmp_path: Path, real_cluster: RealCluster, leftovers: Leftovers, base_images: BaseImages
) -> Iterator[Any]:
    """`counter(exit_at)` writes the project; `up(project)` runs devloop on it (killed after)."""
    started: list[Devloop] = []

    def make(exit_at: int, namespace: str) -> tuple[Path, int, Devloop]:
        project, port = tmp_path / "project", free_port()
        (project / "app").mkdir(parents=True)
        (project / "config").mkdir()
        (project / "app" / "Dockerfile").write_text(DOCKERFILE.format(busybox=base_images.busybox))
        (project / "app" / "run.sh").write_text(RUN_SH)
        config = CONFIG.format(image=leftovers.image, registry=real_cluster.registry,
                               token=leftovers.token, exit_at=exit_at, port=port)  # fmt: skip
        (project / "config" / "app.yml").write_text(config)
        args = ["--namespace", namespace, "--kubeconfig", str(real_cluster.kubeconfig)]
        args += ["--debounce-ms", "50", "--rollout-timeout", "90", "-f", "config/"]
        started.append(Devloop(project, args))
        return project, port, started[-1]

    yield make
    for devloop in started:
        devloop.stop()


def numbers(devloop: Devloop, message: str) -> list[int]:
    """The sequence numbers of the app's `<message> <n>` lines, in the order shown."""
    found = []
    for event in devloop.named("output"):
        match = re.fullmatch(rf"{message} (\d+)", str(event.get("line", "")))
        if event.get("source") == PREFIX and match:
            found.append(int(match.group(1)))
    return found


def line(message: str, n: int) -> Any:
    return lambda e: e.get("source") == PREFIX and e.get("line") == f"{message} {n}"


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
        return str(answer.read().decode())


def no_pod_with(api: client.ApiClient, namespace: str, message: str) -> None:
    core: Any = client.CoreV1Api(api)

    def gone(found: Any) -> bool:
        return not any(
            env.value == message
            for pod in found.items
            for env in pod.spec.containers[0].env or ()
            if env.name == "MSG"
        )

    wait_until(core.list_namespaced_pod, gone, f"no pod saying {message}", namespace=namespace)


def test_the_apps_lines_and_port_follow_the_new_pod_after_an_edit_with_no_line_twice_or_lost(
    counter: Any, real_kube_api: client.ApiClient, real_namespace: str
) -> None:
    project, port, devloop = counter(10**9, real_namespace)
    devloop.wait("rollout.finished", timeout=240)
    devloop.wait("output", line("one", 20))
    devloop.wait("output", lambda e: e.get("source") == "counter/init" and e["line"] == "init one")
    ready: Event = devloop.wait("portforward.ready")
    assert ready["url"] == f"http://127.0.0.1:{port}"
    assert get(port) == "one\n"

    mark = devloop.mark()
    app = project / "config" / "app.yml"
    app.write_text(app.read_text().replace("{name: MSG, value: one}", "{name: MSG, value: two}"))
    devloop.wait("rollout.finished", after=mark)
    devloop.wait("output", line("two", 20), after=mark)
    devloop.wait("output", lambda e: e.get("source") == "counter/init" and e["line"] == "init two")
    assert get(port) == "two\n"  # the same local port, now the new pod

    no_pod_with(real_kube_api, real_namespace, "one")
    old = len(numbers(devloop, "one"))
    shown = len(numbers(devloop, "two"))
    devloop.wait("output", line("two", shown + 20))
    assert len(numbers(devloop, "one")) == old  # the old pod's lines stopped with it
    ones, twos = numbers(devloop, "one"), numbers(devloop, "two")
    assert ones == list(range(1, len(ones) + 1))  # from its first line to its last, once each
    assert twos == list(range(1, len(twos) + 1))

    devloop.interrupt()
    with pytest.raises(OSError):  # Ctrl-C closed the listener
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_container_restarted_in_place_resumes_its_lines_without_gaps_or_duplicates(
    counter: Any, real_namespace: str
) -> None:
    _, port, devloop = counter(150, real_namespace)
    devloop.wait("rollout.finished", timeout=240)
    devloop.wait("output", line("one", 150))
    devloop.wait("output", line("one", 200), timeout=120)  # after the kubelet restarted it
    seen = numbers(devloop, "one")
    assert seen == list(range(1, len(seen) + 1))
    assert get(port) == "one\n"
