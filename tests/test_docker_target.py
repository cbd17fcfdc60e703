"""The local Docker target deploying on the real engine; the planner's tables are in
test_docker_plan.py, whose manifest helpers these tests reuse."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import anyio
import anyio.to_thread
import docker
import pytest

from devloop.errors import RolloutError
from devloop.targets.docker import containers
from devloop.targets.docker.target import DockerTarget, Timing, docker_target
from tests.test_containers import busybox_image, fetch, free_port, fresh_app
from tests.test_docker_plan import HTTP, config_map, container, deployment, secret, service

pytestmark = pytest.mark.anyio  # the async tests run on asyncio (see conftest)

# --- deploying on the real engine -------------------------------------------------------------

FAST = Timing(check_window_s=0.3, ready_timeout_s=5.0, stop_timeout_s=1)
SERVE_ENV = (
    'echo "starting with $HELLO_MSG"; echo "$HELLO_MSG $TOKEN" > /www/index.html; '
    "exec /bin/busybox httpd -f -p 8080 -h /www"
)


class Output:
    """The lines a target hands to on_line, from its worker threads."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._changed = threading.Condition()

    def __call__(self, prefix: str, line: str) -> None:
        with self._changed:
            self.lines.append((prefix, line))
            self._changed.notify_all()

    async def arrives(self, entry: tuple[str, str]) -> bool:
        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: entry in self.lines, timeout=10)

        return await anyio.to_thread.run_sync(wait)


def web(
    image: str, port: int, command: list[str] | None = None, probe: str = "/"
) -> list[dict[str, Any]]:
    env = [
        {
            "name": "HELLO_MSG",
            "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "HELLO_MSG"}},
        },
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "web-secret", "key": "TOKEN"}}},
    ]
    readiness = {"httpGet": {"path": probe, "port": "http"}}
    app = container("web", image, ports=[HTTP], env=env, readinessProbe=readiness)
    if command is not None:
        app["command"] = command
    return [
        config_map("web-config", HELLO_MSG="hello"),
        secret("web-secret", TOKEN="tok-123"),
        deployment("web", app),
        service("web", {"port": port, "targetPort": "http"}),
    ]


@pytest.fixture
def app() -> Iterator[str]:
    yield from fresh_app()


@pytest.fixture
def image(app: str) -> Iterator[str]:
    """A tag of this test's own, serving "one"; tests move it to other content."""
    yield busybox_image(app, "one\n")
    docker.from_env().images.remove(f"devloop-test/tiny:{app}", force=True)


@pytest.fixture
async def target() -> AsyncIterator[tuple[DockerTarget, Output]]:
    output = Output()
    async with docker_target(output, FAST) as opened:
        yield opened, output


@dataclass(frozen=True)
class Serving:
    """The web workload deployed from `image` on 127.0.0.1:`port`."""

    deployer: DockerTarget
    output: Output
    app: str
    image: str
    port: int

    async def deploy(self, *extra: dict[str, Any], **web_fields: Any) -> None:
        await self.deployer.converge([*web(self.image, self.port, **web_fields), *extra], self.app)


@pytest.fixture
async def serving(
    app: str, image: str, target: tuple[DockerTarget, Output]
) -> AsyncIterator[Serving]:
    deployed = Serving(*target, app, image, free_port())
    await deployed.deploy()
    yield deployed
    await deployed.deployer.cleanup(app)


async def get(port: int) -> str:
    return await anyio.to_thread.run_sync(fetch, port)


async def listed(app: str) -> list[containers.Info]:
    return await anyio.to_thread.run_sync(containers.list_app, app)


async def running(app: str) -> list[containers.Info]:
    return [info for info in await listed(app) if info.status.running]


@pytest.mark.docker
async def test_a_workload_answers_on_its_service_port_and_a_rebuilt_image_replaces_it(
    serving: Serving,
) -> None:
    assert await get(serving.port) == "one\n"
    busybox_image(serving.app, "two\n")  # same tag, new content: a rebuild
    await serving.deploy()
    assert await get(serving.port) == "two\n"
    assert len(await listed(serving.app)) == 1


@pytest.mark.docker
async def test_env_from_a_config_map_and_a_secret_reaches_the_process_and_its_output_is_streamed(
    serving: Serving,
) -> None:
    await serving.deploy(command=["/bin/busybox", "sh", "-c", SERVE_ENV])
    assert await get(serving.port) == "hello tok-123\n"
    assert await serving.output.arrives(("web/web", "starting with hello"))


FAILURES = {
    "exits": (
        ["/bin/busybox", "sh", "-c", "echo 'cannot read /etc/app.yml' >&2; exit 3"],
        "/",
        r"(exited with code 3|crash-looped \(restarted \d+x[^)]*\)); the previous container keeps "
        r"running\. Fix it and save to try again\.\n  web/web \| cannot read /etc/app\.yml",
    ),
    "ready, then exits in the check window": (
        ["/bin/busybox", "sh", "-c", "/bin/busybox httpd -p 8080 -h /www; sleep 0.15; exit 4"],
        "/",
        r"(exited with code 4|crash-looped \(restarted \d+x[^)]*\)); the previous container keeps",
    ),
    "never ready": (
        None,
        "/healthz",
        r"did not pass its readiness probe http://127\.0\.0\.1:\d+/healthz in 5\.0 s",
    ),
}


@pytest.mark.docker
@pytest.mark.parametrize("command, probe, message", FAILURES.values(), ids=FAILURES.keys())
async def test_a_failing_new_container_is_reported_and_the_previous_one_keeps_answering(
    serving: Serving, command: list[str] | None, probe: str, message: str
) -> None:
    [before] = await running(serving.app)
    with pytest.raises(RolloutError, match=message):
        await serving.deploy(command=command, probe=probe)
    assert await get(serving.port) == "one\n"
    assert [info.id for info in await running(serving.app)] == [before.id]


@pytest.mark.docker
async def test_cleanup_removes_every_container_and_the_network(serving: Serving) -> None:
    await serving.deployer.cleanup(serving.app)
    assert await listed(serving.app) == []
    label = f"devloop.dev/app={serving.app}"
    assert docker.from_env().networks.list(filters={"label": label}) == []
    with pytest.raises(OSError):
        await get(serving.port)


@pytest.mark.docker
async def test_leftovers_of_a_killed_run_are_removed_on_the_next_start(
    app: str, image: str, target: tuple[DockerTarget, Output]
) -> None:
    deployer, _ = target
    client = docker.from_env()
    labels = {
        "devloop.dev/app": app,
        "devloop.dev/workload": "Deployment/old",
        "devloop.dev/container": "x",
        "devloop.dev/spec-hash": "0123456789ab",
    }
    alive = client.containers.run(
        image, ["/bin/busybox", "sleep", "1000"], labels=labels, detach=True
    )
    client.containers.create(image, ["/bin/busybox", "true"], labels=labels)
    await deployer.adopt_or_clean(app)
    assert [info.id for info in await listed(app)] == [alive.id]
    await deployer.converge(web(image, free_port()), app)
    assert [info.key for info in await listed(app)] == [("Deployment/web", "web")]
    await deployer.cleanup(app)


@pytest.mark.docker
async def test_a_kept_container_with_the_same_spec_is_adopted_not_restarted(
    app: str, image: str
) -> None:
    port = free_port()
    async with docker_target(Output(), FAST) as first:  # a `devloop up --keep` that ended
        await first.converge(web(image, port), app)
    [kept] = await running(app)
    async with docker_target(Output(), FAST) as second:  # the next `devloop up`
        await second.adopt_or_clean(app)
        await second.converge(web(image, port), app)
        assert await get(port) == "one\n"  # the Service port is served again
        assert [info.id for info in await running(app)] == [kept.id]
        await second.cleanup(app)


@pytest.mark.docker
async def test_a_replace_keeps_answering_every_request_while_the_new_container_starts(
    serving: Serving,
) -> None:
    answers: list[str] = []

    async def keep_asking() -> None:
        while True:
            answers.append(await anyio.to_thread.run_sync(fetch_or_error, serving.port))
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as group:
        group.start_soon(keep_asking)
        busybox_image(serving.app, "two\n")
        await serving.deploy()
        group.cancel_scope.cancel()
    assert answers and set(answers) <= {"one\n", "two\n"}, set(answers)
    assert answers[-1] == "two\n"


def fetch_or_error(port: int) -> str:
    try:
        return fetch(port)
    except Exception as error:  # what a client would see
        return type(error).__name__


@pytest.mark.docker
async def test_a_workload_gone_from_the_manifests_is_removed_and_the_rest_left_alone(
    serving: Serving,
) -> None:
    [web_before] = await running(serving.app)
    sleep = ["/bin/busybox", "sleep", "1000"]
    await serving.deploy(deployment("worker", container("loop", serving.image, command=sleep)))
    assert {info.key[0] for info in await running(serving.app)} == {
        "Deployment/web",
        "Deployment/worker",
    }
    await serving.deploy()
    assert [info.id for info in await running(serving.app)] == [web_before.id]


TCP_CASES = {
    "listening": (["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"], True),
    # docker-proxy accepts on the host port even here; the probe must see through that.
    "not listening": (["/bin/busybox", "sleep", "1000"], False),
}


@pytest.mark.docker
@pytest.mark.parametrize("command, ready", TCP_CASES.values(), ids=TCP_CASES.keys())
async def test_a_tcp_readiness_probe_passes_only_when_the_process_listens(
    app: str, image: str, command: list[str], ready: bool
) -> None:
    probe = {"tcpSocket": {"port": 8080}}
    pod = deployment(
        "tcp", container("tcp", image, command=command, ports=[HTTP], readinessProbe=probe)
    )
    async with docker_target(Output(), replace(FAST, ready_timeout_s=1.5)) as deployer:
        try:
            await deployer.converge(
                [pod, service("tcp", {"port": free_port(), "targetPort": 8080})], app
            )
            assert ready
        except RolloutError as error:
            assert not ready and "did not pass its readiness probe" in str(error)
        finally:
            await deployer.cleanup(app)


@pytest.mark.docker
async def test_a_service_port_taken_by_another_process_is_reported_and_nothing_runs(
    app: str, image: str, target: tuple[DockerTarget, Output]
) -> None:
    deployer, _ = target
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(RolloutError, match=f"127.0.0.1:{port} is taken by another process"):
            await deployer.converge(web(image, port), app)
    await deployer.cleanup(app)
    assert await listed(app) == []
