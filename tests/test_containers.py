"""containers.py against the real Docker engine, with tiny busybox images made on the spot.

Nothing can be pulled here, so `busybox_image` imports a tar of busybox-static plus a web page;
`test_docker_target.py` uses the same helpers.
"""

from __future__ import annotations

import io
import socket
import tarfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest

from devloop.errors import DevloopError, EngineUnavailable
from devloop.kbld import engine
from devloop.targets.docker import containers
from devloop.targets.docker.plan import ContainerSpec, Port, network_name

pytestmark = pytest.mark.docker

BUSYBOX = Path("/bin/busybox")
HTTPD = ("/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www")
TEST_REPO = "devloop-test/tiny"


def busybox_image(tag: str, page: str) -> str:
    """Import an image with busybox and /www/index.html holding `page`; serves it by default."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        _add_text(tar, "www/index.html", page)
        _add_text(tar, "tmp/.keep", "")
    cmd = '["' + '","'.join(HTTPD) + '"]'
    client = docker.from_env()
    client.api.import_image_from_data(
        buffer.getvalue(), repository=TEST_REPO, tag=tag, changes=[f"CMD {cmd}"]
    )
    return f"{TEST_REPO}:{tag}"


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return str(answer.read().decode())


def wait_for(predicate: object, seconds: float = 10.0) -> None:
    """Poll a condition of the engine (its state changes on its own time, not ours)."""
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def fresh_app() -> Iterator[str]:
    """A fresh app name with its network; fails the test if it leaves a container behind."""
    name = f"t{uuid.uuid4().hex[:8]}"
    containers.ensure_network(name)
    yield name
    leaked = containers.list_app(name)
    containers.remove_app(name, 0)
    assert [info.name for info in leaked] == []


@pytest.fixture
def app() -> Iterator[str]:
    yield from fresh_app()


@pytest.fixture(scope="session")
def page_image() -> str:
    return busybox_image("page", "hello from the image\n")


def spec_for(app: str, image: str, **fields: Any) -> ContainerSpec:
    base = ContainerSpec(app=app, kind="Deployment", workload="web", container="web", image=image)
    return replace(base, **fields)


def run_to_exit(spec: ContainerSpec) -> tuple[str, containers.Status]:
    container_id = containers.run(spec)
    wait_for(lambda: containers.status(container_id).exit_code is not None)
    return container_id, containers.status(container_id)


def test_a_started_container_serves_on_the_loopback_port_the_engine_published_for_it(
    app: str, page_image: str
) -> None:
    # The Service port itself is devloop's listener (forwarding.py), not the engine's.
    spec = spec_for(app, page_image, ports=(Port(free_port(), 8080),))
    container_id = containers.run(spec)
    [published] = containers.published_tcp(container_id).items()
    assert published[0] == 8080
    wait_for(lambda: _answers(published[1]))
    assert fetch(published[1]) == "hello from the image\n"
    [info] = containers.list_app(app)
    assert (info.id, info.key, info.spec_hash) == (
        container_id,
        ("Deployment/web", "web"),
        spec.spec_hash,
    )
    assert info.host_ports == set() and info.status.running  # no fixed host port is held
    containers.remove_app(app, 1)


def _answers(port: int) -> bool:
    try:
        fetch(port)
    except OSError:
        return False
    return True


def test_the_environment_command_and_working_dir_reach_the_process(
    app: str, page_image: str
) -> None:
    script = 'echo "$GREETING from $(pwd)" >&2'  # stderr is part of the output too
    spec = spec_for(
        app,
        page_image,
        entrypoint=("/bin/busybox", "sh", "-c"),
        cmd=(script,),
        env=(("GREETING", "hi there"),),
        working_dir="/www",
        restart="no",
    )
    container_id, status = run_to_exit(spec)
    assert status.exit_code == 0
    assert containers.last_lines(container_id, 5) == ["hi there from /www"]
    containers.remove_app(app, 0)


def test_a_crashed_container_reports_its_exit_code_and_last_lines(
    app: str, page_image: str
) -> None:
    script = "for i in 1 2 3 4; do echo line $i; done; echo broken; exit 7"
    spec = spec_for(app, page_image, entrypoint=("/bin/busybox", "sh", "-c", script), restart="no")
    container_id, status = run_to_exit(spec)
    assert (status.running, status.exit_code, status.state) == (False, 7, "exited")
    assert containers.last_lines(container_id, 2) == ["line 4", "broken"]
    containers.remove_app(app, 0)


def test_followed_output_arrives_as_whole_lines_and_stops_on_request(
    app: str, page_image: str
) -> None:
    # Half a line, a pause, the rest: the engine sends them as separate frames.
    script = 'printf "hal"; sleep 0.3; printf "f line\\nsecond\\n"; exec sleep 1000'
    spec = spec_for(app, page_image, entrypoint=("/bin/busybox", "sh", "-c", script))
    container_id = containers.run(spec)
    lines: list[str] = []
    got_two, stop = threading.Event(), threading.Event()

    def on_line(line: str) -> None:
        lines.append(line)
        if len(lines) == 2:
            got_two.set()

    follower = threading.Thread(target=containers.logs_stream, args=(container_id, on_line, stop))
    follower.start()
    assert got_two.wait(10)
    stop.set()
    follower.join(10)
    assert not follower.is_alive()
    assert lines == ["half line", "second"]
    containers.remove_app(app, 0)


def test_following_ends_by_itself_when_the_container_is_removed(app: str, page_image: str) -> None:
    spec = spec_for(app, page_image, entrypoint=("/bin/busybox", "sleep", "1000"))
    container_id = containers.run(spec)
    stop = threading.Event()
    follower = threading.Thread(
        target=containers.logs_stream, args=(container_id, lambda line: None, stop)
    )
    follower.start()
    containers.stop_and_remove(container_id, 1)
    follower.join(10)
    assert not follower.is_alive() and stop.is_set()


def test_remove_app_removes_stopped_and_running_containers_and_the_network(
    app: str, page_image: str
) -> None:
    network = network_name(app)
    sleeper = spec_for(app, page_image, entrypoint=("/bin/busybox", "sleep", "1000"))
    running = containers.run(sleeper)
    done = spec_for(app, page_image, container="done", entrypoint=("/bin/busybox", "true"))
    stopped, _ = run_to_exit(replace(done, restart="no"))
    assert {i.id for i in containers.list_app(app)} == {running, stopped}
    containers.remove_app(app, 1)
    assert containers.list_app(app) == []
    assert docker.from_env().networks.list(names=[network]) == []


def test_a_udp_host_port_in_use_fails_the_start_and_leaves_no_container(
    app: str, page_image: str
) -> None:
    # UDP ports are published by the engine; a taken TCP Service port is the forwarder's error
    with socket.socket(type=socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = squatter.getsockname()[1]
        with pytest.raises(DevloopError, match=f"host port \\(127.0.0.1:{port}\\) is taken"):
            containers.run(spec_for(app, page_image, ports=(Port(port, 8080, "UDP"),)))
    assert containers.list_app(app) == []


def test_an_image_that_is_not_local_is_reported_not_pulled() -> None:
    with pytest.raises(DevloopError, match="not in the local Docker engine"):
        containers.image_id("devloop-test/never-built:nope")


def test_an_unreachable_engine_is_a_retryable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    engine.shared.cache_clear()
    try:
        with pytest.raises(EngineUnavailable, match="cannot reach the Docker engine") as caught:
            containers.list_app("anything")
        assert caught.value.retryable
    finally:
        monkeypatch.undo()
        engine.shared.cache_clear()
