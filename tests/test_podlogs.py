"""Following pod logs: no line twice, none lost, across broken streams, restarts and new pods.

The pure cursor and timestamp functions are tested directly. The follower runs against a
scripted log endpoint (the seam: `OpenLog`) that behaves like the kubelet's: the current
container instance's lines, `sinceTime` cut at whole seconds, a stream that stays open while
the instance runs. The board gets its pod events from the test instead of a watch. The
real-node tests (test_real_node_streams.py) run the same code against a kubelet.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import pytest

from devloop import blocking
from devloop.targets.kubernetes import podlogs
from devloop.targets.kubernetes.podlogs import (
    Cursor,
    PodLogs,
    finished,
    parse_timestamp,
    since_time,
    started_containers,
)
from devloop.targets.kubernetes.pods import AppWorkload, PodBoard

pytestmark = pytest.mark.anyio
SECOND = 1_000_000_000
BASE = parse_timestamp("2026-12-01T10:00:00Z") or 0


def stamp(ns: int) -> str:
    whole = since_time(ns).rstrip("Z")
    return f"{whole}.{ns % SECOND:09d}".rstrip("0").rstrip(".") + "Z"


def test_timestamps_with_trimmed_fractions_order_by_their_value() -> None:
    a = parse_timestamp("2026-12-01T10:00:00.1234Z")
    b = parse_timestamp("2026-12-01T10:00:00.12345Z")
    assert a is not None and b is not None and a < b
    assert parse_timestamp("not a time") is None
    assert since_time(BASE + SECOND // 2) == "2026-12-01T10:00:00Z"


def test_a_reopened_stream_skips_the_lines_already_shown_at_the_boundary_second() -> None:
    cursor = Cursor()
    assert cursor.reopened() is None
    assert [cursor.admit(t) for t in (BASE + 1, BASE + 2, BASE + 2)] == [True, True, True]
    assert cursor.reopened() == since_time(BASE)
    # The server repeats the whole second: both lines at BASE+2 were shown, a third is new.
    assert [cursor.admit(t) for t in (BASE + 1, BASE + 2, BASE + 2, BASE + 2, BASE + 3)] == [
        False,
        False,
        False,
        True,
        True,
    ]


@dataclass
class Instance:
    lines: list[tuple[int, str]] = field(default_factory=list)
    ended: bool = False


class Kubelet:
    """A scripted log endpoint: per pod (of one container), instances that write lines and end."""

    def __init__(self) -> None:
        self.instances: dict[str, list[Instance]] = {}
        self.cond = threading.Condition()
        self.opened = 0
        self.cut_after: int | None = None  # the next stream breaks after this many lines
        self.clock = BASE

    def write(self, pod: str, text: str, new_second: bool = False) -> None:
        with self.cond:
            self.clock += SECOND if new_second else 1000
            self.instances.setdefault(pod, [Instance()])[-1].lines.append((self.clock, text))
            self.cond.notify_all()

    def restart(self, pod: str) -> None:
        with self.cond:
            self.instances[pod][-1].ended = True
            self.instances[pod].append(Instance())
            self.cond.notify_all()

    def open(self, _ns: str, pod: str, _container: str, since: str | None) -> Iterator[bytes]:
        with self.cond:
            self.opened += 1
            instance = self.instances[pod][-1]
            cut, self.cut_after = self.cut_after, None
        floor = parse_timestamp(since) if since else 0
        sent = 0
        while True:
            with self.cond:
                ready = [(t, s) for t, s in instance.lines if t >= (floor or 0)][sent:]
                if not ready and instance.ended:
                    return
                if not ready:
                    self.cond.wait(0.05)
            blocking.check()
            for t, text in ready:
                if cut is not None and sent >= cut:
                    return  # the connection broke
                sent += 1
                yield f"{stamp(t)} {text}\n".encode()


def running_pod(uid: str, container_id: str, restarts: int = 0) -> dict[str, Any]:
    status = {"name": "app", "containerID": container_id, "restartCount": restarts}
    status["state"] = {"running": {}}
    return {
        "metadata": {"uid": uid, "name": f"web-{uid}", "namespace": "dev", "labels": {"a": "b"}},
        "spec": {"restartPolicy": "Always"},
        "status": {"phase": "Running", "containerStatuses": [status]},
    }


class Seen:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.cond = threading.Condition()

    def __call__(self, prefix: str, text: str) -> None:
        with self.cond:
            self.lines.append((prefix, text))
            self.cond.notify_all()

    async def until(self, count: int) -> list[str]:
        def wait() -> bool:
            with self.cond:
                return self.cond.wait_for(lambda: len(self.lines) >= count, timeout=10)

        assert await anyio.to_thread.run_sync(wait), self.lines
        return [text for _, text in self.lines]


WEB = AppWorkload("Deployment", "dev", "web", {"matchLabels": {"a": "b"}})
OWNER = ("Deployment", "web")


async def test_lines_resume_after_a_broken_stream_and_a_restart_without_repeats_or_gaps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(podlogs, "RETRY_S", 0.01)
    kubelet, seen = Kubelet(), Seen()
    for n in range(1, 4):
        kubelet.write("web-1", f"line {n}")
    kubelet.cut_after = 2  # the first stream breaks after two lines
    async with anyio.create_task_group() as group:
        board = PodBoard(None, group)  # type: ignore[arg-type]  # no watch: the test is it
        board.workloads = [WEB]
        board.record("ADDED", running_pod("1", "c1"), OWNER)
        await group.start(PodLogs(board, kubelet.open, seen).run)
        assert await seen.until(3) == ["line 1", "line 2", "line 3"]
        kubelet.write("web-1", "line 4", new_second=True)
        assert (await seen.until(4))[-1] == "line 4"
        kubelet.write("web-1", "line 5")
        kubelet.restart("web-1")  # killed in place: a new instance, same pod
        board.record("MODIFIED", running_pod("1", "c2", restarts=1), OWNER)
        kubelet.write("web-1", "line 6")
        assert (await seen.until(6))[-2:] == ["line 5", "line 6"]
        group.cancel_scope.cancel()
    assert [text for _, text in seen.lines] == [f"line {n}" for n in range(1, 7)]
    assert {prefix for prefix, _ in seen.lines} == {"web/app"}


async def test_a_new_pods_lines_appear_and_a_deleted_pods_follower_ends() -> None:
    kubelet, seen = Kubelet(), Seen()
    kubelet.write("web-1", "old pod")
    async with anyio.create_task_group() as group:
        board = PodBoard(None, group)  # type: ignore[arg-type]
        board.workloads = [WEB]
        old = running_pod("1", "c1")
        board.record("ADDED", old, OWNER)
        await group.start(PodLogs(board, kubelet.open, seen).run)
        assert await seen.until(1) == ["old pod"]
        kubelet.restart("web-1")  # the old pod's stream ends with its container
        kubelet.write("web-2", "new pod")
        board.record("ADDED", running_pod("2", "c9"), OWNER)
        board.record("DELETED", old, OWNER)
        assert (await seen.until(2))[-1] == "new pod"
        group.cancel_scope.cancel()
    assert [text for _, text in seen.lines] == ["old pod", "new pod"]


def test_init_containers_are_followed_and_done_once_they_succeed() -> None:
    init = {"name": "migrate", "containerID": "c0", "state": {"terminated": {"exitCode": 0}}}
    waiting = {"name": "app", "state": {"waiting": {"reason": "PodInitializing"}}}
    pod = {"spec": {}, "status": {"phase": "Pending", "initContainerStatuses": [init],
                                  "containerStatuses": [waiting]}}  # fmt: skip
    assert started_containers(pod) == [("migrate", True)]
    assert finished(pod, init, init=True)
    crashed = {**init, "state": {"terminated": {"exitCode": 1}}}
    assert not finished(pod, crashed, init=True)  # the kubelet runs it again
    assert not finished(pod, crashed, init=False)  # restartPolicy Always
