"""Resolve every unique image reference to its final form, in kbld's order.

For each reference: the first matching override (a `preresolved` one ends it), then a matching
Source is built (and pushed when a Destination matches), a digest reference is validated and
normalised, and anything else is a tag resolved to a digest against its registry. References are
processed concurrently, bounded by `--build-concurrency`, and the blocking Docker and registry
calls run in worker threads that notice cancellation between streamed chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread
import anyio.to_thread

from devloop.errors import DevloopError, PermanentError, RegistryError
from devloop.kbld.model import Config, Destination, ImageRef, Origin, Resolved, Source
from devloop.kbld.offline import raise_failures, resolve_offline
from devloop.kbld.references import DEFAULT_TAG, parse_reference, repo_of, repository_in

if TYPE_CHECKING:
    from devloop.kbld.engine import Engine
    from devloop.kbld.registry import Registry, RegistryOptions
    from devloop.logs import LineSink


@dataclass(frozen=True)
class ResolveOptions:
    build: bool = True  # --build=false makes a Source match an error
    concurrency: int = 4  # --build-concurrency: references processed at once
    registry: RegistryOptions | None = None  # None: defaults (https, verified)
    # `devloop up` only: a tag the registry cannot resolve is used as written (and reported)
    # rather than blocking the deploy, as Skaffold and Tilt leave images they do not build.
    keep_unresolved_tags: bool = False
    builder: str | None = None  # --builder: a buildx builder name; None: buildx's current one
    default_repo: str | None = None  # --default-repo: push Sources no Destination matches here


@dataclass
class Resolver:
    """Turns references into `Resolved` values; one instance per run (or per daemon cycle)."""

    config: Config
    out: LineSink
    options: ResolveOptions = ResolveOptions()
    engine: Engine | None = None  # made at the first build: digest-only runs never import docker
    unresolved: dict[str, str] = field(default_factory=dict)  # url -> why it was kept as written
    _registry: Registry | None = field(default=None, init=False)

    async def resolve_all(
        self, urls: Iterable[str], prebuilt: Mapping[str, Resolved] | None = None
    ) -> dict[str, Resolved]:
        """Resolve each unique url; `prebuilt` supplies results the daemon already has."""
        limiter = anyio.CapacityLimiter(max(1, self.options.concurrency))
        results: dict[str, Resolved] = {}
        failures: dict[str, DevloopError] = {}

        async def one(url: str) -> None:
            try:
                results[url] = await self.resolve(url, limiter, prebuilt or {})
            except DevloopError as error:
                failures[url] = error

        async with anyio.create_task_group() as tg:
            for url in sorted(set(urls)):
                tg.start_soon(one, url)
        raise_failures(failures)
        return results

    async def resolve(
        self, url: str, limiter: anyio.CapacityLimiter, prebuilt: Mapping[str, Resolved]
    ) -> Resolved:
        if url in prebuilt:  # keyed by the reference as found, like the daemon's lanes
            return prebuilt[url]
        offline = resolve_offline(self.config, url)
        if offline is not None:
            return offline
        override = self.config.override_for(url)
        if override is not None:
            url = override.new_image
        source = self.config.source_for(url)
        if source is not None:
            return await self._build(url, source, limiter)
        return await self._resolve_tag(url, limiter)

    async def _build(self, url: str, source: Source, limiter: anyio.CapacityLimiter) -> Resolved:
        if not self.options.build:
            raise PermanentError(
                f"Building of images is disallowed (tried to build '{url}' because a source was "
                f"configured for it in {source.where or 'the config'}). Drop --build=false or "
                "remove the Source"
            )
        return await anyio.to_thread.run_sync(self.build_sync, url, source, limiter=limiter)

    def build_sync(self, url: str, source: Source) -> Resolved:
        """Build (and push, tag) one Source in a worker thread; see `build_source`."""
        if self.engine is None:
            from devloop.kbld.engine import Engine

            self.engine = Engine(builder=self.options.builder)
        return build_source(
            self.engine,
            self.config,
            url,
            source,
            self.out,
            self._registry_client,
            _cancelled,
            self.options.default_repo,
        )

    async def _resolve_tag(self, url: str, limiter: anyio.CapacityLimiter) -> Resolved:
        registry = self._registry_client()
        try:
            digest_url = await anyio.to_thread.run_sync(registry.resolve, url, limiter=limiter)
        except RegistryError as error:
            if not self.options.keep_unresolved_tags:
                raise
            self.unresolved[url] = str(error)
            return Resolved(url)
        tag = parse_reference(url).tag or DEFAULT_TAG
        return Resolved(digest_url, ({"resolved": {"tag": tag, "url": url}},))

    def close(self) -> None:
        """Close the registry connections kept alive for this run."""
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def _registry_client(self) -> Registry:
        if self._registry is None:
            from devloop.kbld.registry import Registry, RegistryOptions

            self._registry = Registry(self.options.registry or RegistryOptions())
        return self._registry


def build_source(
    engine: Engine,
    config: Config,
    url: str,
    source: Source,
    out: LineSink,
    registry: Callable[[], Registry],
    cancelled: Callable[[], bool] | None = None,
    default_repo: str | None = None,
) -> Resolved:
    """Build `source` for `url`; push to its Destination and add its tags when one matches,
    else to `default_repo` when one is given (its name escaped, see `repository_in`)."""
    from devloop.kbld.building import build_image, push_image
    from devloop.kbld.config import check_source_path
    from devloop.kbld.origins import local_and_git_origins

    check_source_path(source)
    origins: list[Origin] = list(local_and_git_origins(source.path))
    built = build_image(engine, source, repo_of(url), out, cancelled)
    destination = config.destination_for(url)
    if destination is None and default_repo:
        destination = Destination(ImageRef(image=url), repository_in(default_repo, url))
    if destination is None:
        return Resolved(built.tag, tuple(origins))
    pushed = push_image(engine, built.tag, destination.new_image, out)
    final = parse_reference(destination.new_image).with_digest(pushed.rpartition("@")[2])
    for tag in destination.tags:
        registry().tag(final, tag)
    if destination.tags:
        origins.append({"tagged": {"tags": list(destination.tags)}})
    return Resolved(final, tuple(origins))


def _cancelled() -> bool:
    """True once the task that started this worker thread has been cancelled."""
    try:
        anyio.from_thread.check_cancelled()
    except Exception:
        raise
    except BaseException:  # the backend's cancellation (get_cancelled_exc_class needs a loop)
        return True
    return False
