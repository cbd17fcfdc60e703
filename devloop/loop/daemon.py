"""`devloop up`: one task group owns the watcher, the build lanes and the deployer.

watcher --Changes--> controller --requests--> lanes --built--> deployer
The controller maps each batch of changes to the lanes whose inputs changed (and to a re-render
when manifests or config changed); the deployer applies the newest state once no lane it needs is
still building. Expected failures are events, never crashes: a broken config keeps the last good
one, a failed build keeps the old image running, an unreachable cluster is retried with backoff.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from devloop.errors import ClusterUnavailable, DevloopError, RolloutError
from devloop.events import Events
from devloop.kbld.model import Resolved, Source
from devloop.kbld.resolving import build_source
from devloop.loop.deploying import Deployer, Loaded, load, source_urls
from devloop.loop.lanes import Lane, LaneRunner
from devloop.settings import Settings, settle

SHUTDOWN_GRACE_S = 2.5  # Ctrl-C to exit must stay under 3 s
NO_CLUSTER = (
    "no Kubernetes context is configured, so the app runs on the local Docker engine; "
    "pass --kubeconfig or --context (or set KUBECONFIG) to deploy to a cluster instead"
)
CLUSTER_RETRY_S = (0.5, 1.0, 2.0, 3.0, 5.0)  # pings while the cluster is unreachable, seconds
LOG_DIR = ".devloop/logs"  # each image's build output is also kept here, one file per image


class Controller:
    def __init__(self, settings: Settings, flags: dict[str, Any], events: Events) -> None:
        self.settings, self.flags, self.events = settings, flags, events
        self.loaded: Loaded | None = None
        self.lanes: dict[str, Lane] = {}
        self.deployer = Deployer(settings, events)
        self.kick = anyio.Event()
        self.dirty = True
        self.watch_changed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._runner: LaneRunner | None = None
        self._engine: Any = None
        self._watched: tuple[Any, ...] | None = None
        self._unreachable = False  # the cluster failed to answer; only pings until it does
        self._outage = ""  # the message of the temporary failure being retried, said once
        self._deployed: dict[str, Resolved] = {}  # the lanes' images of the newest deploy

    async def run(self) -> None:
        if self.settings.resolved_target() == "docker":
            await self._run_on_docker()
        else:
            await self._run_tasks()

    async def _run_tasks(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._runner = self._make_runner()
            await self.reload("start")
            tg.start_soon(self.deployer_task)
            tg.start_soon(self.watcher_task)

    async def _run_on_docker(self) -> None:
        """The local Docker target: containers instead of a cluster, removed on exit."""
        from devloop.targets.docker.target import docker_target

        if self.settings.target == "auto":
            self.events.emit("target.selected", target="docker", reason=NO_CLUSTER)
        app = self.settings.app_name
        async with docker_target(self.events.line) as target:
            self.deployer.docker = target
            try:
                await target.adopt_or_clean(app)
                await self._run_tasks()
            finally:
                if not self.settings.keep:
                    with anyio.move_on_after(SHUTDOWN_GRACE_S, shield=True):
                        await target.cleanup(app)

    def _make_runner(self) -> LaneRunner:
        from devloop.loop.inputs import input_digest

        limiter = anyio.CapacityLimiter(self.settings.build_concurrency)
        return LaneRunner(self._build, input_digest, self.events, limiter, self.lane_done)

    def _build(self, url: str, source: Source, stop: threading.Event) -> Resolved:
        """Build one lane's image in a worker thread (the lane runner calls this)."""
        assert self.loaded is not None
        if self._engine is None:
            from devloop.kbld.building import Engine

            self._engine = Engine()
        return build_source(
            self._engine,
            self.loaded.found.config,
            url,
            source,
            self.events,
            self._registry,
            stop.is_set,
        )

    def _registry(self) -> Any:
        from devloop.kbld.registry import Registry, RegistryOptions

        return Registry(RegistryOptions())

    # -- config and lanes -------------------------------------------------------------------
    async def reload(self, why: str) -> None:
        try:
            loaded = await anyio.to_thread.run_sync(load, self.settings)
            settings = settle(self.flags, loaded.file_settings)
        except DevloopError as error:
            self.events.emit(
                "config.failed",
                reason=str(error),
                keeping="last good config" if self.loaded else None,
            )
            return
        for warning in loaded.found.warnings:
            self.events.emit("config.warning", reason=warning)
        first = self.loaded is None
        self.loaded, self.settings = loaded, settings
        self.deployer.settings = settings
        if not first:
            self.events.emit("config.reloaded", reason=why)
        self._sync_lanes()
        if self._watched is not None and self._watch_set_changed():
            self.watch_changed.set()
        self.mark_dirty()

    def _sync_lanes(self) -> None:
        assert self.loaded is not None and self._tg is not None and self._runner is not None
        for url, source in source_urls(self.loaded.found).items():
            lane = self.lanes.get(url)
            if lane is None:
                lane = self.lanes[url] = Lane(url, source)
                self._tg.start_soon(self._runner.builder, lane)
                lane.request("first build")
            elif lane.source != source:
                lane.source = source
                lane.request("its Source changed")

    # -- changes ----------------------------------------------------------------------------
    async def on_changes(self, changes: Any) -> None:
        images = {key: sorted(files) for key, files in changes.images.items()}
        self.events.emit(
            "change.detected",
            images=sorted(images) or None,
            manifests=sorted(changes.manifests) or None,
            config=sorted(changes.config) or None,
        )
        if changes.config or changes.manifests:
            await self.reload("changed: " + _listing({*changes.config, *changes.manifests}))
        for key, files in images.items():  # the watch set is keyed by the lanes' references
            if (lane := self.lanes.get(key)) is not None:
                lane.request("changed: " + _listing(files))

    async def lane_done(self, lane: Lane) -> None:
        """A lane went idle: deploy if its image differs from the deployed one, else only wake
        the deployer (it may be waiting for this lane before applying a manifest change)."""
        if lane.result is not None and self._deployed.get(lane.url) != lane.result:
            self.mark_dirty()
        else:
            self.kick.set()

    def mark_dirty(self) -> None:
        self.dirty = True
        self.kick.set()

    # -- deploying --------------------------------------------------------------------------
    async def deployer_task(self) -> None:
        attempt = 0
        while True:
            await self.kick.wait()
            self.kick = anyio.Event()
            if not self._ready_to_deploy():
                continue
            self.dirty = False
            outcome = await self._deploy_once()
            attempt = attempt + 1 if outcome == "retry" else 0
            if outcome == "retry":
                self.dirty = True
                delay = CLUSTER_RETRY_S[min(attempt, len(CLUSTER_RETRY_S)) - 1]
                with anyio.move_on_after(delay):
                    await self.kick.wait()
                self.kick.set()

    def _ready_to_deploy(self) -> bool:
        if not self.dirty or self.loaded is None:
            return False
        needed = source_urls(self.loaded.found)
        lanes = [self.lanes[url] for url in needed if url in self.lanes]
        return not any(lane.busy for lane in lanes) and all(lane.result for lane in lanes)

    async def _deploy_once(self) -> str:
        """Deploy the newest state; while the cluster is away, only a cheap ping is retried."""
        assert self.loaded is not None
        built = {url: lane.result for url, lane in self.lanes.items() if lane.result}
        self._deployed = dict(built)  # a failed deploy is retried by its own loop
        try:
            if self._unreachable:
                await self.deployer.ping()
                self._unreachable = False
                self.events.emit("cluster.reachable", reason="the cluster answers again")
            await self.deployer.deploy(self.loaded, built)
            self._outage = ""
        except DevloopError as error:
            return self._deploy_failed(error)
        return "done"

    def _deploy_failed(self, error: DevloopError) -> str:
        if not error.retryable:
            event = "rollout.failed" if isinstance(error, RolloutError) else "apply.failed"
            self.events.emit(event, reason=str(error))
            return "failed"
        if str(error) != self._outage:  # say it once per outage, then retry quietly
            self.events.emit("apply.failed", reason=str(error), retrying=True)
        self._outage = str(error)
        self._unreachable = isinstance(error, ClusterUnavailable)
        return "retry"

    # -- watching ---------------------------------------------------------------------------
    async def watcher_task(self) -> None:
        """Run the watcher; restart it when the set of watched things changes."""
        from devloop.loop.watchset import Changes

        send, receive = anyio.create_memory_object_stream[Changes](1)
        async with send, anyio.create_task_group() as tg:
            tg.start_soon(self._consume, receive)
            while True:
                await self._watch_until_changed(send.clone())

    async def _watch_until_changed(self, send: Any) -> None:
        from devloop.loop.watching import watcher

        self.watch_changed = anyio.Event()
        watchset = self._watch_set()
        async with anyio.create_task_group() as tg:
            await tg.start(
                functools.partial(
                    watcher,
                    watchset,
                    send,
                    quiet=self.settings.debounce_ms / 1000,
                    max_wait=self.settings.max_wait_ms / 1000,
                    leading=True,
                )
            )
            self.events.emit("watch.started", images=len(watchset.contexts))
            await self.watch_changed.wait()
            tg.cancel_scope.cancel()

    async def _consume(self, receive: Any) -> None:
        async with receive:
            async for changes in receive:
                await self.on_changes(changes)

    def _watch_set(self) -> Any:
        from devloop.loop.watchset import watch_set

        sources, manifests, render_inputs = self._watch_inputs()
        self._watched = self._watch_key()
        try:
            return watch_set(sources, manifests, render_inputs)
        except DevloopError as error:
            self.events.emit("config.failed", reason=str(error))
            return watch_set({}, manifests, render_inputs)

    def _watch_inputs(self) -> tuple[dict[str, Source], tuple[str, ...], tuple[str, ...]]:
        sources = source_urls(self.loaded.found) if self.loaded else {}
        files, render = self.settings.files, self.settings.render
        render_inputs = (self.settings.render_inputs or files) if render else ()
        return sources, () if render else files, render_inputs

    def _watch_key(self) -> tuple[Any, ...]:
        sources, manifests, render_inputs = self._watch_inputs()
        return tuple(sorted(sources.items(), key=str)), manifests, render_inputs

    def _watch_set_changed(self) -> bool:
        return self._watched != self._watch_key()


async def _signals(scope: anyio.CancelScope, events: Events) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for signum in received:
            if scope.cancel_called:
                os._exit(130)  # the second Ctrl-C: leave at once
            events.emit("shutdown", reason=signal.Signals(signum).name)
            scope.cancel()


def initial_settings(flags: dict[str, Any]) -> Settings:
    """Flags, environment and the project's Settings document, read before anything starts."""
    settings = settle(flags)
    try:
        return settle(flags, load(settings).file_settings)
    except DevloopError:
        return settings  # broken manifests: `up` reports them itself, `down` needs no more


async def run(flags: dict[str, Any]) -> int:
    settings = initial_settings(flags)
    events = Events(settings.log_format, tee_dir=Path(LOG_DIR))
    controller = Controller(settings, flags, events)
    try:
        if settings.resolved_target() == "kubernetes":
            await controller.deployer.cluster()  # a kubeconfig it cannot use ends `up` at once
        async with anyio.create_task_group() as tg:
            tg.start_soon(_signals, tg.cancel_scope, events)
            await controller.run()
        if controller.settings.cleanup and controller.deployer.docker is None:
            await _cleanup(controller)
    finally:
        events.close()
    return 0


async def _cleanup(controller: Controller) -> None:
    from devloop.targets.kubernetes import applying

    with anyio.move_on_after(SHUTDOWN_GRACE_S, shield=True):
        cluster = await controller.deployer.cluster()
        deleted = await anyio.to_thread.run_sync(
            applying.delete_app,
            cluster,
            controller.settings.app_name,
            controller.settings.namespace,
        )
        controller.events.emit("cleanup.finished", deleted=len(deleted))


def down(flags: dict[str, Any]) -> int:
    """`devloop down`: delete everything `devloop up` applied (or started) for the app."""
    settings = initial_settings(flags)
    if settings.resolved_target() == "docker":
        from devloop.targets.docker import containers

        containers.remove_app(settings.app_name, timeout=5)
        print(f"removed the containers and network of app {settings.app_name}")
        return 0
    from devloop.targets.kubernetes import applying

    cluster = applying.Cluster(settings.kubeconfig, settings.context)
    deleted = applying.delete_app(cluster, settings.app_name, settings.namespace)
    for name in deleted:
        print(f"deleted {name}")
    print(f"{len(deleted)} objects of app {settings.app_name} deleted")
    return 0


def _listing(paths: Any, most: int = 5) -> str:
    """A short, sorted list of paths for a reason field."""
    ordered = sorted(paths)
    more = f" and {len(ordered) - most} more" if len(ordered) > most else ""
    return ", ".join(ordered[:most]) + more
