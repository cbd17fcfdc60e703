"""One deploy cycle of the daemon: render, resolve with the lanes' digests, apply, wait.

The manifests are read again (or the `--render` command is run again) on every cycle, resolved
with the images the lanes built, applied with server-side apply, and the workloads whose rendered
content changed are waited for. Every outcome is one event; failures are reported and raised for
the caller to decide whether to retry (cluster unreachable) or wait for the next change.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import yaml

from devloop.errors import DevloopError, ManifestError
from devloop.events import Events, Stopwatch
from devloop.kbld.documents import read_inputs
from devloop.kbld.model import Config, Resolved, Source
from devloop.kbld.pipeline import Found, find, rewrite
from devloop.kbld.resolving import ResolveOptions, Resolver
from devloop.settings import Settings, from_document

RENDER_TIMEOUT_S = 60.0
APPLY_TIMEOUT_S = 120.0


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
    """Applies the newest state; remembers what it applied so unchanged objects are not resent."""

    settings: Settings
    events: Events
    inventory: Any = None  # applying.Inventory of the last successful apply
    docker: Any = None  # a docker_target.DockerTarget: run containers instead of applying
    _cluster: Any = None
    _resolved_cache: dict[str, Resolved] = field(default_factory=dict)  # tags and digests
    _cache_config: Config | None = None  # the config `_resolved_cache` was resolved with

    async def deploy(self, loaded: Loaded, built: Mapping[str, Resolved]) -> None:
        watch = Stopwatch()
        self.events.emit("apply.started", app=self.settings.app_name, target=self.target_name)
        resolved = await self._resolve(loaded, built)
        objects = _objects(loaded.found, resolved)
        if self.docker is not None:
            await self._run_containers(objects, watch)
        else:
            result = await self._apply(objects)
            self.events.emit("apply.finished", seconds=watch.seconds, **result.counts())
        for url in sorted(resolved):
            self.events.line("resolve", f"final: {url} -> {resolved[url].url}")
        if self.docker is None:
            await self._wait(result)

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

    @property
    def target_name(self) -> str:
        return "kubernetes" if self.docker is None else "docker"

    async def _run_containers(self, objects: list[Any], watch: Stopwatch) -> None:
        assert self.docker is not None
        datas, wheres = [o.data for o in objects], [o.where for o in objects]
        await self.docker.deploy(datas, self.settings.app_name, wheres)
        self.events.emit("apply.finished", seconds=watch.seconds, target="docker")
        self.events.emit("rollout.finished", seconds=watch.seconds, target="docker")

    async def _apply(self, objects: list[Any]) -> Any:
        from devloop.targets.kubernetes import applying

        cluster = await self.cluster()
        with anyio.fail_after(APPLY_TIMEOUT_S):
            result = await anyio.to_thread.run_sync(
                lambda: applying.apply_objects(
                    cluster,
                    objects,
                    self.settings.app_name,
                    self.settings.namespace,
                    self.inventory,
                )
            )
        self.inventory = result.inventory
        return result

    async def _wait(self, result: Any) -> None:
        from devloop.targets.kubernetes import rollout

        workloads = result.changed_workloads()
        if not workloads:
            return
        watch = Stopwatch()
        cluster = await self.cluster()
        await anyio.to_thread.run_sync(
            lambda: rollout.wait_for_rollouts(cluster, workloads, self.settings.rollout_timeout_s)
        )
        self.events.emit(
            "rollout.finished", seconds=watch.seconds, workloads=[w.name for w in workloads]
        )

    async def ping(self) -> None:
        cluster = await self.cluster()
        await anyio.to_thread.run_sync(cluster.ping)

    async def cluster(self) -> Any:
        if self._cluster is None:
            from devloop.targets.kubernetes import applying

            self._cluster = await anyio.to_thread.run_sync(
                lambda: applying.Cluster(self.settings.kubeconfig, self.settings.context)
            )
        return self._cluster


def _objects(found: Found, resolved: Mapping[str, Resolved]) -> list[Any]:
    """The rendered documents as ManifestObjects (data plus where), skipping empty ones."""
    from devloop.targets.kubernetes.applying import ManifestObject

    text = rewrite(found, resolved, annotate=True)
    rendered = [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]
    wheres = [doc.where for doc in found.documents if doc.data]
    if len(rendered) != len(wheres):
        raise DevloopError("internal error: rendered documents do not match the input")
    return [ManifestObject(data, where) for data, where in zip(rendered, wheres, strict=True)]
