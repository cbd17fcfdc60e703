"""The watcher: file events in, one attributed batch of changes out per quiet period.

Two concerns here; what a path means (`WatchSet`, `watch_roots`) is in `watchset.py`:
- `Debouncer` decides when a burst of events is over: after a quiet period (default 100 ms),
  or at the latest a cap after the burst began (default 2 s), so a file that never stops
  changing (a log inside a context) cannot starve the loop. Tilt uses 200 ms / 10 s; we wait
  less because builds are cancellable: a second event after an early batch supersedes the
  build it started instead of queueing behind it. `--debounce-ms` and `--max-wait-ms` set them.
  Pure: the caller passes the time.
- `watcher` runs watchfiles. Excluded directories are pruned BEFORE watches are added: every
  kept directory gets its own non-recursive watch, and when a kept directory appears or goes the
  watch is restarted (the new one is in place before the old one stops, and files already in a
  new directory are reported). Recursive watching would put an inotify watch on every directory
  of node_modules; see bench/watch.py for both measured.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from devloop.errors import PermanentError
from devloop.loop.watchset import Changes, WatchSet, watch_roots

DEFAULT_QUIET_S = 0.1  # quiet period after the last event, seconds (--debounce-ms)
DEFAULT_MAX_WAIT_S = 2.0  # cap from the first event of a burst, seconds (--max-wait-ms)
# watchfiles returns a group of events once none arrived for this long, and wakes up this often
# when idle: 10 ms gives a 21 ms save-to-batch floor for 0.3% idle CPU (20 ms: 41 ms, 0.23%).
STEP_MS = 10
RUST_TIMEOUT_MS = 5_000  # watchfiles returns to Python this often when idle

RawBatch = set[tuple[Any, str]]  # watchfiles' (Change, path) pairs


# The seam: `watchfiles.awatch`, or a scripted async generator in tests.
AWatch = Callable[..., AsyncIterator[RawBatch]]


class Debouncer:
    """Collects changes until a quiet period passes or the cap since the first one is hit.

    With `leading`, the first change after a quiet period is due at once (a single save starts
    its build within the watcher's own ~20 ms), and the rest of a burst is collected as usual
    into one trailing batch: a burst costs at most two builds, the first of which the trailing
    batch cancels when its inputs differ.
    Pure: the caller passes the time, so tests drive it with made-up clocks.
    """

    def __init__(
        self,
        quiet: float = DEFAULT_QUIET_S,
        max_wait: float = DEFAULT_MAX_WAIT_S,
        leading: bool = False,
    ):
        self.quiet, self.max_wait, self.leading = quiet, max_wait, leading
        self._pending: Changes | None = None
        self._first = self._last = 0.0
        self._previous: float | None = None  # the time of the newest change, taken or not
        self._now = False  # the pending batch is a leading edge: due at once

    def add(self, changes: Changes, now: float) -> None:
        if not changes:
            if self._pending is not None:
                self._pending.merge(changes)  # ignored paths ride along for the record
            return
        if self._pending is None:
            idle = self._previous is None or now - self._previous >= self.quiet
            self._pending, self._first, self._now = Changes(), now, self.leading and idle
        self._pending.merge(changes)
        self._last = self._previous = now

    def deadline(self) -> float | None:
        if self._pending is None:
            return None
        if self._now:
            return self._first
        return min(self._last + self.quiet, self._first + self.max_wait)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self) -> Changes:
        taken, self._pending = self._pending or Changes(), None
        return taken


def inotify_watch_count(pid: int | str = "self") -> int:
    """The inotify watches a process holds (Linux; 0 elsewhere), for the watch-budget report."""
    count = 0
    try:
        fds = os.scandir(f"/proc/{pid}/fdinfo")
    except OSError:
        return 0
    for entry in fds:
        try:
            with open(entry.path) as info:
                count += sum(line.startswith("inotify wd:") for line in info)
        except OSError:
            continue
    return count


# -- the watcher task ----------------------------------------------------------------------


class _ReadyProbe:
    """Given to awatch as its stop event. watchfiles calls `is_set()` from its worker thread
    every step once the OS watches exist, so the first call says the watches are in place."""

    def __init__(self) -> None:
        self.ready = anyio.Event()
        self.stopped = False
        self._fired = False
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()

    def is_set(self) -> bool:
        if not self._fired:
            self._fired = True
            if threading.get_ident() == self._loop_thread:
                self.ready.set()
            else:
                anyio.from_thread.run_sync(self.ready.set, token=self._token)
        return self.stopped

    def set(self) -> None:
        self.stopped = True


@dataclass(frozen=True)
class _Options:
    awatch: AWatch
    rust_debounce_ms: int


async def _pump(
    options: _Options,
    dirs: Sequence[Path],
    out: MemoryObjectSendStream[RawBatch | None],
    *,
    task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Forward one awatch generator's batches; report ready once its watches are in place.

    A natural end of the generator is passed on as None (the watcher then finishes).
    """
    probe = _ReadyProbe()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_forward, options, dirs, probe, out)
            tg.start_soon(_stop_when_cancelled, probe)
            await probe.ready.wait()
            task_status.started(scope)


async def _forward(
    options: _Options,
    dirs: Sequence[Path],
    probe: _ReadyProbe,
    out: MemoryObjectSendStream[RawBatch | None],
) -> None:
    batches = options.awatch(
        *(str(d) for d in dirs),
        watch_filter=None,  # we classify everything ourselves
        debounce=options.rust_debounce_ms,
        step=STEP_MS,
        stop_event=probe,
        rust_timeout=RUST_TIMEOUT_MS,
        recursive=False,
        force_polling=False,
    )
    try:
        async for batch in batches:
            probe.ready.set()  # a scripted generator never calls is_set()
            await out.send(batch)
        await out.send(None)
    except OSError as error:
        raise _watch_failed(len(dirs), error) from error
    finally:
        probe.ready.set()


def _watch_failed(count: int, error: OSError) -> PermanentError:
    return PermanentError(
        f"cannot watch {count} directories: {error}. If the inotify limits are reached, raise "
        "them (sysctl fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512) "
        "or exclude large directories in .dockerignore"
    )


async def _stop_when_cancelled(probe: _ReadyProbe) -> None:
    """Cancelling awatch waits for its worker thread, which only stops when told via the stop
    event: without this, every restart and shutdown would take up to RUST_TIMEOUT_MS."""
    try:
        await anyio.sleep_forever()
    finally:
        probe.set()


class _Timeout:
    """Marks "the deadline passed before anything arrived"."""


async def _receive(
    raw: MemoryObjectReceiveStream[RawBatch | None], deadline: float | None, clock: Clock
) -> RawBatch | _Timeout | None:
    if deadline is None:
        return await raw.receive()
    with anyio.move_on_after(max(0.0, deadline - clock())):
        return await raw.receive()
    return _Timeout()


Clock = Callable[[], float]


@dataclass
class _Watch:
    """The watcher's mutable state: the watch set, the watched directories, the live pump."""

    watchset: WatchSet
    options: _Options
    raw_send: MemoryObjectSendStream[RawBatch | None]
    dirs: set[Path] = field(default_factory=set)
    scope: anyio.CancelScope | None = None

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self.dirs = set(watch_roots(self.watchset))
        self.scope = await tg.start(_pump, self.options, sorted(self.dirs), self.raw_send)

    async def on_batch(self, tg: anyio.abc.TaskGroup, batch: RawBatch) -> Changes:
        paths = {path for _, path in batch}
        changes = self.watchset.classify(paths)
        if self.watchset.touches_ignore_rules(paths):
            self.watchset = self.watchset.reloaded()
        if any(self._may_change_dirs(path) for path in paths):
            changes.merge(await self._rewatch(tg))
        return changes

    def _may_change_dirs(self, path: str) -> bool:
        return (
            Path(path) in self.dirs
            or os.path.isdir(path)
            or self.watchset.touches_ignore_rules([path])
        )

    async def _rewatch(self, tg: anyio.abc.TaskGroup) -> Changes:
        """Restart the watch if the directories changed; report files in new directories."""
        old_dirs, old_scope = self.dirs, self.scope
        if set(watch_roots(self.watchset)) == old_dirs:
            return Changes()
        await self.start(tg)  # the new watch is live before the old one stops: no gap
        if old_scope is not None:
            old_scope.cancel()
        return self.watchset.classify(_files_in(self.dirs - old_dirs))


def _files_in(dirs: Iterable[Path]) -> list[str]:
    found = []
    for directory in dirs:
        try:
            found += [e.path for e in os.scandir(directory) if not e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
    return found


async def watcher(
    watchset: WatchSet,
    send: MemoryObjectSendStream[Changes],
    *,
    quiet: float = DEFAULT_QUIET_S,
    max_wait: float = DEFAULT_MAX_WAIT_S,
    leading: bool = False,
    clock: Clock = anyio.current_time,
    awatch: AWatch | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Send one `Changes` per quiet period (or cap) until the watch ends; then close `send`.

    `task_status.started()` is called once the OS watches are in place, so a file written after
    `await tg.start(watcher, ...)` returns is seen.
    """
    if awatch is None:
        from watchfiles import awatch as real_awatch  # imported late: 0.13 s at start-up

        awatch = real_awatch
    options = _Options(awatch, rust_debounce_ms=max(STEP_MS, round(quiet * 1000)))
    raw_send, raw_receive = anyio.create_memory_object_stream[RawBatch | None](0)
    debouncer = Debouncer(quiet, max_wait, leading)
    async with send, raw_send, raw_receive, anyio.create_task_group() as tg:
        state = _Watch(watchset, options, raw_send)
        await state.start(tg)
        task_status.started()
        await _loop(state, tg, raw_receive, debouncer, send, clock)
        tg.cancel_scope.cancel()


async def _loop(
    state: _Watch,
    tg: anyio.abc.TaskGroup,
    raw: MemoryObjectReceiveStream[RawBatch | None],
    debouncer: Debouncer,
    send: MemoryObjectSendStream[Changes],
    clock: Clock,
) -> None:
    while True:
        if debouncer.due(clock()):
            await send.send(debouncer.take())
        batch = await _receive(raw, debouncer.deadline(), clock)
        if batch is None:
            break
        if not isinstance(batch, _Timeout):
            debouncer.add(await state.on_batch(tg, batch), clock())
    if debouncer.deadline() is not None:
        await send.send(debouncer.take())
