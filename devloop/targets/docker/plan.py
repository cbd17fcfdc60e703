"""What the local Docker target runs: the pure translation of manifests into container specs.

`devloop up --target docker` runs the rendered workloads as plain containers, one per
pod-template container, as Skaffold's docker deployer and compose do. Deciding *what* to run -
environment from ConfigMaps and Secrets, Service ports published on the host, readiness probes
the host can make, the labels and spec-hash that let a later run recognise its containers - is a
pure function over the manifests (`plan_containers`), kept apart from the engine calls
(`containers.py`) and the replace logic (`docker_target.py`) so it is tested without I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from devloop.errors import InputError
from devloop.targets.base import APP_LABEL

# Every container and network of an app carries these labels, so everything an app ever started
# - including leftovers of a killed run - can be found again and matched to its slot in the plan.
WORKLOAD_LABEL = "devloop.dev/workload"
CONTAINER_LABEL = "devloop.dev/container"
HASH_LABEL = "devloop.dev/spec-hash"

POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
# Kubernetes restartPolicy -> docker restart policy; "unless-stopped" (not "always") so that a
# container devloop stopped during a replacement does not come back when dockerd restarts.
RESTART_POLICIES = {"Always": "unless-stopped", "OnFailure": "on-failure", "Never": "no"}
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def network_name(app: str) -> str:
    return f"devloop-{app}"


@dataclass(frozen=True)
class Port:
    """One published port: 127.0.0.1:`host` on the host -> `container` in the container."""

    host: int
    container: int
    protocol: str = "TCP"  # Kubernetes spelling: TCP, UDP or SCTP


@dataclass(frozen=True)
class Probe:
    """A readiness check the host can make: an HTTP GET of `path`, or a TCP connect."""

    kind: Literal["http", "tcp"]
    host_port: int
    path: str = "/"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}{self.path}"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to run one pod-template container; equal specs have equal hashes."""

    app: str
    kind: str  # the workload's kind, e.g. Deployment
    workload: str  # the workload's name
    container: str  # the container's name in the pod template
    image: str  # the reference in the manifest
    image_id: str = ""  # the local image ID it resolved to; filled in by DockerTarget.deploy
    entrypoint: tuple[str, ...] | None = None  # Kubernetes `command`
    cmd: tuple[str, ...] | None = None  # Kubernetes `args`
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold Secret values
    working_dir: str | None = None
    user: str | None = None  # "uid" or "uid:gid" from runAsUser/runAsGroup
    ports: tuple[Port, ...] = ()
    aliases: tuple[str, ...] = ()  # DNS names on the app network: workload and Service names
    restart: str = "unless-stopped"
    probe: Probe | None = None
    # How TCP ports reach the host; part of the hash, so containers that an older devloop
    # published on the Service port itself are replaced rather than adopted.
    publishing: str = "forwarded"

    @property
    def spec_hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def workload_ref(self) -> str:
        return f"{self.kind}/{self.workload}"

    @property
    def prefix(self) -> str:
        """The output prefix: `<workload>/<container>`."""
        return f"{self.workload}/{self.container}"

    @property
    def name(self) -> str:
        return f"devloop-{self.app}-{self.workload}-{self.container}-{self.spec_hash[:8]}"

    @property
    def network(self) -> str:
        return network_name(self.app)

    @property
    def labels(self) -> dict[str, str]:
        return {
            APP_LABEL: self.app,
            WORKLOAD_LABEL: self.workload_ref,
            CONTAINER_LABEL: self.container,
            HASH_LABEL: self.spec_hash,
        }

    @property
    def runs_to_completion(self) -> bool:
        """A Job-like container: exiting with code 0 is success, not a crash."""
        return self.restart != RESTART_POLICIES["Always"]


@dataclass(frozen=True)
class _Pod:
    """One pod template (or bare Pod) with where it came from, for error messages."""

    kind: str
    name: str
    namespace: str
    labels: Mapping[str, str]
    spec: Mapping[str, Any]
    where: str  # "file, document N" or "Kind/name"
    spec_path: str  # key path of the pod spec, e.g. spec.template.spec


@dataclass(frozen=True)
class _Index:
    """The ConfigMaps, Secrets and Services of the manifests, by (namespace, name)."""

    config_maps: Mapping[tuple[str, str], Mapping[str, Any]]
    secrets: Mapping[tuple[str, str], Mapping[str, Any]]
    services: Sequence[Mapping[str, Any]]

    @classmethod
    def of(cls, objects: Sequence[Mapping[str, Any]]) -> _Index:
        def by_name(kind: str) -> dict[tuple[str, str], Mapping[str, Any]]:
            return {_key(o): o for o in objects if o.get("kind") == kind}

        services = [o for o in objects if o.get("kind") == "Service"]
        return cls(by_name("ConfigMap"), by_name("Secret"), services)


def plan_containers(
    objects: Sequence[Mapping[str, Any]], app: str, wheres: Sequence[str] = ()
) -> list[ContainerSpec]:
    """One spec per container of every workload; `wheres` names each object's file and document.

    Raises InputError for a reference that cannot be resolved and for a host-port clash.
    """
    index = _Index.of(objects)
    specs: list[ContainerSpec] = []
    for number, obj in enumerate(objects):
        where = wheres[number] if number < len(wheres) else ""
        pod = _pod_of(obj, where)
        if pod is not None:
            specs.extend(_plan_pod(pod, index, app))
    _check_port_clashes(specs)
    return specs


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "default", str(meta.get("name", "")))


def _pod_of(obj: Mapping[str, Any], where: str) -> _Pod | None:
    kind = obj.get("kind")
    namespace, name = _key(obj)
    where = where or f"{kind}/{name}"
    if kind == "Pod":
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return _Pod(kind, name, namespace, labels, obj.get("spec") or {}, where, "spec")
    if kind not in POD_TEMPLATE_KINDS:
        return None
    template = (obj.get("spec") or {}).get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    spec = template.get("spec") or {}
    return _Pod(str(kind), name, namespace, labels, spec, where, "spec.template.spec")


def _plan_pod(pod: _Pod, index: _Index, app: str) -> list[ContainerSpec]:
    services = _services_for(pod, index)
    listed = list(pod.spec.get("containers") or [])
    return [
        _plan_container(pod, number, container, index, services, app, single=len(listed) == 1)
        for number, container in enumerate(listed)
    ]


def _plan_container(
    pod: _Pod,
    number: int,
    container: Mapping[str, Any],
    index: _Index,
    services: Sequence[Mapping[str, Any]],
    app: str,
    single: bool,
) -> ContainerSpec:
    path = f"{pod.spec_path}.containers[{number}]"
    for required in ("name", "image"):
        if not container.get(required):
            raise InputError(f"{pod.where}: {path}.{required}", "is missing")
    env = _env(pod, container, index, path)
    values = dict(env)
    ports = _ports(container, services, single)
    return ContainerSpec(
        app=app,
        kind=pod.kind,
        workload=pod.name,
        container=str(container["name"]),
        image=str(container["image"]),
        entrypoint=_expanded(container.get("command"), values),
        cmd=_expanded(container.get("args"), values),
        env=env,
        working_dir=container.get("workingDir") or None,
        user=_user(pod.spec, container),
        ports=ports,
        aliases=tuple(dict.fromkeys([pod.name, *(_key(s)[1] for s in services)])),
        restart=RESTART_POLICIES.get(pod.spec.get("restartPolicy", "Always"), "unless-stopped"),
        probe=_probe(container, ports),
    )


def _user(pod_spec: Mapping[str, Any], container: Mapping[str, Any]) -> str | None:
    context = {
        **(pod_spec.get("securityContext") or {}),
        **(container.get("securityContext") or {}),
    }
    uid, gid = context.get("runAsUser"), context.get("runAsGroup")
    if uid is None:
        return None
    return f"{uid}:{gid}" if gid is not None else str(uid)


# --- environment ------------------------------------------------------------------------------


def _env(
    pod: _Pod, container: Mapping[str, Any], index: _Index, path: str
) -> tuple[tuple[str, str], ...]:
    """envFrom first, then env (which wins), as the kubelet does; `$(VAR)` expanded."""
    values: dict[str, str] = {}
    for number, source in enumerate(container.get("envFrom") or []):
        values.update(_env_from(pod, source, index, f"{path}.envFrom[{number}]"))
    for number, item in enumerate(container.get("env") or []):
        where = f"{path}.env[{number}]"
        if "valueFrom" in item:
            value = _value_from(pod, item["valueFrom"] or {}, index, f"{where}.valueFrom")
        else:
            value = _expand(str(item.get("value", "")), values)
        if value is not None:
            values[str(item["name"])] = value
    return tuple(values.items())


def _env_from(pod: _Pod, source: Mapping[str, Any], index: _Index, path: str) -> dict[str, str]:
    prefix = source.get("prefix", "")
    for ref_key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
        if ref_key in source:
            ref = source[ref_key] or {}
            data = _data_of(pod, kind, ref, index, f"{path}.{ref_key}")
            return {f"{prefix}{k}": v for k, v in (data or {}).items()}
    return {}


def _value_from(pod: _Pod, source: Mapping[str, Any], index: _Index, path: str) -> str | None:
    for ref_key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
        if ref_key in source:
            ref = source[ref_key] or {}
            data = _data_of(pod, kind, ref, index, f"{path}.{ref_key}")
            if data is not None and ref.get("key") in data:
                return data[ref["key"]]
            if data is None or ref.get("optional"):
                return None
            raise InputError(
                f"{pod.where}: {path}.{ref_key}.key",
                f"{kind} '{ref.get('name')}' has no key '{ref.get('key')}'",
                "add the key or mark the reference `optional: true`",
            )
    if "fieldRef" in source:
        field_path = (source["fieldRef"] or {}).get("fieldPath")
        return {"metadata.name": pod.name, "metadata.namespace": pod.namespace}.get(str(field_path))
    return None  # resourceFieldRef, status.*: no meaning outside a cluster


def _data_of(
    pod: _Pod, kind: str, ref: Mapping[str, Any], index: _Index, path: str
) -> dict[str, str] | None:
    """The decoded data of the ConfigMap/Secret `ref` names; None if it is optional and absent."""
    table = index.config_maps if kind == "ConfigMap" else index.secrets
    obj = table.get((pod.namespace, str(ref.get("name", ""))))
    if obj is None:
        if ref.get("optional"):
            return None
        raise InputError(
            f"{pod.where}: {path}.name",
            f"{kind} '{ref.get('name')}' is not in the manifests (namespace {pod.namespace})",
            f"add the {kind} to the manifests or mark the reference `optional: true`",
        )
    if kind == "ConfigMap":
        binary = _decoded(obj.get("binaryData") or {}, f"ConfigMap '{ref.get('name')}'")
        return {**binary, **{k: str(v) for k, v in (obj.get("data") or {}).items()}}
    decoded = _decoded(obj.get("data") or {}, f"Secret '{ref.get('name')}'")
    return {**decoded, **{k: str(v) for k, v in (obj.get("stringData") or {}).items()}}


def _decoded(data: Mapping[str, Any], what: str) -> dict[str, str]:
    try:
        return {k: base64.b64decode(str(v), validate=True).decode() for k, v in data.items()}
    except (binascii.Error, UnicodeDecodeError) as error:
        problem = f"holds a value that is not base64 of UTF-8 text ({error})"
        raise InputError(what, problem) from error


def _expand(text: str, values: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return values.get(name, match.group(0))

    return _VAR_REF.sub(one, text)


def _expanded(items: Sequence[Any] | None, values: Mapping[str, str]) -> tuple[str, ...] | None:
    return None if items is None else tuple(_expand(str(item), values) for item in items)


# --- ports and probes -------------------------------------------------------------------------


def _services_for(pod: _Pod, index: _Index) -> list[Mapping[str, Any]]:
    """The Services of the pod's namespace whose (non-empty) selector matches its labels."""
    found = []
    for service in index.services:
        selector = (service.get("spec") or {}).get("selector") or {}
        same_namespace = _key(service)[0] == pod.namespace
        if same_namespace and selector and all(pod.labels.get(k) == v for k, v in selector.items()):
            found.append(service)
    return found


def _ports(
    container: Mapping[str, Any], services: Sequence[Mapping[str, Any]], single: bool
) -> tuple[Port, ...]:
    """Service port -> host port for each port a Service exposes; else the containerPort."""
    declared = list(container.get("ports") or [])
    published: list[Port] = []
    for service in services:
        for service_port in (service.get("spec") or {}).get("ports") or []:
            target = _target_port(service_port, declared, single)
            if target is not None:
                protocol = service_port.get("protocol", "TCP")
                published.append(Port(int(service_port["port"]), target, protocol))
    exposed = {(p.container, p.protocol) for p in published}
    for port in declared:
        number, protocol = int(port["containerPort"]), port.get("protocol", "TCP")
        if (number, protocol) not in exposed:
            published.append(Port(int(port.get("hostPort") or number), number, protocol))
    return tuple(dict.fromkeys(published))


def _target_port(
    service_port: Mapping[str, Any], declared: Sequence[Mapping[str, Any]], single: bool
) -> int | None:
    """The container port a Service port reaches in this container, if it reaches this one."""
    target = service_port.get("targetPort", service_port.get("port"))
    for port in declared:
        if target in (port.get("name"), port.get("containerPort")):
            return int(port["containerPort"])
    # An undeclared number still reaches the pod; only a lone container can be meant.
    return int(target) if single and isinstance(target, int) else None


def _probe(container: Mapping[str, Any], ports: Sequence[Port]) -> Probe | None:
    readiness = container.get("readinessProbe") or {}
    for key, kind in (("httpGet", "http"), ("tcpSocket", "tcp")):
        if key in readiness:
            action = readiness[key] or {}
            host_port = _host_port_for(action.get("port"), container, ports)
            if host_port is None or action.get("scheme", "HTTP") != "HTTP":
                return None
            return Probe("http" if kind == "http" else "tcp", host_port, action.get("path", "/"))
    return None  # exec and grpc probes cannot be made from the host


def _host_port_for(port: Any, container: Mapping[str, Any], ports: Sequence[Port]) -> int | None:
    for declared in container.get("ports") or []:
        if port == declared.get("name"):
            port = declared["containerPort"]
    matches = [p.host for p in ports if p.container == port and p.protocol == "TCP"]
    return matches[0] if matches else None


def _check_port_clashes(specs: Sequence[ContainerSpec]) -> None:
    owners: dict[tuple[int, str], ContainerSpec] = {}
    for spec in specs:
        for port in spec.ports:
            other = owners.setdefault((port.host, port.protocol), spec)
            if other is not spec:
                raise InputError(
                    "manifests",
                    f"{other.workload_ref} container {other.container} and "
                    f"{spec.workload_ref} container {spec.container} both publish "
                    f"127.0.0.1:{port.host}/{port.protocol}",
                    "give one of their Services (or containerPorts) another port",
                )
