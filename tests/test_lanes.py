"""Build lanes: supersede, skip, fail and retry, with the Docker build replaced at its seam.

The real builds are exercised end to end in test_daemon.py; here the build function is a fake that
blocks until told to finish or stop, so the ordering is exact and no test sleeps.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.from_thread
import pytest

from devloop.errors import BuildError, EngineUnavailable
from devloop.events import Events
from devloop.kbld.model import ImageRef, Resolved, Source
from devloop.loop.lanes import Lane, LaneRunner

pytestmark = pytest.mark.anyio
SOURCE = Source(ImageRef(image="app"), path="app")


class FakeBuilds:
    """Each call blocks until the test releases it (or the lane sets the stop event)."""

    def __init__(self) -> None:
        self.calls: list[threading.Event] = []
        self.release = threading.Semaphore(0)
        self.outcomes: Iterator[Any] = iter(())
        self.called = anyio.Event()

    def on_call(self) -> None:
        self.called.set()

    def __call__(self, url: str, source: Source, stop: threading.Event) -> Resolved:
        self.calls.append(stop)
        anyio.from_thread.run_sync(self.on_call)
        while not self.release.acquire(timeout=0.01):
            if stop.is_set():
                raise BuildError(url, "cancelled")
        outcome = next(self.outcomes, None)
        if isinstance(outcome, Exception):
            raise outcome
        return Resolved(f"kbld:app-{len(self.calls)}")


class NotifyingStream(io.StringIO):
    """Collects the event lines and wakes a waiting test on each write (from the event loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = anyio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)


class Harness:
    def __init__(self, digests: list[str]) -> None:
        self.builds = FakeBuilds()
        self.stream = NotifyingStream()
        self.done = anyio.Event()
        digest_values = iter(digests)
        self.runner = LaneRunner(
            self.builds,
            lambda source: next(digest_values),
            Events("json", self.stream),
            anyio.CapacityLimiter(2),
            self._on_done,
        )
        self.lane = Lane("app", SOURCE)

    async def _on_done(self, lane: Lane) -> None:
        self.done.set()

    async def wait_done(self) -> None:
        with anyio.fail_after(5):
            await self.done.wait()
        self.done = anyio.Event()

    async def wait_calls(self, n: int) -> None:
        with anyio.fail_after(5):
            while len(self.builds.calls) < n:
                await self.builds.called.wait()
                self.builds.called = anyio.Event()

    async def wait_event(self, name: str) -> None:
        with anyio.fail_after(5):
            while name not in [e for e, _ in self.events()]:
                await self.stream.written.wait()
                self.stream.written = anyio.Event()

    def events(self) -> list[tuple[str, Any]]:
        records = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [(r["event"], r.get("reason")) for r in records if r["event"] != "output"]


async def test_a_newer_change_cancels_the_running_build_and_builds_once_more() -> None:
    h = Harness(["d1", "d2", "d2"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.runner.builder, h.lane)
        h.lane.request("changed: a.go")
        await h.wait_calls(1)
        h.lane.request("changed: b.go")
        await h.wait_calls(2)
        h.builds.release.release()
        await h.wait_done()
        tg.cancel_scope.cancel()
    assert h.builds.calls[0].is_set(), "the first build was told to stop"
    assert [e for e, _ in h.events()] == [
        "build.started",
        "build.cancelled",
        "build.started",
        "build.finished",
    ]
    assert h.events()[2][1] == "changed: b.go"
    assert h.lane.result == Resolved("kbld:app-2")


async def test_a_save_with_unchanged_inputs_skips_the_build() -> None:
    h = Harness(["same", "same"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.runner.builder, h.lane)
        h.lane.request("first build")
        await h.wait_calls(1)
        h.builds.release.release()
        await h.wait_done()
        h.lane.request("changed: main.go")
        await h.wait_done()
        tg.cancel_scope.cancel()
    assert [e for e, _ in h.events()] == ["build.started", "build.finished", "build.skipped"]
    assert len(h.builds.calls) == 1


async def test_a_failed_build_keeps_the_previous_image_and_the_next_change_retries() -> None:
    h = Harness(["d1", "d2", "d3"])
    h.builds.outcomes = iter([None, BuildError("app", "RUN exited 1"), None])
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.runner.builder, h.lane)
        for n in (1, 2, 3):
            h.lane.request(f"change {n}")
            await h.wait_calls(n)
            h.builds.release.release()
            await h.wait_done()
            if n == 2:
                assert h.lane.failed and h.lane.result == Resolved("kbld:app-1")
        tg.cancel_scope.cancel()
    assert [e for e, _ in h.events()] == [
        "build.started",
        "build.finished",
        "build.started",
        "build.failed",
        "build.started",
        "build.finished",
    ]
    assert h.lane.result == Resolved("kbld:app-3") and not h.lane.failed


async def test_an_unreachable_engine_is_retried_without_a_new_change() -> None:
    h = Harness(["d1", "d1"])
    h.builds.outcomes = iter([EngineUnavailable("cannot reach the Docker engine"), None])
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.runner.builder, h.lane)
        h.lane.request("first build")
        await h.wait_calls(1)
        h.builds.release.release()
        await h.wait_done()
        await h.wait_calls(2)  # the retry came by itself, after the backoff
        h.builds.release.release()
        await h.wait_done()
        tg.cancel_scope.cancel()
    assert [e for e, _ in h.events()][-1] == "build.finished"


async def test_cancelling_the_daemon_stops_a_running_build() -> None:
    h = Harness(["d1"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.runner.builder, h.lane)
        h.lane.request("first build")
        await h.wait_calls(1)
        tg.cancel_scope.cancel()
    assert h.builds.calls[0].is_set()


async def test_a_save_that_does_not_change_the_inputs_lets_the_running_build_finish() -> None:
    h = Harness(["d1", "d1"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.runner.builder, h.lane)
        h.lane.request("changed: main.go")
        await h.wait_calls(1)
        h.lane.request("changed: main.go")  # the same content saved again
        await h.wait_event("build.skipped")
        h.builds.release.release()
        await h.wait_done()
        tg.cancel_scope.cancel()
    assert not h.builds.calls[0].is_set()
    assert [e for e, _ in h.events()] == ["build.started", "build.skipped", "build.finished"]
    assert len(h.builds.calls) == 1
