"""The local Docker target of `devloop up`: run the rendered workloads as plain containers.

Some loops do not need a cluster: the same manifests are translated into one container per
pod-template container on the local engine, as Skaffold's docker deployer and compose do. The
translation (`plan_containers`) is pure and lives here with the replace logic (`DockerTarget`);
every engine call goes through `containers.py`.

Replacing a container (the choice, documented in docs/docker-target.md): when the new container
publishes a host port the old one holds, the old one is *stopped, not removed*, the new one
started and checked; if the new one exits, crash-loops or never answers its readiness probe, it
is removed and the old one started again. Without a shared port the new one starts first and the
old one is removed only once the new one is up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from devloop import containers
from devloop.errors import DevloopError, InputError, RolloutError

POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
# Kubernetes restartPolicy -> docker restart policy; "unless-stopped" (not "always") so that a
# container devloop stopped during a replacement does not come back when dockerd restarts.
RESTART_POLICIES = {"Always": "unless-stopped", "OnFailure": "on-failure", "Never": "no"}
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

T = TypeVar("T")
OnLine = Callable[[str, str], None]


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
        return containers.network_name(self.app)

    @property
    def labels(self) -> dict[str, str]:
        return {
            containers.APP_LABEL: self.app,
            containers.WORKLOAD_LABEL: self.workload_ref,
            containers.CONTAINER_LABEL: self.container,
            containers.HASH_LABEL: self.spec_hash,
        }

    @property
    def runs_to_completion(self) -> bool:
        """A Job-like container: exiting with code 0 is success, not a crash."""
        return self.restart != RESTART_POLICIES["Always"]


# ---------------------------------------------------------------------------------------------
# The pure translation from manifests to container specs.


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


# ---------------------------------------------------------------------------------------------
# Running the plan: replace what changed, keep the previous container when the new one fails.

LOG_STREAMS_MAX = 256  # one worker thread per followed container, outside the engine limiter
ROLLBACK_S = 30.0  # a rollback runs shielded from cancellation, for at most this long
TCP_SETTLE_S = 0.2  # docker-proxy accepts and then drops a connection nobody listens behind


@dataclass(frozen=True)
class Timing:
    """How long the target waits, in seconds (engine calls have their own client timeout)."""

    check_window_s: float = 1.0  # a new container must stay up this long to replace the old
    ready_timeout_s: float = 30.0  # ... and pass its readiness probe within this
    stop_timeout_s: int = 5  # SIGTERM grace before SIGKILL
    poll_s: float = 0.1  # between status checks and probe attempts
    probe_timeout_s: float = 1.0  # per probe attempt
    tail_lines: int = 20  # output lines quoted when a container fails
    engine_threads: int = 8  # concurrent engine calls


class _NotReady(Exception):
    """The new container failed its check; `reason` says how."""

    def __init__(self, reason: str, tail: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tail = list(tail)


@asynccontextmanager
async def docker_target(on_line: OnLine, timing: Timing = Timing()) -> AsyncIterator[DockerTarget]:
    """A DockerTarget whose log followers live (and are cancelled) with this context."""
    async with anyio.create_task_group() as followers:
        try:
            yield DockerTarget(on_line, followers, timing)
        finally:
            followers.cancel_scope.cancel()


class DockerTarget:
    """Deploys rendered manifests to the local engine. `on_line(prefix, line)` gets each whole
    output line of every container, from a worker thread (so it must be thread-safe)."""

    def __init__(self, on_line: OnLine, followers: TaskGroup, timing: Timing = Timing()) -> None:
        self._on_line = on_line
        self._followers = followers
        self._timing = timing
        self._limiter = anyio.CapacityLimiter(timing.engine_threads)
        self._log_limiter = anyio.CapacityLimiter(LOG_STREAMS_MAX)
        self._followed: dict[str, threading.Event] = {}
        self._specs: dict[str, ContainerSpec] = {}  # by container id: what it was started from

    async def deploy(
        self, objects: Sequence[Mapping[str, Any]], app: str, wheres: Sequence[str] = ()
    ) -> None:
        """Make the app's containers match the manifests; RolloutError names what failed."""
        plan = await self._pinned(plan_containers(objects, app, wheres))
        await self._engine(containers.ensure_network, app)
        current = await self._engine(containers.list_app, app)
        planned = {_slot(spec) for spec in plan}
        await self._remove([info for info in current if info.key not in planned])
        failures = await _concurrently(
            partial(self._converge, spec, [i for i in current if i.key == _slot(spec)])
            for spec in plan
        )
        # The engine being away is worth a retry; anything else waits for the next change.
        for failure in failures:
            if failure.retryable:
                raise failure
        if failures:
            raise RolloutError("\n".join(str(failure) for failure in failures))

    async def adopt_or_clean(self, app: str) -> None:
        """At start-up: remove what a killed run left stopped; running containers are adopted
        by the first deploy when their spec-hash matches the plan, and replaced otherwise."""
        leftovers = await self._engine(containers.list_app, app)
        await self._remove([info for info in leftovers if not info.status.running])

    async def cleanup(self, app: str) -> None:
        """Remove every container and the network of `app` (the followers end by themselves)."""
        await self._engine(containers.remove_app, app, self._timing.stop_timeout_s)

    async def _engine(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(partial(func, *args), limiter=self._limiter)

    async def _pinned(self, plan: Sequence[ContainerSpec]) -> list[ContainerSpec]:
        """Fold each local image ID into its spec, so a rebuilt tag is a changed spec."""
        ids = {
            image: await self._engine(containers.image_id, image)
            for image in dict.fromkeys(spec.image for spec in plan)
        }
        return [replace(spec, image_id=ids[spec.image]) for spec in plan]

    async def _converge(self, spec: ContainerSpec, slot: list[containers.Info]) -> None:
        same = [info for info in slot if info.spec_hash == spec.spec_hash]
        keep = next((info for info in same if info.status.running), None)
        if keep is not None:  # unchanged, or adopted from a killed run
            self._specs[keep.id] = spec
            self._follow(keep.id, spec.prefix, since=time.time())
            await self._remove([info for info in slot if info is not keep])
            return
        await self._remove(same)  # a stopped twin would hold the container name
        await self._replace(spec, [info for info in slot if info not in same])

    async def _replace(self, spec: ContainerSpec, old: list[containers.Info]) -> None:
        ports = {port.host for port in spec.ports}
        holders = [info for info in old if info.status.running and info.host_ports & ports]
        for info in holders:
            await self._engine(containers.stop, info.id, self._timing.stop_timeout_s)
        try:
            await self._start_checked(spec)
        except _NotReady as problem:
            after = await self._restore(holders)
            if not after and not any(info.status.running for info in old):
                after = "nothing was running before; nothing runs now"
            raise RolloutError(_failure_text(spec, problem, after)) from None
        except BaseException:  # cancelled by a newer deploy, or the engine failed
            with anyio.move_on_after(ROLLBACK_S, shield=True):
                await self._restore(holders)
            raise
        await self._remove(old)

    async def _start_checked(self, spec: ContainerSpec) -> None:
        try:
            new_id = await self._engine(containers.run, spec)
        except DevloopError as error:
            if error.retryable:
                raise
            raise _NotReady(f"could not start: {error}") from error
        self._follow(new_id, spec.prefix)
        self._specs[new_id] = spec
        try:
            await self._check(spec, new_id)
        except _NotReady as problem:
            problem.tail = await self._engine(
                containers.last_lines, new_id, self._timing.tail_lines
            )
            await self._engine(containers.stop_and_remove, new_id, 0)
            raise
        except BaseException:
            with anyio.move_on_after(ROLLBACK_S, shield=True):
                await self._engine(containers.stop_and_remove, new_id, 0)
            raise

    async def _check(self, spec: ContainerSpec, container_id: str) -> None:
        """Return once the container stayed up for the check window and passed its probe."""
        timing = self._timing
        window_ends = anyio.current_time() + timing.check_window_s
        ready = spec.probe is None
        with anyio.move_on_after(timing.ready_timeout_s):
            while True:
                status = await self._engine(containers.status, container_id)
                trouble = _trouble(spec, status)
                if trouble is not None:
                    raise _NotReady(trouble)
                if spec.runs_to_completion and status.exit_code == 0:
                    return
                ready = ready or await probe_once(spec.probe, timing.probe_timeout_s)
                if ready and anyio.current_time() >= window_ends:
                    return
                await anyio.sleep(timing.poll_s)
        url = spec.probe.url if spec.probe else ""
        raise _NotReady(f"did not pass its readiness probe {url} in {timing.ready_timeout_s} s")

    async def _restore(self, holders: Sequence[containers.Info]) -> str:
        """Start the stopped previous containers again and wait until they are back (checked
        with their own spec when this target started or adopted them); says how it went."""
        for info in holders:
            since = time.time()
            await self._engine(containers.start, info.id)
            self._follow(info.id, _prefix(info), since=since, again=True)
            previous = self._specs.get(info.id)
            if previous is None:
                continue
            try:
                await self._check(previous, info.id)
            except _NotReady as problem:
                return f"the previous container was started again but {problem.reason}"
        return ""

    async def _remove(self, infos: Sequence[containers.Info]) -> None:
        timeout = self._timing.stop_timeout_s
        for info in infos:
            self._specs.pop(info.id, None)
        failures = await _concurrently(
            partial(self._engine, containers.stop_and_remove, info.id, timeout) for info in infos
        )
        if failures:
            raise failures[0]

    def _follow(
        self, container_id: str, prefix: str, since: float | None = None, again: bool = False
    ) -> None:
        """Stream the container's output to on_line; `again` replaces a running follower."""
        running = self._followed.get(container_id)
        if running is not None and not again:
            return
        if running is not None:
            running.set()
        stop = self._followed[container_id] = threading.Event()
        self._followers.start_soon(self._follower, container_id, prefix, since, stop)

    async def _follower(
        self, container_id: str, prefix: str, since: float | None, stop: threading.Event
    ) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_set_when_cancelled, stop)
                await anyio.to_thread.run_sync(
                    containers.logs_stream,
                    container_id,
                    partial(self._on_line, prefix),
                    stop,
                    since,
                    limiter=self._log_limiter,
                )
                group.cancel_scope.cancel()
        except DevloopError:
            pass  # the container went away before its output could be followed
        finally:
            if self._followed.get(container_id) is stop:
                del self._followed[container_id]


async def _concurrently(jobs: Iterable[Callable[[], Awaitable[object]]]) -> list[DevloopError]:
    """Run the jobs at once; their DevloopErrors are returned, not wrapped in a group."""
    failures: list[DevloopError] = []

    async def one(job: Callable[[], Awaitable[object]]) -> None:
        try:
            await job()
        except DevloopError as failure:
            failures.append(failure)

    async with anyio.create_task_group() as group:
        for job in jobs:
            group.start_soon(one, job)
    return failures


def _slot(spec: ContainerSpec) -> tuple[str, str]:
    return (spec.workload_ref, spec.container)


async def _set_when_cancelled(stop: threading.Event) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        stop.set()


def _trouble(spec: ContainerSpec, status: containers.Status) -> str | None:
    """Why the container counts as failed, or None while it is fine."""
    if status.restart_count > 0:
        # The engine resets ExitCode when it restarts the process: the code is often unknown.
        code = f", last exit code {status.exit_code}" if status.exit_code is not None else ""
        return f"crash-looped (restarted {status.restart_count}x{code})"
    if status.running or (spec.runs_to_completion and status.exit_code == 0):
        return None
    if status.exit_code is None:
        return f"is {status.state}, not running"
    return f"exited with code {status.exit_code}"


def _failure_text(spec: ContainerSpec, problem: _NotReady, after: str) -> str:
    after = after or "the previous container keeps running"
    text = f"{spec.workload_ref} container {spec.container}: the new container {problem.reason}; "
    text += f"{after}. Fix it and save to try again."
    if problem.tail:
        text += "\n" + "\n".join(f"  {spec.prefix} | {line}" for line in problem.tail)
    return text


def _prefix(info: containers.Info) -> str:
    workload, container = info.key
    return f"{workload.partition('/')[2]}/{container}"


async def probe_once(probe: Probe | None, limit_s: float) -> bool:
    """One readiness attempt from the host: an HTTP status 200-399, or a TCP connection that
    the far side keeps open (docker-proxy accepts even when nothing listens behind it)."""
    if probe is None:
        return True
    with anyio.move_on_after(limit_s):
        try:
            async with await anyio.connect_tcp("127.0.0.1", probe.host_port) as stream:
                if probe.kind == "tcp":
                    return await _stays_open(stream)
                return await _answers_http(stream, probe)
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            return False
    return False


async def _stays_open(stream: anyio.abc.ByteStream) -> bool:
    with anyio.move_on_after(TCP_SETTLE_S):
        try:
            await stream.receive()
        except anyio.EndOfStream:
            return False
    return True


async def _answers_http(stream: anyio.abc.ByteStream, probe: Probe) -> bool:
    request = f"GET {probe.path} HTTP/1.0\r\nHost: 127.0.0.1:{probe.host_port}\r\n\r\n"
    await stream.send(request.encode())
    head = b""
    while b"\r\n" not in head and len(head) < 4096:
        head += await stream.receive()
    parts = head.split(b" ", 2)
    return len(parts) > 1 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
