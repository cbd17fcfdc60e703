"""The local Docker target: the pure manifest translation (tables), deploys on the engine."""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import anyio
import anyio.to_thread
import docker
import pytest

from devloop import containers
from devloop.docker_target import (
    DockerTarget,
    Port,
    Probe,
    Timing,
    docker_target,
    plan_containers,
)
from devloop.errors import InputError, RolloutError
from tests.test_containers import busybox_image, fetch, free_port, fresh_app

pytestmark = pytest.mark.anyio  # the async tests run on asyncio (see conftest)

# --- manifests --------------------------------------------------------------------------------


def deployment(
    name: str,
    *containers_: dict[str, Any],
    labels: dict[str, str] | None = None,
    kind: str = "Deployment",
    pod: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = {"containers": list(containers_), **(pod or {})}
    template = {"metadata": {"labels": labels or {"app": name}}, "spec": spec}
    return {"kind": kind, "metadata": {"name": name}, "spec": {"replicas": 3, "template": template}}


def service(
    name: str, *ports: dict[str, Any], selector: dict[str, str] | None = None
) -> dict[str, Any]:
    spec = {"selector": selector or {"app": name}, "ports": list(ports)}
    return {"kind": "Service", "metadata": {"name": name}, "spec": spec}


def config_map(name: str, **data: str) -> dict[str, Any]:
    return {"kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def secret(name: str, string_data: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {
        "kind": "Secret",
        "metadata": {"name": name},
        "data": encoded,
        "stringData": string_data or {},
    }


def container(name: str = "app", image: str = "app:dev", **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": image, **fields}


HTTP = {"name": "http", "containerPort": 8080}

# --- the planner: ports -----------------------------------------------------------------------

PORT_CASES = {
    "service port by target name": (
        [
            deployment("web", container(ports=[HTTP])),
            service("web", {"port": 9000, "targetPort": "http"}),
        ],
        (Port(9000, 8080),),
    ),
    "service port by target number": (
        [
            deployment("web", container(ports=[HTTP])),
            service("web", {"port": 9001, "targetPort": 8080}),
        ],
        (Port(9001, 8080),),
    ),
    "target port defaults to the port": (
        [deployment("web", container(ports=[HTTP])), service("web", {"port": 8080})],
        (Port(8080, 8080),),
    ),
    "undeclared target reaches a lone container": (
        [deployment("web", container()), service("web", {"port": 9002, "targetPort": 3000})],
        (Port(9002, 3000),),
    ),
    "no service: the containerPort itself": (
        [deployment("web", container(ports=[HTTP, {"containerPort": 53, "protocol": "UDP"}]))],
        (Port(8080, 8080), Port(53, 53, "UDP")),
    ),
    "hostPort wins over containerPort": (
        [deployment("web", container(ports=[{"containerPort": 80, "hostPort": 8088}]))],
        (Port(8088, 80),),
    ),
    "a service selecting other pods is ignored": (
        [
            deployment("web", container(ports=[HTTP])),
            service("db", {"port": 9003, "targetPort": 8080}),
        ],
        (Port(8080, 8080),),
    ),
    "a service in another namespace is ignored": (
        [
            deployment("web", container(ports=[HTTP])),
            {**service("web", {"port": 9004}), "metadata": {"name": "web", "namespace": "other"}},
        ],
        (Port(8080, 8080),),
    ),
    "two services, two host ports": (
        [
            deployment("web", container(ports=[HTTP])),
            service("web", {"port": 9005, "targetPort": "http"}),
            service("web-alt", {"port": 9006, "targetPort": "http"}, selector={"app": "web"}),
        ],
        (Port(9005, 8080), Port(9006, 8080)),
    ),
}


@pytest.mark.parametrize("objects, ports", PORT_CASES.values(), ids=PORT_CASES.keys())
def test_ports_are_published_on_the_service_port_or_the_container_port(
    objects: list[dict[str, Any]], ports: tuple[Port, ...]
) -> None:
    [spec] = plan_containers(objects, "demo")
    assert spec.ports == ports


def test_a_service_port_reaches_only_the_container_declaring_its_target() -> None:
    pod = deployment(
        "web", container("app", ports=[HTTP]), container("sidecar", ports=[{"containerPort": 9090}])
    )
    app, sidecar = plan_containers([pod, service("web", {"port": 80, "targetPort": 9090})], "demo")
    assert (app.ports, sidecar.ports) == ((Port(8080, 8080),), (Port(80, 9090),))
    assert app.aliases == ("web",) and sidecar.aliases == ("web",)


def test_two_containers_on_one_host_port_are_an_error_naming_both() -> None:
    objects = [
        deployment("web", container(ports=[HTTP])),
        deployment("api", container("server", ports=[HTTP])),
    ]
    with pytest.raises(
        InputError,
        match=re.escape(
            "Deployment/web container app and Deployment/api container server both publish "
            "127.0.0.1:8080/TCP"
        ),
    ):
        plan_containers(objects, "demo")


# --- the planner: environment -----------------------------------------------------------------

ENV_OBJECTS = [
    config_map("settings", HELLO_MSG="hello", LEVEL="debug"),
    secret("creds", TOKEN="s3cret", string_data={"USER": "bob"}),
]
ENV_CASES = {
    "plain values, expanded": (
        [{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(NOPE)-$$(A)"}],
        [],
        {"A": "x", "B": "x-$(NOPE)-$(A)"},
    ),
    "configMapKeyRef": (
        [
            {
                "name": "MSG",
                "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "HELLO_MSG"}},
            }
        ],
        [],
        {"MSG": "hello"},
    ),
    "secretKeyRef, data is decoded, stringData too": (
        [
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
            {"name": "U", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "USER"}}},
        ],
        [],
        {"T": "s3cret", "U": "bob"},
    ),
    "envFrom with a prefix, env wins": (
        [{"name": "CFG_LEVEL", "value": "info"}],
        [
            {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
            {"secretRef": {"name": "creds"}},
        ],
        {"CFG_HELLO_MSG": "hello", "CFG_LEVEL": "info", "TOKEN": "s3cret", "USER": "bob"},
    ),
    "optional references to missing things are left out": (
        [
            {
                "name": "M",
                "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": True}},
            },
            {
                "name": "K",
                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": True}},
            },
        ],
        [{"configMapRef": {"name": "gone", "optional": True}}],
        {},
    ),
    "fieldRef of the pod's name and namespace": (
        [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        [],
        {"POD": "web", "NS": "default"},
    ),
}


@pytest.mark.parametrize("env, env_from, expected", ENV_CASES.values(), ids=ENV_CASES.keys())
def test_environment_is_resolved_from_the_manifests(
    env: list[dict[str, Any]], env_from: list[dict[str, Any]], expected: dict[str, str]
) -> None:
    pod = deployment("web", container(env=env, envFrom=env_from))
    [spec] = plan_containers([*ENV_OBJECTS, pod], "demo")
    assert dict(spec.env) == expected


MISSING_CASES = {
    "config map": (
        {"name": "M", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}},
        "build.yml, document 3: spec.template.spec.containers[0].env[0]"
        ".valueFrom.configMapKeyRef.name: ConfigMap 'gone' is not in the manifests",
    ),
    "secret key": (
        {"name": "K", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}},
        "build.yml, document 3: spec.template.spec.containers[0].env[0]"
        ".valueFrom.secretKeyRef.key: Secret 'creds' has no key 'nope'",
    ),
}


@pytest.mark.parametrize("item, message", MISSING_CASES.values(), ids=MISSING_CASES.keys())
def test_a_missing_required_reference_names_file_document_and_key_path(
    item: dict[str, Any], message: str
) -> None:
    objects = [*ENV_OBJECTS, deployment("web", container(env=[item]))]
    with pytest.raises(InputError) as caught:
        plan_containers(
            objects,
            "demo",
            ["build.yml, document 1", "build.yml, document 2", "build.yml, document 3"],
        )
    assert str(caught.value).startswith(message)


def test_secret_values_stay_out_of_the_repr_and_the_labels() -> None:
    [spec] = plan_containers(
        [*ENV_OBJECTS, deployment("web", container(envFrom=[{"secretRef": {"name": "creds"}}]))],
        "demo",
    )
    assert "s3cret" not in repr(spec) and "s3cret" not in str(spec.labels)


# --- the planner: everything else -------------------------------------------------------------


def test_command_args_working_dir_and_user_map_to_docker_fields() -> None:
    app = container(
        command=["/bin/server", "--port=$(PORT)"],
        args=["-v"],
        workingDir="/srv",
        env=[{"name": "PORT", "value": "8080"}],
        securityContext={"runAsGroup": 2000},
    )
    [spec] = plan_containers(
        [deployment("web", app, pod={"securityContext": {"runAsUser": 1000}})], "demo"
    )
    assert (spec.entrypoint, spec.cmd, spec.working_dir, spec.user) == (
        ("/bin/server", "--port=8080"),
        ("-v",),
        "/srv",
        "1000:2000",
    )


def test_each_workload_kind_gives_one_container_per_template_container() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "solo"}, "spec": {"containers": [container("one")]}}
    job = deployment("migrate", container("job"), kind="Job", pod={"restartPolicy": "Never"})
    objects = [
        deployment("web", container("a"), container("b")),
        deployment("db", container("pg"), kind="StatefulSet"),
        deployment("agent", container("x"), kind="DaemonSet"),
        job,
        pod,
        service("web", {"port": 80}),
        config_map("c"),
        {"kind": "CronJob", "metadata": {"name": "ignored"}},
    ]
    planned = [(s.workload_ref, s.container, s.restart) for s in plan_containers(objects, "demo")]
    assert planned == [
        ("Deployment/web", "a", "unless-stopped"),
        ("Deployment/web", "b", "unless-stopped"),
        ("StatefulSet/db", "pg", "unless-stopped"),
        ("DaemonSet/agent", "x", "unless-stopped"),
        ("Job/migrate", "job", "no"),
        ("Pod/solo", "one", "unless-stopped"),
    ]


def test_labels_name_and_hash_follow_the_spec() -> None:
    [spec] = plan_containers([deployment("web", container("app"))], "demo")
    assert spec.labels == {
        "devloop.dev/app": "demo",
        "devloop.dev/workload": "Deployment/web",
        "devloop.dev/container": "app",
        "devloop.dev/spec-hash": spec.spec_hash,
    }
    assert spec.name == f"devloop-demo-web-app-{spec.spec_hash[:8]}"
    [again] = plan_containers([deployment("web", container("app"))], "demo")
    [other] = plan_containers([deployment("web", container("app", args=["-v"]))], "demo")
    assert again.spec_hash == spec.spec_hash != other.spec_hash


PROBE_CASES = {
    "httpGet on a named port behind a service": (
        {"httpGet": {"path": "/healthz", "port": "http"}},
        Probe("http", 9000, "/healthz"),
    ),
    "tcpSocket on a number": ({"tcpSocket": {"port": 8080}}, Probe("tcp", 9000)),
    "exec cannot be made from the host": ({"exec": {"command": ["true"]}}, None),
    "a port that is not published": ({"httpGet": {"path": "/", "port": 7000}}, None),
    "https is not checked": ({"httpGet": {"path": "/", "port": "http", "scheme": "HTTPS"}}, None),
}


@pytest.mark.parametrize("probe, expected", PROBE_CASES.values(), ids=PROBE_CASES.keys())
def test_readiness_probes_become_host_checks_where_possible(
    probe: dict[str, Any], expected: Probe | None
) -> None:
    objects = [
        deployment("web", container(ports=[HTTP], readinessProbe=probe)),
        service("web", {"port": 9000, "targetPort": "http"}),
    ]
    [spec] = plan_containers(objects, "demo")
    assert spec.probe == expected


def test_a_container_without_an_image_is_an_error_with_its_key_path() -> None:
    with pytest.raises(
        InputError, match=r"Deployment/web: spec.template.spec.containers\[1\].image: is missing"
    ):
        plan_containers([deployment("web", container("a"), {"name": "b"})], "demo")


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
        await self.deployer.deploy([*web(self.image, self.port, **web_fields), *extra], self.app)


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
    await deployer.deploy(web(image, free_port()), app)
    assert [info.key for info in await listed(app)] == [("Deployment/web", "web")]
    await deployer.cleanup(app)


@pytest.mark.docker
async def test_a_kept_container_with_the_same_spec_is_adopted_not_restarted(
    serving: Serving,
) -> None:
    [kept] = await running(serving.app)
    async with docker_target(Output(), FAST) as second:  # the next `devloop up` after --keep
        await second.adopt_or_clean(serving.app)
        await second.deploy(web(serving.image, serving.port), serving.app)
    assert [info.id for info in await running(serving.app)] == [kept.id]


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
            await deployer.deploy(
                [pod, service("tcp", {"port": free_port(), "targetPort": 8080})], app
            )
            assert ready
        except RolloutError as error:
            assert not ready and "did not pass its readiness probe" in str(error)
        finally:
            await deployer.cleanup(app)
