"""blocking.call: the deadline and the cancellation reach the worker thread and end it there."""

from __future__ import annotations

import threading

import anyio
import pytest

from devloop import blocking

pytestmark = pytest.mark.anyio


def steps(forever: threading.Event, done: list[str]) -> str:
    """Blocking work of many short steps, each checking between them, as Cluster.request does."""
    while not forever.wait(0.01):
        blocking.check()
    done.append("returned")
    return "finished"


async def test_a_deadline_ends_a_call_that_would_never_return() -> None:
    never, done = threading.Event(), []
    with pytest.raises(blocking.DeadlineExceeded, match=r"applying did not finish within 0\.2 s"):
        await blocking.call(steps, never, done, deadline_s=0.2, what="applying")
    assert done == [] and not never.is_set()


async def test_cancelling_the_caller_stops_the_thread_before_call_returns() -> None:
    never, done = threading.Event(), []
    started = threading.Event()

    def work() -> str:
        started.set()
        return steps(never, done)

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocking.call, work)
            await anyio.to_thread.run_sync(started.wait)
            scope.cancel()
    assert scope.cancelled_caught and done == []
    assert blocking.current_stop() is None  # nothing leaks into the event loop's thread


async def test_a_call_returns_its_value_and_check_is_harmless_outside() -> None:
    go = threading.Event()
    go.set()
    assert await blocking.call(steps, go, []) == "finished"
    blocking.check()  # not in a worker thread of `call`: nothing to stop
