"""One build lane per image: at most one build running, and a newer change supersedes it.

A lane holds the newest request for its image. When a request arrives while a build runs, the
build is cancelled (the Docker build really stops) and one build with the newest inputs follows:
changes never queue a backlog. Before building, the lane hashes the build inputs; when they equal
those of the image it already has, the build is skipped, so a no-op save costs one directory walk.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from devloop import blocking
from devloop.errors import DevloopError
from devloop.events import Events, Stopwatch
from devloop.kbld.model import Resolved, Source
from devloop.loop.retry import Outage

# Builds one image in a worker thread; the Event is set when the build must stop.
BuildFn = Callable[[str, Source, threading.Event], Resolved]
DigestFn = Callable[[Source], str]
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # backoff while the Docker engine is unreachable


@dataclass(frozen=True)
class BuildRequest:
    """The controller to the lane pool: build `url` from `source` (request number `seq`)."""

    url: str
    source: Source
    reason: str
    seq: int


@dataclass(frozen=True)
class Retire:
    """The controller to the lane pool: no manifest uses `url` any more; stop its lane."""

    url: str


@dataclass(frozen=True)
class LaneState:
    """The lane pool to the deployer, after every build, skip or failure of a lane."""

    url: str
    handled: int  # the newest request this state answers
    result: Resolved | None  # the newest good image; None until a build succeeded


@dataclass
class Lane:
    url: str  # the reference the Source matched (after overrides); the lane's identity
    source: Source
    result: Resolved | None = None  # the newest successful build
    built_inputs: str | None = None  # the input digest of `result`
    failed: bool = False  # the newest build failed; the next change retries
    outage: Outage = field(default_factory=lambda: Outage(RETRY_SECONDS))
    requested: int = 0  # the sequence number of the newest request
    handled: int = 0  # the newest request a finished build (or skip) answered
    _taking: int = 0  # the newest request the running cycle answers
    _pending: list[str] = field(default_factory=list)  # why the next build runs
    _wakeup: anyio.Event = field(default_factory=anyio.Event)
    _scope: anyio.CancelScope | None = None
    _stop: threading.Event | None = None

    @property
    def image(self) -> str:
        return self.url

    @property
    def busy(self) -> bool:
        return bool(self._pending) or self._scope is not None

    def request(self, reason: str, seq: int = 0) -> None:
        """Ask for a build with the newest inputs; a running build is checked and superseded.

        `seq` numbers the request, so the deployer can tell when a build has answered it.
        """
        self._pending.append(reason)
        self.requested = max(self.requested, seq)
        self._wakeup.set()

    def cancel_running(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._scope is not None:
            self._scope.cancel()

    async def next_request(self) -> str:
        while not self._pending:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
        reasons, self._pending = self._pending, []
        self._taking = self.requested
        return "; ".join(dict.fromkeys(reasons))

    def state(self) -> LaneState:
        return LaneState(self.url, self.handled, self.result)


@dataclass
class LaneRunner:
    """Runs lanes: builds, skips, cancellations and retries, each reported as one event."""

    build: BuildFn
    digest: DigestFn
    events: Events
    limiter: anyio.CapacityLimiter
    on_done: Callable[[Lane], Awaitable[None]]

    async def builder(self, lane: Lane) -> None:
        """The lane's long-running task."""
        while True:
            reason = await lane.next_request()
            if await self._cycle(lane, reason) == "retry":
                await self._backoff(lane, reason)

    async def _cycle(self, lane: Lane, reason: str) -> str:
        try:
            inputs = await anyio.to_thread.run_sync(self.digest, lane.source, limiter=self.limiter)
        except DevloopError as error:
            return await self._failed(lane, error, Stopwatch())
        if inputs == lane.built_inputs and lane.result is not None:
            self.events.emit(
                "build.skipped", image=lane.image, reason="inputs unchanged", ref=lane.result.url
            )
            lane.failed = False
            lane.outage.ended()
            await self._done(lane)
            return "skipped"
        return await self._build(lane, reason, inputs)

    async def _build(self, lane: Lane, reason: str, inputs: str) -> str:
        watch, stop = Stopwatch(), blocking.Stop()
        result: Resolved | None = None
        error: DevloopError | None = None
        with anyio.CancelScope() as scope:
            lane._scope, lane._stop = scope, stop
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._supersede, lane, inputs)
                    try:
                        async with self.limiter:
                            self.events.emit("build.started", image=lane.image, reason=reason)
                            result = await blocking.call(
                                self.build, lane.url, lane.source, stop, stop=stop
                            )
                    except DevloopError as exc:  # caught inside: the group would wrap it
                        error = exc
                    finally:
                        tg.cancel_scope.cancel()
            finally:
                lane._scope, lane._stop = None, None
        if stop.is_set() or scope.cancelled_caught:  # a build stopped on purpose
            self.events.emit(
                "build.cancelled",
                image=lane.image,
                seconds=watch.seconds,
                reason="superseded by a newer change",
            )
            return "cancelled"
        if result is None:
            return await self._failed(lane, error or DevloopError("no result"), watch)
        lane.result, lane.built_inputs, lane.failed = result, inputs, False
        lane.outage.ended()
        self.events.emit("build.finished", image=lane.image, seconds=watch.seconds, ref=result.url)
        await self._done(lane)
        return "built"

    async def _done(self, lane: Lane) -> None:
        lane.handled = lane._taking
        await self.on_done(lane)

    async def _supersede(self, lane: Lane, building: str) -> None:
        """While a build runs, stop it as soon as a request brings different inputs.

        A request whose inputs equal the running build's (a save without a change, a touch) is
        dropped, so the build it would have restarted finishes instead.
        """
        while True:
            await lane._wakeup.wait()
            lane._wakeup = anyio.Event()
            if not lane._pending:
                continue
            try:
                inputs = await anyio.to_thread.run_sync(self.digest, lane.source)
            except DevloopError:
                inputs = None  # the next cycle reports it
            if inputs != building:
                lane.cancel_running()
                return
            self.events.emit(
                "build.skipped", image=lane.image, reason="inputs equal the running build's"
            )
            lane._pending.clear()
            lane._taking = lane.requested  # the running build answers these requests too

    async def _failed(self, lane: Lane, error: DevloopError, watch: Stopwatch) -> str:
        lane.failed = True
        news = lane.outage.failed(str(error)) if error.retryable else True
        if not error.retryable:
            lane.outage.ended()
        if news:  # an engine that stays away is said once, then retried quietly
            self.events.emit(
                "build.failed",
                image=lane.image,
                seconds=watch.seconds,
                reason=str(error),
                retrying=error.retryable or None,
            )
        await self._done(lane)
        return "retry" if error.retryable else "failed"

    async def _backoff(self, lane: Lane, reason: str) -> None:
        with anyio.move_on_after(lane.outage.delay()):
            while not lane._pending:
                await lane._wakeup.wait()
                lane._wakeup = anyio.Event()
        if not lane._pending:
            lane.request(f"retry after: {reason}")


async def pool(
    runner: LaneRunner,
    requests: MemoryObjectReceiveStream[BuildRequest | Retire],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The lane pool: one builder task per image, added and retired as the requests say."""
    lanes: dict[str, tuple[Lane, anyio.CancelScope]] = {}
    async with requests, anyio.create_task_group() as tg:
        task_status.started()
        async for request in requests:
            if isinstance(request, Retire):
                if (retired := lanes.pop(request.url, None)) is not None:
                    retired[1].cancel()
                continue
            if request.url not in lanes:
                lane = Lane(request.url, request.source)
                lanes[request.url] = (lane, await tg.start(_lane_task, runner, lane))
            lane = lanes[request.url][0]
            lane.source = request.source
            lane.request(request.reason, request.seq)
        tg.cancel_scope.cancel()


async def _lane_task(
    runner: LaneRunner, lane: Lane, *, task_status: anyio.abc.TaskStatus[anyio.CancelScope]
) -> None:
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        await runner.builder(lane)
