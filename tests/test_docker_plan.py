"""The pure manifest-to-container planner (docker_plan.py): tables, no engine needed."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from devloop.errors import InputError
from devloop.targets.docker.plan import Port, Probe, plan_containers

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
