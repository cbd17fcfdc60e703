"""Blocking SDK calls from async code: a limiter, a real deadline, and cancellation that stops.

anyio cannot abandon a worker thread that is not cancellable, so a `fail_after` around
`to_thread.run_sync` never fires while the thread runs. Here the deadline and the cancellation
are enforced *inside* the thread instead: `call` hands the thread a `Stop`, and the blocking code
calls `check()` between its steps (each HTTP request, each poll), which raises once the calling
task was cancelled or the deadline passed. The thread is always waited for, never abandoned, so
what it was doing is finished or undone when `call` returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from devloop.errors import DevloopError, TemporaryError

T = TypeVar("T")
_local = threading.local()


class DeadlineExceeded(TemporaryError):
    """A blocking step ran past its deadline; the caller retries it."""


class _Cancelled(Exception):
    """Raised in the worker thread when its task was cancelled; never seen by callers."""


class Stop(threading.Event):
    """Set when the task that started the thread is cancelled; also knows the deadline."""

    def __init__(self, deadline_s: float | None = None, what: str = "the call") -> None:
        super().__init__()
        self.what = what
        self.deadline_s = deadline_s
        self._ends = None if deadline_s is None else time.monotonic() + deadline_s
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        for callback in list(self._callbacks):
            callback()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Also run `callback` when the call is stopped (from the stopping thread): how a
        blocked read (a followed log, a watch) is woken; returns the function that unregisters."""
        self._callbacks.append(callback)
        if self.is_set():
            callback()
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def check(self) -> None:
        if self.is_set():
            raise _Cancelled
        if self._ends is not None and time.monotonic() > self._ends:
            raise DeadlineExceeded(f"{self.what} did not finish within {self.deadline_s:g} s")


def check() -> None:
    """Between two steps of blocking code: stop if the calling task is gone or out of time.

    Outside a thread started by `call` this does nothing.
    """
    stop: Stop | None = getattr(_local, "stop", None)
    if stop is not None:
        stop.check()


def current_stop() -> Stop | None:
    """The Stop of the thread `call` runs, for code that polls an Event instead of `check()`."""
    return getattr(_local, "stop", None)


async def call(
    fn: Callable[..., T],
    *args: object,
    limiter: anyio.CapacityLimiter | None = None,
    deadline_s: float | None = None,
    what: str = "the call",
    stop: Stop | None = None,
) -> T:
    """Run `fn(*args)` in a worker thread; cancelling the caller stops it at its next `check()`.

    Pass `stop` to also hand it to `fn` (a build polls it) or to set it from elsewhere.
    """
    stop = stop or Stop(deadline_s, what)
    finished = threading.Event()

    def run() -> T:
        _local.stop = stop
        try:
            return fn(*args)
        finally:
            _local.stop = None
            finished.set()

    async def stop_on_cancel() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            if not finished.is_set():
                stop.set()

    result: T
    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_cancel)
        try:
            result = await anyio.to_thread.run_sync(run, limiter=limiter)
        except (DevloopError, _Cancelled) as exc:  # re-raised outside the group, unwrapped
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if isinstance(error, _Cancelled):
        await anyio.lowlevel.checkpoint()  # the caller's scope is cancelled: this raises
        raise DevloopError("internal error: a call stopped without being cancelled")
    if error is not None:
        raise error
    return result
