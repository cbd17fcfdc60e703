"""Docker engine calls for the local Docker target: containers, networks and their output.

The SDK stays at the edge: this is the only module besides `building.py` allowed to import
docker, and the rest of devloop talks to these small typed, blocking functions (the async side
runs them in worker threads). Every container and network carries the `devloop.dev/app` label
(the labels are defined with the plan, in `docker_plan.py`), so everything an app ever started -
including leftovers of a killed run - can be found again.
SDK errors become `EngineUnavailable` (retry later) or `DevloopError` (with the engine's words).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from devloop.errors import DevloopError
from devloop.kbld import engine
from devloop.targets.base import APP_LABEL
from devloop.targets.docker.plan import (
    CONTAINER_LABEL,
    HASH_LABEL,
    WORKLOAD_LABEL,
    ContainerSpec,
    network_name,
)

PORT_TAKEN = ("address already in use", "port is already allocated")


@dataclass(frozen=True)
class Status:
    state: str  # created, running, restarting, paused, exited or dead
    running: bool
    exit_code: int | None  # None while it has never exited
    restart_count: int  # restarts done by the engine's restart policy


@dataclass(frozen=True)
class Info:
    """A container of an app as the engine reports it."""

    id: str
    name: str
    labels: Mapping[str, str]
    status: Status
    host_ports: frozenset[int]

    @property
    def spec_hash(self) -> str:
        return self.labels.get(HASH_LABEL, "")

    @property
    def key(self) -> tuple[str, str]:
        """(workload, container): the slot a new spec replaces."""
        return (self.labels.get(WORKLOAD_LABEL, ""), self.labels.get(CONTAINER_LABEL, ""))


def _client() -> docker.DockerClient:
    return engine.shared().client


def _engine(doing: str) -> AbstractContextManager[None]:
    return engine.shared().translated(doing)


def ping() -> None:
    """Return when the engine answers; EngineUnavailable while it is away."""
    with _engine("pinging the Docker engine"):
        _client().ping()


def ensure_network(app: str) -> str:
    """The app's bridge network (created when missing); returns its name."""
    name = network_name(app)
    with _engine(f"creating network {name}"):
        existing = _client().networks.list(filters={"label": f"{APP_LABEL}={app}"})
        if not any(network.name == name for network in existing):
            _client().networks.create(name, driver="bridge", labels={APP_LABEL: app})
    return name


def image_id(reference: str) -> str:
    """The local image ID of `reference`; nothing is ever pulled."""
    with _engine(f"looking up image {reference}"):
        try:
            return str(_client().images.get(reference).id)
        except docker.errors.NotFound as error:
            raise DevloopError(
                f"image {reference} is not in the local Docker engine: nothing is pulled for the "
                "docker target, so build it (add a Source for it) or `docker load` it"
            ) from error


def run(spec: ContainerSpec) -> str:
    """Create and start the container of `spec`; returns its id. A failed start removes it."""
    container_id = create(spec)
    start_created(container_id, spec)
    return container_id


def create(spec: ContainerSpec) -> str:
    """Create the container of `spec` without starting it (no host port is bound yet)."""
    with _engine(f"creating container {spec.name}"):
        return str(_client().containers.create(**_create_args(spec)).id)


def start_created(container_id: str, spec: ContainerSpec) -> None:
    """Start a container `create` made; a failed start removes it."""
    try:
        with _engine(f"starting container {spec.name} ({spec.prefix})"):
            _client().api.start(container_id)
    except DevloopError as error:
        _remove_quietly(container_id)
        if any(words in str(error) for words in PORT_TAKEN):
            ports = ", ".join(f"127.0.0.1:{p.host}" for p in spec.ports)
            raise DevloopError(
                f"{spec.prefix}: a host port ({ports}) is taken by another process or container;"
                " stop that or change the Service port"
            ) from error
        raise


def _create_args(spec: ContainerSpec) -> dict[str, Any]:
    ports: dict[str, list[tuple[str, int | None]]] = {}
    for port in spec.ports:
        # TCP Service ports are devloop's own listeners (forwarding.py): the engine publishes
        # the container on a port of its choosing. UDP and SCTP are published as they are.
        host = None if port.protocol == "TCP" else port.host
        ports.setdefault(f"{port.container}/{port.protocol.lower()}", []).append(
            ("127.0.0.1", host)
        )
    endpoint = _client().api.create_endpoint_config(aliases=list(spec.aliases))
    return {
        "image": spec.image_id or spec.image,
        "name": spec.name,
        "entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else None,
        "command": list(spec.cmd) if spec.cmd is not None else None,
        "environment": dict(spec.env),
        "working_dir": spec.working_dir,
        "user": spec.user,
        "labels": spec.labels,
        "ports": ports,
        "network": spec.network,
        "networking_config": {spec.network: endpoint},
        "restart_policy": {"Name": spec.restart},
        # An init as PID 1 forwards SIGTERM, so a stop takes milliseconds, not the stop timeout.
        "init": True,
        "detach": True,
    }


def published_tcp(container_id: str) -> dict[int, int]:
    """container TCP port -> the 127.0.0.1 port the engine published it on (running only)."""
    with _engine(f"inspecting container {container_id[:12]}"):
        ports = _client().api.inspect_container(container_id)["NetworkSettings"]["Ports"] or {}
    found = {}
    for key, bindings in ports.items():
        number, _, protocol = key.partition("/")
        for binding in bindings or ():
            if protocol == "tcp" and binding.get("HostPort"):
                found[int(number)] = int(binding["HostPort"])
    return found


def stop(container_id: str, timeout: int) -> None:
    """Stop (SIGTERM, then SIGKILL after `timeout` seconds) and keep the container."""
    with _engine(f"stopping container {container_id[:12]}"):
        try:
            _client().api.stop(container_id, timeout=timeout)
        except docker.errors.NotFound:
            pass


def start(container_id: str) -> None:
    """Start a stopped container again (to restore a previous one)."""
    with _engine(f"starting container {container_id[:12]} again"):
        _client().api.start(container_id)


def stop_and_remove(container_id: str, timeout: int) -> None:
    """Stop gracefully, then remove; a container that is already gone is fine."""
    stop(container_id, timeout)
    _remove_quietly(container_id)


def _remove_quietly(container_id: str) -> None:
    with _engine(f"removing container {container_id[:12]}"):
        try:
            _client().api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass


def list_app(app: str) -> list[Info]:
    """Every container labelled with `app`, running or not."""
    with _engine(f"listing the containers of {app}"):
        found = _client().containers.list(all=True, filters={"label": f"{APP_LABEL}={app}"})
        return [_info(container.attrs) for container in found]


def _info(attrs: Mapping[str, Any]) -> Info:
    bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    host_ports = {int(b["HostPort"]) for bs in bindings.values() for b in bs or [] if b["HostPort"]}
    return Info(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name", "")).lstrip("/"),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        status=_status(attrs),
        host_ports=frozenset(host_ports),
    )


def _status(attrs: Mapping[str, Any]) -> Status:
    state = attrs.get("State") or {}
    running = bool(state.get("Running")) and not state.get("Restarting")
    # ExitCode is 0 before the first exit too: it only means something once the process ended.
    ended = not running and state.get("Status") != "created"
    return Status(
        state=str(state.get("Status", "")),
        running=running,
        exit_code=int(state.get("ExitCode", 0)) if ended else None,
        restart_count=int(attrs.get("RestartCount", 0)),
    )


def status(container_id: str) -> Status:
    with _engine(f"inspecting container {container_id[:12]}"):
        try:
            return _status(_client().api.inspect_container(container_id))
        except docker.errors.NotFound as error:
            gone = f"container {container_id[:12]} is gone (removed by hand?)"
            raise DevloopError(gone) from error


def remove_app(app: str, timeout: int) -> None:
    """Remove every container and network of `app`: this run's and any killed run's."""
    for info in list_app(app):
        stop_and_remove(info.id, timeout)
    with _engine(f"removing the network of {app}"):
        for network in _client().networks.list(filters={"label": f"{APP_LABEL}={app}"}):
            try:
                network.remove()
            except docker.errors.NotFound:
                pass


def last_lines(container_id: str, count: int) -> list[str]:
    """The last `count` lines of the container's output (stdout and stderr)."""
    with _engine(f"reading the output of container {container_id[:12]}"):
        try:
            raw: bytes = _client().api.logs(container_id, tail=count)
        except docker.errors.NotFound:
            return []
    return raw.decode(errors="replace").splitlines()


def logs_stream(
    container_id: str,
    on_line: Callable[[str], None],
    stop: threading.Event,
    since: float | None = None,
) -> None:
    """Follow the output, calling `on_line` with whole lines, until the container stops or
    `stop` is set. Blocks; `on_line` runs in this thread. Sets `stop` when it returns.
    """
    with _engine(f"following the output of container {container_id[:12]}"):
        stream = _client().api.logs(container_id, stream=True, follow=True, since=since)
    # The read blocks with no timeout (the SDK disables it for follows): a helper closes the
    # socket when `stop` is set, which ends the iteration below.
    closer = threading.Thread(target=_close_when_set, args=(stop, stream), daemon=True)
    closer.start()
    try:
        _split_lines(stream, on_line)
    finally:
        stop.set()
        closer.join()


def _close_when_set(stop: threading.Event, stream: Any) -> None:
    stop.wait()
    stream.close()


def _split_lines(chunks: Any, on_line: Callable[[str], None]) -> None:
    """Engine frames do not follow line ends: buffer and hand on whole lines only."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            on_line(line.decode(errors="replace").rstrip("\r"))
    if pending:
        on_line(pending.decode(errors="replace").rstrip("\r"))
