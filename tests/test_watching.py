"""The watcher turns file events into attributed, debounced batches of changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from devloop.kbld.model import DockerBuild, ImageRef, Source
from devloop.loop.watching import Debouncer, watcher
from devloop.loop.watchset import Changes, WatchSet, is_ignored_path, watch_roots, watch_set

pytestmark = pytest.mark.timeout(30)
BATCH_TIMEOUT_S = 10.0  # generous: a loaded CI machine, never part of the behaviour under test


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write(path: Path, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path: Path) -> WatchSet:
    """Two images (api, web), manifests in config/, web's Dockerfile outside its context."""
    write(tmp_path / "api/Dockerfile", "FROM scratch\n")
    write(tmp_path / "api/.dockerignore", "node_modules\n*.log\n")
    write(tmp_path / "api/main.go")
    write(tmp_path / "api/node_modules/dep/index.js")
    write(tmp_path / "web/index.html")
    write(tmp_path / "docker/web.Dockerfile", "FROM scratch\n")
    write(tmp_path / "config/app.yaml")
    write(tmp_path / "devloop.yml")
    (tmp_path / ".git/objects").mkdir(parents=True)
    sources = {
        "api": Source(ImageRef(image="api"), "api"),
        "web": Source(ImageRef(image="web"), "web", DockerBuild(file="../docker/web.Dockerfile")),
    }
    return watch_set(sources, manifests=["config"], config=["devloop.yml"], base=tmp_path)


# -- pure parts ------------------------------------------------------------------------------


def changed(*paths: str) -> Changes:
    return Changes(images={"api": set(paths)})


def test_a_burst_becomes_one_batch_after_the_quiet_period() -> None:
    debouncer = Debouncer(quiet=0.1, max_wait=2.0)
    for now in (10.0, 10.05, 10.09):
        debouncer.add(changed(f"f{now}"), now)
    assert debouncer.deadline() == pytest.approx(10.19)
    assert not debouncer.due(10.18)
    assert debouncer.due(10.19)
    assert debouncer.take().images == {"api": {"f10.0", "f10.05", "f10.09"}}
    assert debouncer.deadline() is None


def test_a_file_that_never_stops_changing_is_cut_off_by_the_cap() -> None:
    debouncer = Debouncer(quiet=0.1, max_wait=2.0)
    now = 0.0
    while not debouncer.due(now):
        debouncer.add(changed("app.log"), now)
        now += 0.05
    assert now == pytest.approx(2.0)


def test_ignored_paths_never_start_a_batch() -> None:
    debouncer = Debouncer()
    debouncer.add(Changes(ignored={".main.go.swp"}), 1.0)
    assert debouncer.deadline() is None


@pytest.mark.parametrize(
    "path",
    [
        "/p/.git/index",
        "/p/.git",
        "/p/sub/.git/HEAD",
        "/p/.main.go.swp",
        "/p/.main.go.swx",
        "/p/4913",
        "/p/main.go~",
        "/p/#main.go#",
        "/p/.#main.go",
        "/p/main.go___jb_tmp___",
        "/p/main.go___jb_old___",
        "/p/.main.go.kate-swp",
        "/p/x-go-tmp-umask",
        "/p/.DS_Store",
        "/p/.idea/workspace.xml",
    ],
)
def test_git_and_editor_temporary_files_are_ignored(path: str) -> None:
    assert is_ignored_path(path)


@pytest.mark.parametrize("path", ["/p/main.go", "/p/.gitignore", "/p/swp.go", "/p/4913.go"])
def test_ordinary_files_are_not_ignored(path: str) -> None:
    assert not is_ignored_path(path)


def test_a_change_maps_to_the_image_whose_context_holds_it(project: WatchSet) -> None:
    changes = project.classify([str(project.base / "api/main.go")])
    assert changes.images == {"api": {"main.go"}}
    assert not changes.manifests and not changes.config


def test_dockerignored_and_temporary_paths_are_ignored(project: WatchSet) -> None:
    paths = ["api/node_modules/dep/index.js", "api/debug.log", "api/.main.go.swp", ".git/index"]
    changes = project.classify([str(project.base / p) for p in paths])
    assert not changes
    assert changes.ignored == set(paths)


def test_the_dockerfile_and_dockerignore_count_for_their_image(project: WatchSet) -> None:
    base = project.base
    changes = project.classify(
        [str(base / "docker/web.Dockerfile"), str(base / "api/.dockerignore")]
    )
    assert changes.images == {"web": {"../docker/web.Dockerfile"}, "api": {".dockerignore"}}


def test_a_new_dockerfile_specific_ignore_file_counts_and_changes_the_rules(
    project: WatchSet,
) -> None:
    specific = write(project.base / "docker/web.Dockerfile.dockerignore", "*.html\n")
    assert project.classify([str(specific)]).images == {
        "web": {"../docker/web.Dockerfile.dockerignore"}
    }
    assert project.touches_ignore_rules([str(specific)])
    html = str(project.base / "web/index.html")
    assert project.reloaded().classify([html]).ignored == {"web/index.html"}


def test_an_invalid_ignore_file_keeps_the_previous_rules(project: WatchSet) -> None:
    write(project.base / "api/.dockerignore", "[\n")
    assert project.reloaded() is project


def test_a_manifest_change_is_manifest_only(project: WatchSet) -> None:
    changes = project.classify([str(project.base / "config/app.yaml")])
    assert changes.manifests == {"config/app.yaml"}
    assert not changes.images and not changes.config


def test_a_config_file_change_reloads_the_config(project: WatchSet) -> None:
    changes = project.classify([str(project.base / "devloop.yml")])
    assert changes.config == {"devloop.yml"} and not changes.images


def test_excluded_and_git_directories_are_not_watched(project: WatchSet) -> None:
    watched = {p.relative_to(project.base).as_posix() for p in watch_roots(project)}
    assert watched == {"api", "web", "docker", "config", "."}


# -- the watcher with a scripted watchfiles and a fake clock ---------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scripted(clock: FakeClock, steps: list[tuple[float, set[str]]]) -> Any:
    """An awatch stand-in: at each (time, paths) step the clock moves, then the paths arrive.

    An empty set is watchfiles' "nothing happened" tick (yield_on_timeout).
    """

    async def awatch(*paths: str, **options: Any) -> AsyncIterator[set[tuple[int, str]]]:
        for at, changed_paths in steps:
            clock.now = at
            yield {(2, p) for p in changed_paths}

    return awatch


async def run_scripted(project: WatchSet, steps: list[tuple[float, set[str]]]) -> list[Changes]:
    clock = FakeClock()
    send, receive = anyio.create_memory_object_stream[Changes](100)
    async with receive:
        await watcher(project, send, awatch=scripted(clock, steps), clock=clock)
        return [batch async for batch in receive]


@pytest.mark.anyio
async def test_a_scripted_burst_is_sent_as_one_batch(project: WatchSet) -> None:
    go = str(project.base / "api/main.go")
    html = str(project.base / "web/index.html")
    steps = [(0.0, {go}), (0.03, {html}), (0.06, {go}), (0.2, set()), (5.0, set())]
    batches = await run_scripted(project, steps)
    assert [b.images for b in batches] == [{"api": {"main.go"}, "web": {"index.html"}}]


@pytest.mark.anyio
async def test_a_continuously_changing_file_still_yields_a_batch_by_the_cap(
    project: WatchSet,
) -> None:
    go = str(project.base / "api/main.go")
    steps = [(i * 0.05, {go}) for i in range(100)]  # every 50 ms for 5 s
    batches = await run_scripted(project, steps)
    assert len(batches) == 3  # cut at 2 s and 4 s, then the rest when the watch ends


@pytest.mark.anyio
async def test_only_ignored_events_send_nothing(project: WatchSet) -> None:
    noise = {str(project.base / p) for p in ("api/.x.swp", ".git/index", "api/x.log")}
    batches = await run_scripted(project, [(0.0, noise), (1.0, set()), (9.0, set())])
    assert batches == []


# -- the watcher on the real filesystem ------------------------------------------------------


@asynccontextmanager
async def watching(project: WatchSet, quiet: float = 0.05) -> AsyncIterator[Batches]:
    send, receive = anyio.create_memory_object_stream[Changes](100)
    async with receive, anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: watcher(project, send, quiet=quiet, task_status=task_status)
        )
        yield Batches(receive, project.base)
        tg.cancel_scope.cancel()


class Batches:
    """Batches as they arrive, with Tilt's fsync barrier: write a sentinel, wait for it."""

    def __init__(self, receive: MemoryObjectReceiveStream[Changes], base: Path) -> None:
        self.receive, self.base, self.count = receive, base, 0

    async def next(self) -> Changes:
        with anyio.fail_after(BATCH_TIMEOUT_S):
            return await self.receive.receive()

    async def through_barrier(self) -> Changes:
        """Everything that arrives up to and including a fresh sentinel in config/."""
        self.count += 1
        sentinel = write(self.base / f"config/sentinel-{self.count}.yaml")
        seen = Changes()
        while f"config/{sentinel.name}" not in seen.manifests:
            seen.merge(await self.next())
        return seen


@pytest.mark.anyio
async def test_a_saved_file_reaches_only_its_image(project: WatchSet) -> None:
    async with watching(project) as batches:
        write(project.base / "api/main.go", "package main // edited\n")
        seen = await batches.through_barrier()
    assert seen.images == {"api": {"main.go"}}


@pytest.mark.anyio
async def test_ignored_directories_swap_files_and_git_never_reach_an_image(
    project: WatchSet,
) -> None:
    async with watching(project) as batches:
        write(project.base / "api/node_modules/dep/index.js", "changed\n")
        write(project.base / "api/node_modules/new/deep/file.js")
        write(project.base / "api/.main.go.swp")
        write(project.base / "api/4913")
        write(project.base / ".git/index")
        write(project.base / "api/debug.log")
        seen = await batches.through_barrier()
    assert seen.images == {}
    assert seen.manifests == {"config/sentinel-1.yaml"}


@pytest.mark.anyio
async def test_a_manifest_edit_is_a_manifest_only_batch(project: WatchSet) -> None:
    async with watching(project) as batches:
        write(project.base / "config/app.yaml", "kind: ConfigMap\n")
        seen = await batches.next()
    assert seen.manifests == {"config/app.yaml"} and not seen.images


@pytest.mark.anyio
async def test_a_burst_of_writes_is_one_batch(project: WatchSet) -> None:
    async with watching(project, quiet=0.5) as batches:
        for i in range(20):
            write(project.base / f"api/gen/file{i}.go")
        first = await batches.next()
    assert first.images["api"] >= {f"gen/file{i}.go" for i in range(20)}


@pytest.mark.anyio
async def test_files_in_a_new_directory_are_seen_and_so_are_later_edits(
    project: WatchSet,
) -> None:
    async with watching(project) as batches:
        write(project.base / "api/pkg/deep/a.go")
        first = await batches.through_barrier()
        write(project.base / "api/pkg/deep/b.go")
        second = await batches.through_barrier()
    assert "pkg/deep/a.go" in first.images["api"]
    assert second.images == {"api": {"pkg/deep/b.go"}}


@pytest.mark.anyio
async def test_un_ignoring_a_directory_starts_watching_it(project: WatchSet) -> None:
    async with watching(project) as batches:
        write(project.base / "api/.dockerignore", "*.log\n")
        await batches.through_barrier()
        write(project.base / "api/node_modules/dep/index.js", "changed\n")
        seen = await batches.through_barrier()
    assert seen.images == {"api": {"node_modules/dep/index.js"}}


def test_with_a_leading_edge_a_lone_save_is_due_at_once_and_a_burst_gives_two_batches() -> None:
    debouncer = Debouncer(quiet=0.1, max_wait=2.0, leading=True)
    debouncer.add(_image_change("a.go"), now=10.0)
    assert debouncer.due(10.0), "the first change after a quiet period goes at once"
    first = debouncer.take()
    for step in range(1, 20):  # the rest of the burst, 40 ms apart
        debouncer.add(_image_change(f"b{step}.go"), now=10.0 + step * 0.04)
        assert not debouncer.due(10.0 + step * 0.04)
    assert debouncer.due(10.0 + 19 * 0.04 + 0.1)
    second = debouncer.take()
    assert first.images == {"app": {"a.go"}}
    assert len(second.images["app"]) == 19
    debouncer.add(_image_change("c.go"), now=20.0)
    assert debouncer.due(20.0), "after a quiet period the next save goes at once again"


def _image_change(path: str) -> Changes:
    return Changes(images={"app": {path}})
