"""One deploy cycle of the daemon: render, resolve with the lanes' digests, apply, wait.

The manifests are read again (or the `--render` command is run again) on every cycle, resolved
with the images the lanes built, applied with server-side apply, and the workloads whose rendered
content changed are waited for. Every outcome is one event; failures are reported and raised for
the caller to decide whether to retry (cluster unreachable) or wait for the next change.
"""

from __future__ import annotations

import io
import math
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import yaml
from anyio.streams.memory import MemoryObjectReceiveStream

from devloop.errors import DevloopError, ManifestError, RolloutError
from devloop.events import Events
from devloop.kbld.documents import read_inputs
from devloop.kbld.model import Config, Resolved, Source
from devloop.kbld.pipeline import Found, find, rewrite
from devloop.kbld.resolving import ResolveOptions, Resolver
from devloop.loop.lanes import LaneState
from devloop.loop.retry import Outage
from devloop.settings import Settings, from_document
from devloop.targets import placement
from devloop.targets.base import ManifestObject, Target

RENDER_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Loaded:
    """The newest good input: manifests with their config, and the settings documents found."""

    found: Found
    file_settings: list[dict[str, Any]]


def load(settings: Settings) -> Loaded:
    """Read the manifests (or run the render command) and split off every config document."""
    if settings.render:
        documents = read_inputs(["-"], io.StringIO(run_render(settings.render)))
    else:
        documents = read_inputs(list(settings.files), io.StringIO(""))
    found = find(documents)
    return Loaded(found, [from_document(doc.data, doc.where) for doc in found.settings])


def run_render(command: str) -> str:
    try:
        done = subprocess.run(
            command,
            shell=True,
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ManifestError(
            f"--render '{command}'", f"did not finish in {RENDER_TIMEOUT_S:.0f} s"
        ) from error
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-10:])
        raise ManifestError(f"--render '{command}'", f"exited with {done.returncode}:\n{tail}")
    return done.stdout


def source_urls(found: Found) -> dict[str, Source]:
    """The references a Source builds (after overrides), keyed by that reference."""
    lanes: dict[str, Source] = {}
    for url in found.urls:
        override = found.config.override_for(url)
        if override is not None and override.preresolved:
            continue
        target = override.new_image if override is not None else url
        source = found.config.source_for(target)
        if source is not None:
            lanes[url] = source
    return lanes


@dataclass
class Deployer:
    """Renders, resolves and hands the result to the target; keeps what resolving learnt."""

    events: Events
    target: Target
    _resolved_cache: dict[str, Resolved] = field(default_factory=dict)  # tags and digests
    _cache_config: Config | None = None  # the config `_resolved_cache` was resolved with

    async def deploy(
        self, loaded: Loaded, built: Mapping[str, Resolved], settings: Settings
    ) -> None:
        self.events.emit("apply.started", app=settings.app_name, target=self.target.name)
        delivered = await self.target.deliver(built)  # before anything is applied
        resolved = await self._resolve(loaded, delivered)
        objects = _objects(loaded.found, resolved)
        for url in sorted(resolved):
            self.events.line("resolve", f"final: {url} -> {resolved[url].url}")
        await self.target.deploy(objects, placement(settings))

    async def _resolve(self, loaded: Loaded, built: Mapping[str, Resolved]) -> dict[str, Resolved]:
        """Resolve with the lanes' images; other references are resolved once per config."""
        config = loaded.found.config
        if config != self._cache_config:
            self._resolved_cache, self._cache_config = {}, config
        resolver = Resolver(config, self.events, ResolveOptions(keep_unresolved_tags=True))
        prebuilt = {**self._resolved_cache, **built}
        try:
            resolved = await resolver.resolve_all(loaded.found.urls, prebuilt=prebuilt)
        finally:
            resolver.close()
        for url, why in resolver.unresolved.items():
            self.events.emit("resolve.skipped", ref=url, reason=f"used as written: {why}")
        kept = set(built) | set(resolver.unresolved)
        self._resolved_cache.update({u: r for u, r in resolved.items() if u not in kept})
        return resolved


# -- the deployer task ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reloaded:
    """The controller to the deployer: a new good config, and the lane requests it made."""

    loaded: Loaded
    settings: Settings
    requested: Mapping[str, int]  # lane url -> the request number its build must answer


DeployerInput = Reloaded | LaneState
CLUSTER_RETRY_S = (0.5, 1.0, 2.0, 3.0, 5.0)  # while the target is away, seconds between tries


@dataclass
class _Wanted:
    """What the deployer knows: the newest config, each lane's state, what it deployed last."""

    reloaded: Reloaded | None = None
    states: dict[str, LaneState] = field(default_factory=dict)
    requested: dict[str, int] = field(default_factory=dict)
    deployed: dict[str, Resolved] = field(default_factory=dict)
    dirty: bool = False

    def take(self, message: DeployerInput) -> None:
        if isinstance(message, Reloaded):
            self.reloaded, self.dirty = message, True
            for url, seq in message.requested.items():
                self.requested[url] = max(self.requested.get(url, 0), seq)
            return
        self.states[message.url] = message
        if message.result is not None and self.deployed.get(message.url) != message.result:
            self.dirty = True  # a skipped or failed build only wakes a deploy that waited

    def ready(self) -> Reloaded | None:
        """The config to deploy, once every lane it needs answered its newest request."""
        if not self.dirty or self.reloaded is None:
            return None
        for url in source_urls(self.reloaded.loaded.found):
            state = self.states.get(url)
            if state is None or state.result is None or state.handled < self.requested.get(url, 0):
                return None
        return self.reloaded

    def built(self) -> dict[str, Resolved]:
        return {url: s.result for url, s in self.states.items() if s.result is not None}


async def deployer(
    deploying: Deployer,
    inputs: MemoryObjectReceiveStream[DeployerInput],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Deploy the newest state whenever it is complete; retry while the target is away."""
    wanted, outage = _Wanted(), Outage(CLUSTER_RETRY_S)
    async with inputs:
        task_status.started()
        while True:
            with anyio.move_on_after(outage.delay() if outage.attempts else math.inf):
                try:
                    wanted.take(await inputs.receive())
                except anyio.EndOfStream:
                    return
            while True:  # take everything already queued: deploy the newest state only
                try:
                    wanted.take(inputs.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            if (reloaded := wanted.ready()) is not None:
                await _deploy_once(deploying, wanted, reloaded, outage)


async def _deploy_once(
    deploying: Deployer, wanted: _Wanted, reloaded: Reloaded, outage: Outage
) -> None:
    """One attempt; while the target is away, only a cheap ping is tried before the deploy."""
    events = deploying.events
    wanted.dirty, built = False, wanted.built()
    wanted.deployed = dict(built)
    try:
        if outage.attempts:
            await deploying.target.ping()
        await deploying.deploy(reloaded.loaded, built, reloaded.settings)
    except DevloopError as error:
        if not error.retryable:
            outage.ended()
            event = "rollout.failed" if isinstance(error, RolloutError) else "apply.failed"
            events.emit(event, reason=str(error))
            return
        if outage.failed(str(error)):  # said once per outage, then retried quietly
            events.emit("apply.failed", reason=str(error), retrying=True)
        wanted.dirty = True
        return
    if outage.ended():
        events.emit("cluster.reachable", reason=f"{deploying.target.describe()} answers again")


def _objects(found: Found, resolved: Mapping[str, Resolved]) -> list[ManifestObject]:
    """The rendered documents as ManifestObjects (data plus where), skipping empty ones."""
    text = rewrite(found, resolved, annotate=True)
    rendered = [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]
    wheres = [doc.where for doc in found.documents if doc.data]
    if len(rendered) != len(wheres):
        raise DevloopError("internal error: rendered documents do not match the input")
    return [ManifestObject(data, where) for data, where in zip(rendered, wheres, strict=True)]
