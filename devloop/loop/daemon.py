"""`devloop up`: one task group owns the pipeline, each stage a task joined by streams.

    watcher --Changes--> controller --BuildRequest--> lane pool --LaneState--> deployer
                             \\------------------------Reloaded---------------------^

The controller holds the config: it maps each batch of changes to the lanes whose inputs changed
(and to a re-render when manifests or config changed) and tells the watcher when what is watched
changes. The deployer deploys the newest state once every lane it needs has answered its newest
request. Expected failures are events, never crashes: a broken config keeps the last good one, a
failed build keeps the old image running, an unreachable target is retried with backoff.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from devloop.errors import DevloopError
from devloop.events import Events
from devloop.kbld.model import Config, Resolved, Source
from devloop.kbld.resolving import build_source
from devloop.loop import watching
from devloop.loop.deploying import (
    Deployer,
    DeployerInput,
    Loaded,
    Reloaded,
    deployer,
    load,
    source_urls,
)
from devloop.loop.lanes import BuildRequest, Lane, LaneRunner, Retire, pool
from devloop.loop.watchset import Changes, WatchSet
from devloop.settings import Settings, settle
from devloop.targets import delete_app, open_target
from devloop.targets.base import Target

if TYPE_CHECKING:
    from devloop.kbld.engine import Engine
    from devloop.kbld.registry import Registry

LOG_DIR = ".devloop/logs"  # each image's build output is also kept here, one file per image
STREAM_BUFFER = 64  # messages between stages; a full buffer makes the sender wait
WatchKey = tuple[object, ...]


class Controller:
    """Reloads the config, maps changes to lane requests, says when the watch set changes."""

    def __init__(
        self,
        settings: Settings,
        flags: Mapping[str, Any],
        events: Events,
        lanes: MemoryObjectSendStream[BuildRequest | Retire],
        deploys: MemoryObjectSendStream[DeployerInput],
        watchsets: MemoryObjectSendStream[WatchSet],
    ) -> None:
        self.settings, self.flags, self.events = settings, flags, events
        self._lanes, self._deploys, self._watchsets = lanes, deploys, watchsets
        self.loaded: Loaded | None = None
        self._sources: dict[str, Source] = {}  # the lanes' Sources, by the lanes' references
        self._seq = 0
        self._watched: WatchKey | None = None

    @property
    def config(self) -> Config | None:
        return self.loaded.found.config if self.loaded else None

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
        if self.loaded is not None:
            self.events.emit("config.reloaded", reason=why)
        self.loaded, self.settings = loaded, settings
        requested = await self._sync_lanes(source_urls(loaded.found))
        await self._deploys.send(Reloaded(loaded, settings, requested))
        if self._watch_key() != self._watched:
            await self._watchsets.send(self.watch_set())

    async def _sync_lanes(self, wanted: dict[str, Source]) -> dict[str, int]:
        """Request first builds and rebuilds of changed Sources; retire lanes no longer used."""
        requested: dict[str, int] = {}
        for url, source in wanted.items():
            before = self._sources.get(url)
            if before != source:
                why = "first build" if before is None else "its Source changed"
                requested[url] = await self._request(url, source, why)
        for url in set(self._sources) - set(wanted):
            await self._lanes.send(Retire(url))
        self._sources = dict(wanted)
        return requested

    async def _request(self, url: str, source: Source, reason: str) -> int:
        self._seq += 1
        await self._lanes.send(BuildRequest(url, source, reason, self._seq))
        return self._seq

    async def on_changes(self, changes: Changes) -> None:
        images = {key: sorted(files) for key, files in changes.images.items()}
        self.events.emit(
            "change.detected",
            images=sorted(images) or None,
            manifests=sorted(changes.manifests) or None,
            config=sorted(changes.config) or None,
        )
        if changes.config or changes.manifests:
            await self.reload("changed: " + _listing({*changes.config, *changes.manifests}))
        requested: dict[str, int] = {}
        for key, files in images.items():  # the watch set is keyed by the lanes' references
            if (source := self._sources.get(key)) is not None:
                requested[key] = await self._request(key, source, "changed: " + _listing(files))
        if requested and self.loaded is not None:
            await self._deploys.send(Reloaded(self.loaded, self.settings, requested))

    async def controller(
        self,
        changes: MemoryObjectReceiveStream[Changes],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """The stage task: the first load, then one reaction per batch of changes."""
        async with changes, self._lanes, self._deploys, self._watchsets:
            await self.reload("start")
            if self._watched is None:  # no good config yet: watch the manifests anyway
                await self._watchsets.send(self.watch_set())
            task_status.started()
            async for batch in changes:
                await self.on_changes(batch)

    def watch_set(self) -> WatchSet:
        from devloop.loop.watchset import watch_set

        sources, manifests, render_inputs = self._watch_inputs()
        self._watched = self._watch_key()
        try:
            return watch_set(sources, manifests, render_inputs)
        except DevloopError as error:
            self.events.emit("config.failed", reason=str(error))
            return watch_set({}, manifests, render_inputs)

    def _watch_inputs(self) -> tuple[dict[str, Source], tuple[str, ...], tuple[str, ...]]:
        files, render = self.settings.files, self.settings.render
        render_inputs = (self.settings.render_inputs or files) if render else ()
        return dict(self._sources), () if render else files, render_inputs

    def _watch_key(self) -> WatchKey:
        sources, manifests, render_inputs = self._watch_inputs()
        return tuple(sorted(sources.items(), key=str)), manifests, render_inputs


class Builds:
    """The lane pool's build function: one image in a worker thread, with the newest config."""

    def __init__(self, controller: Controller, events: Events) -> None:
        self._controller, self._events = controller, events
        self._engine: Engine | None = None  # made on the first build (it imports docker)

    def __call__(self, url: str, source: Source, stop: threading.Event) -> Resolved:
        config = self._controller.config
        assert config is not None, "a lane builds only after a good config was loaded"
        if self._engine is None:
            from devloop.kbld.engine import Engine

            self._engine = Engine(builder=self._controller.settings.builder)
        return build_source(
            self._engine, config, url, source, self._events, self._registry, stop.is_set
        )

    @staticmethod
    def _registry() -> Registry:
        from devloop.kbld.registry import Registry, RegistryOptions

        return Registry(RegistryOptions())


async def watcher_supervisor(
    watchsets: MemoryObjectReceiveStream[WatchSet],
    changes: MemoryObjectSendStream[Changes],
    settings: Settings,
    events: Events,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the watcher over the newest watch set. A new set's watcher is live before the old
    one stops, so no change falls in between."""
    running: anyio.CancelScope | None = None
    async with watchsets, changes, anyio.create_task_group() as tg:
        async for watchset in watchsets:
            scope = await tg.start(_watch, watchset, changes.clone(), settings)
            if running is not None:
                running.cancel()
            else:
                task_status.started()
            running = scope
            events.emit("watch.started", images=len(watchset.contexts))
        tg.cancel_scope.cancel()


async def _watch(
    watchset: WatchSet,
    changes: MemoryObjectSendStream[Changes],
    settings: Settings,
    *,
    task_status: anyio.abc.TaskStatus[anyio.CancelScope],
) -> None:
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            await tg.start(
                functools.partial(
                    watching.watcher,
                    watchset,
                    changes,
                    quiet=settings.debounce_ms / 1000,
                    max_wait=settings.max_wait_ms / 1000,
                    leading=True,
                )
            )
            task_status.started(scope)


# -- wiring --------------------------------------------------------------------------------------


async def pipeline(
    settings: Settings, flags: Mapping[str, Any], events: Events, target: Target
) -> None:
    """Start the stages in dependency order; each is ready when `tg.start` returns."""
    changes_send, changes = anyio.create_memory_object_stream[Changes](1)
    lanes_send, lanes = anyio.create_memory_object_stream[BuildRequest | Retire](STREAM_BUFFER)
    deploys_send, deploys = anyio.create_memory_object_stream[DeployerInput](STREAM_BUFFER)
    watchsets_send, watchsets = anyio.create_memory_object_stream[WatchSet](STREAM_BUFFER)
    controller = Controller(settings, flags, events, lanes_send, deploys_send, watchsets_send)
    limiter = anyio.CapacityLimiter(settings.build_concurrency)
    runner = LaneRunner(
        Builds(controller, events), _input_digest, events, limiter, _report(deploys_send)
    )
    async with anyio.create_task_group() as tg:
        await tg.start(deployer, Deployer(events, target), deploys)
        await tg.start(pool, runner, lanes)
        await tg.start(controller.controller, changes)
        await tg.start(watcher_supervisor, watchsets, changes_send, settings, events)


def _report(send: MemoryObjectSendStream[DeployerInput]) -> Callable[[Lane], Awaitable[None]]:
    async def report(lane: Lane) -> None:
        await send.send(lane.state())

    return report


def _input_digest(source: Source) -> str:
    from devloop.loop.inputs import input_digest

    return input_digest(source)


async def _signals(
    stop: anyio.CancelScope,
    events: Events,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The first Ctrl-C (or SIGTERM) stops the pipeline; the second exits at once.

    This task lives outside `stop`, so it still listens while the pipeline shuts down.
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        task_status.started()
        async for signum in received:
            if stop.cancel_called:
                os._exit(130)
            events.emit("shutdown", reason=signal.Signals(signum).name)
            stop.cancel()


def initial_settings(flags: Mapping[str, Any]) -> Settings:
    """Flags, environment and the project's Settings document, read before anything starts."""
    settings = settle(flags)
    try:
        return settle(flags, load(settings).file_settings)
    except DevloopError:
        return settings  # broken manifests: `up` reports them itself, `down` needs no more


async def run(flags: Mapping[str, Any]) -> int:
    settings = initial_settings(flags)
    events = Events(settings.log_format, tee_dir=Path(LOG_DIR))
    events.capture_sdk_logs()
    try:
        async with anyio.create_task_group() as tg:
            stop = anyio.CancelScope()
            await tg.start(_signals, stop, events)
            with stop:
                async with open_target(settings, events) as target:
                    await pipeline(settings, flags, events, target)
            tg.cancel_scope.cancel()
    finally:
        events.close()
    return 0


def down(flags: Mapping[str, Any]) -> int:
    """`devloop down`: delete everything `devloop up` applied (or started) for the app."""
    settings = initial_settings(flags)
    events = Events(settings.log_format)
    try:
        deleted = anyio.run(delete_app, settings, events)
    finally:
        events.close()
    for name in deleted:
        print(f"deleted {name}")
    print(f"{len(deleted)} objects of app {settings.app_name} deleted")
    return 0


def _listing(paths: Iterable[str], most: int = 5) -> str:
    """A short, sorted list of paths for a reason field."""
    ordered = sorted(paths)
    more = f" and {len(ordered) - most} more" if len(ordered) > most else ""
    return ", ".join(ordered[:most]) + more
