"""The local Docker target of `devloop up`: run the rendered workloads as plain containers.

Some loops do not need a cluster: the same manifests are translated into one container per
pod-template container on the local engine, as Skaffold's docker deployer and compose do. The
translation (`plan_containers`) is pure and lives in `docker_plan.py`; this module holds the
replace logic (`DockerTarget`), and every engine call goes through `containers.py`.

Replacing a container (the choice, documented in docs/docker-target.md): TCP Service ports are
devloop's own listeners (`forwarding.py`), so the new container starts on a port the engine picks
while the old one keeps answering; once the new one is up and ready, new connections go to it and
the old one is removed. If the new one exits, crash-loops or never answers its readiness probe,
it is removed and the old one never stopped serving. A UDP host port cannot be forwarded that
way: its holder is *stopped, not removed*, the new one started and checked, and on failure the
old one is started again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from devloop import blocking
from devloop.errors import DevloopError, RolloutError
from devloop.events import Stopwatch
from devloop.kbld.model import Resolved
from devloop.targets.base import ManifestObject, Placement
from devloop.targets.docker import containers
from devloop.targets.docker.forwarding import Forwarder
from devloop.targets.docker.plan import ContainerSpec, Probe, plan_containers

T = TypeVar("T")
OnLine = Callable[[str, str], None]
Emit = Callable[..., None]  # Events.emit: an event name and its fields

ENGINE_REASON = "the app runs on the Docker engine that built the images: the kbld: tags are used"
LOG_STREAMS_MAX = 256  # one worker thread per followed container, outside the engine limiter
ROLLBACK_S = 30.0  # a rollback runs shielded from cancellation, for at most this long
TCP_SETTLE_S = 0.2  # docker-proxy accepts and then drops a connection nobody listens behind


@dataclass(frozen=True)
class Timing:
    """How long the target waits, in seconds (engine calls have their own client timeout)."""

    check_window_s: float = 1.0  # a new container must stay up this long to replace the old
    ready_timeout_s: float = 30.0  # ... and pass its readiness probe within this
    stop_timeout_s: int = 5  # SIGTERM grace before SIGKILL
    poll_s: float = 0.1  # between status checks once ready
    probe_poll_s: float = 0.02  # between probe attempts until the first success
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
async def docker_target(
    on_line: OnLine, timing: Timing = Timing(), emit: Emit | None = None
) -> AsyncIterator[DockerTarget]:
    """A DockerTarget whose log followers live (and are cancelled) with this context."""
    async with anyio.create_task_group() as followers:
        try:
            yield DockerTarget(on_line, followers, timing, emit, Forwarder(followers))
        finally:
            followers.cancel_scope.cancel()


class DockerTarget:
    """Deploys rendered manifests to the local engine. `on_line(prefix, line)` gets each whole
    output line of every container, from a worker thread (so it must be thread-safe); `emit`
    hears the outcome events of `deploy`."""

    name = "docker"

    def __init__(
        self,
        on_line: OnLine,
        followers: TaskGroup,
        timing: Timing = Timing(),
        emit: Emit | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self._on_line = on_line
        self._emit: Emit = emit or (lambda _event, **_fields: None)
        self._forwarder = forwarder or Forwarder(followers)
        self._followers = followers
        self._timing = timing
        self._limiter = anyio.CapacityLimiter(timing.engine_threads)
        self._log_limiter = anyio.CapacityLimiter(LOG_STREAMS_MAX)
        self._followed: dict[str, blocking.Stop] = {}
        self._specs: dict[str, ContainerSpec] = {}  # by container id: what it was started from
        self._delivery_said = False

    def describe(self) -> str:
        return "the local Docker engine"

    async def ping(self) -> None:
        await self._engine(containers.ping)

    async def deliver(self, built: Mapping[str, Resolved]) -> Mapping[str, Resolved]:
        """The Target protocol: the images are already on the engine that runs them."""
        if built and not self._delivery_said:
            self._delivery_said = True
            self._emit("delivery.selected", rung="engine", reason=ENGINE_REASON, target=self.name)
        return built

    async def deploy(self, objects: Sequence[ManifestObject], placement: Placement) -> None:
        """The Target protocol: converge, then say so (a container is checked as it starts, so
        the rollout is finished when the apply is)."""
        watch = Stopwatch()
        datas, wheres = [o.data for o in objects], [o.where for o in objects]
        await self.converge(datas, placement.app, wheres)
        self._emit("apply.finished", seconds=watch.seconds, target=self.name)
        self._emit("rollout.finished", seconds=watch.seconds, target=self.name)

    async def delete_app(self, placement: Placement) -> list[str]:
        names = [info.name for info in await self._engine(containers.list_app, placement.app)]
        await self.cleanup(placement.app)
        return names

    async def converge(
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
            await self._route(spec, keep.id)
            await self._remove([info for info in slot if info is not keep])
            return
        await self._remove(same)  # a stopped twin would hold the container name
        await self._replace(spec, [info for info in slot if info not in same])

    async def _replace(self, spec: ContainerSpec, old: list[containers.Info]) -> None:
        ports = {port.host for port in spec.ports}
        holders = [info for info in old if info.status.running and info.host_ports & ports]
        new_id = await self._created(spec)  # before any holder stops: creating binds no port
        try:
            for info in holders:
                await self._engine(containers.stop, info.id, self._timing.stop_timeout_s)
        except BaseException:
            with anyio.move_on_after(ROLLBACK_S, shield=True):
                await self._engine(containers.stop_and_remove, new_id, 0)
                await self._restore(holders)
            raise
        # New connections go to the new container once it is ready, while the old one still
        # runs through the check window: a crash in the window routes them back.
        switched = False

        async def switch() -> None:
            nonlocal switched
            await self._route(spec, new_id)
            switched = True

        try:
            await self._start_checked(spec, new_id, switch)
        except _NotReady as problem:
            after = await self._restore(holders)
            if switched:
                await self._route_back(old)
            if not after and not any(info.status.running for info in old):
                after = "nothing was running before; nothing runs now"
            raise RolloutError(_failure_text(spec, problem, after)) from None
        except BaseException:  # cancelled by a newer deploy, or the engine failed
            with anyio.move_on_after(ROLLBACK_S, shield=True):
                await self._restore(holders)
                if switched:
                    await self._route_back(old)
            raise
        if not switched:
            await self._route(spec, new_id)
        await self._remove(old)

    async def _route_back(self, old: Sequence[containers.Info]) -> None:
        for info in old:
            previous = self._specs.get(info.id)
            if previous is not None and info.status.running:
                await self._route(previous, info.id)

    async def _route(self, spec: ContainerSpec, container_id: str) -> None:
        """Point the spec's TCP Service ports at this container's published ports."""
        backends = await self._engine(containers.published_tcp, container_id)
        for port in spec.ports:
            if port.protocol == "TCP" and port.container in backends:
                await self._forwarder.route(port.host, backends[port.container], spec.prefix)

    async def _created(self, spec: ContainerSpec) -> str:
        try:
            return await self._engine(containers.create, spec)
        except DevloopError as error:
            if error.retryable:
                raise
            raise RolloutError(f"{spec.prefix}: could not create the container: {error}") from None

    async def _start_checked(
        self, spec: ContainerSpec, new_id: str, on_ready: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            await self._engine(containers.start_created, new_id, spec)
        except DevloopError as error:
            if error.retryable:
                raise
            raise _NotReady(f"could not start: {error}") from error
        self._follow(new_id, spec.prefix)
        self._specs[new_id] = spec
        try:
            await self._check(spec, new_id, on_ready)
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

    async def _check(
        self,
        spec: ContainerSpec,
        container_id: str,
        on_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Return once the container stayed up for the check window and passed its probe;
        `on_ready` runs as soon as the probe passes (the window may still be running)."""
        timing = self._timing
        window_ends = anyio.current_time() + timing.check_window_s
        ready = spec.probe is None
        backends = await self._engine(containers.published_tcp, container_id)
        port = _probe_port(spec, backends)
        said = False  # on_ready has run
        with anyio.move_on_after(timing.ready_timeout_s):
            while True:
                status = await self._engine(containers.status, container_id)
                trouble = _trouble(spec, status)
                if trouble is not None:
                    raise _NotReady(trouble)
                if spec.runs_to_completion and status.exit_code == 0:
                    return
                ready = ready or await probe_once(spec.probe, timing.probe_timeout_s, port)
                if ready and not said and on_ready is not None:
                    await on_ready()
                said = ready
                if ready and anyio.current_time() >= window_ends:
                    return
                await anyio.sleep(timing.poll_s if ready else timing.probe_poll_s)
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
        stop = self._followed[container_id] = blocking.Stop()
        self._followers.start_soon(self._follower, container_id, prefix, since, stop)

    async def _follower(
        self, container_id: str, prefix: str, since: float | None, stop: blocking.Stop
    ) -> None:
        try:
            await blocking.call(
                containers.logs_stream,
                container_id,
                partial(self._on_line, prefix),
                stop,
                since,
                limiter=self._log_limiter,
                stop=stop,
            )
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


def _probe_port(spec: ContainerSpec, backends: Mapping[int, int]) -> int | None:
    """The published port of the container port the probe's Service port leads to."""
    if spec.probe is None:
        return None
    for port in spec.ports:
        if port.host == spec.probe.host_port and port.protocol == "TCP":
            return backends.get(port.container, spec.probe.host_port)
    return spec.probe.host_port


async def probe_once(probe: Probe | None, limit_s: float, port: int | None = None) -> bool:
    """One readiness attempt from the host on `port` (default: the probe's): an HTTP status
    200-399, or a TCP connection that the far side keeps open (docker-proxy accepts even when
    nothing listens behind it)."""
    if probe is None:
        return True
    with anyio.move_on_after(limit_s):
        try:
            async with await anyio.connect_tcp("127.0.0.1", port or probe.host_port) as stream:
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
