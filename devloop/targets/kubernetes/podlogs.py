"""The app's output on a cluster: every container of every pod the app's workloads own, followed.

The lines come out as on the Docker target, `<workload>/<container> | <line>`, whole, one
follower per container (init containers too). The users' complaint with other tools is output
that vanishes or repeats across restarts and rollouts, so a follower resumes by timestamp: the
log is asked for with `timestamps=true`, every line's timestamp is remembered, and a stream
opened again (a broken connection, a restarted container) starts at `sinceTime` and skips what
was already shown. `sinceTime` has whole-second precision, so the lines at the boundary are
told apart by their nanosecond timestamps, counted when equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc

from devloop import blocking
from devloop.errors import DevloopError
from devloop.targets.kubernetes import streaming
from devloop.targets.kubernetes.applying import Cluster
from devloop.targets.kubernetes.pods import AppWorkload, PodBoard

Obj = Mapping[str, Any]
OnLine = Callable[[str, str], None]  # (prefix, line), called from a worker thread
# (namespace, pod, container, sinceTime or None) -> the log's lines, followed; blocking
OpenLog = Callable[[str, str, str, str | None], Iterable[bytes]]
RETRY_S = 1.0  # before a broken stream of a running container is opened again
FOLLOWERS_MAX = 16  # log streams open at once (each holds a worker thread)


def parse_timestamp(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 timestamp with up to 9 fraction digits."""
    try:
        whole, _, rest = text.rstrip("Z").partition(".")
        seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
        fraction = (rest + "000000000")[:9] if rest else "0"
        return int(seconds) * 1_000_000_000 + int(fraction)
    except ValueError:
        return None


def since_time(nanoseconds: int) -> str:
    """The `sinceTime` of a resume: the whole second the last line shown was written in."""
    moment = datetime.fromtimestamp(nanoseconds // 1_000_000_000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Cursor:
    """What a follower has shown: the newest timestamp, and how many lines carried it."""

    last: int = -1
    at_last: int = 0
    _skip: int = field(default=0, repr=False)

    def reopened(self) -> str | None:
        """A new stream starts: the `sinceTime` to ask for (None: from the start)."""
        self._skip = self.at_last
        return since_time(self.last) if self.last >= 0 else None

    def admit(self, stamp: int) -> bool:
        """Whether a line with this timestamp is new (and count it if so)."""
        if stamp < self.last:
            return False
        if stamp == self.last:
            if self._skip > 0:
                self._skip -= 1
                return False
            self.at_last += 1
            return True
        self.last, self.at_last, self._skip = stamp, 1, 0
        return True


def split_line(raw: bytes) -> tuple[int | None, str]:
    """A `timestamps=true` log line: its timestamp and its text."""
    text = raw.decode(errors="replace").rstrip("\r\n")
    stamp, _, rest = text.partition(" ")
    parsed = parse_timestamp(stamp)
    return (parsed, rest) if parsed is not None else (None, text)


def open_log(cluster: Cluster) -> OpenLog:
    """The cluster's pod log endpoint, followed, with timestamps."""

    def opened(namespace: str, pod: str, container: str, since: str | None) -> Iterable[bytes]:
        query = [("container", container), ("follow", "true"), ("timestamps", "true")]
        if since is not None:
            query.append(("sinceTime", since))
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        return streaming.open_lines(cluster, path, query)

    return opened


def show(lines: Iterable[bytes], cursor: Cursor, prefix: str, on_line: OnLine) -> None:
    """Pass the new lines of one stream to `on_line` (runs in a worker thread)."""
    for raw in lines:
        stamp, text = split_line(raw)
        if stamp is None or cursor.admit(stamp):
            on_line(prefix, text)
        blocking.check()


def container_status(pod: Obj, name: str) -> Obj | None:
    status = pod.get("status") or {}
    for item in (*status.get("initContainerStatuses", ()), *status.get("containerStatuses", ())):
        if item.get("name") == name:
            return dict(item)
    return None


def started(status: Obj) -> bool:
    state = status.get("state") or {}
    return bool(status.get("containerID")) and ("running" in state or "terminated" in state)


def finished(pod: Obj, status: Obj, init: bool) -> bool:
    """Whether this container will not run again (its last output is all there is)."""
    terminated = (status.get("state") or {}).get("terminated")
    if terminated is None:
        return False
    phase = (pod.get("status") or {}).get("phase")
    policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
    succeeded = terminated.get("exitCode") == 0
    return (
        phase in ("Succeeded", "Failed")
        or (init and succeeded)
        or policy == "Never"
        or (policy == "OnFailure" and succeeded)
    )


def started_containers(pod: Obj) -> list[tuple[str, bool]]:
    """(name, is_init) of the pod's containers that have run or are running."""
    status = pod.get("status") or {}
    return [
        (item["name"], init)
        for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses"))
        for item in status.get(key, ())
        if started(item)
    ]


class PodLogs:
    """Starts one follower per started container of the board's pods, for as long as it runs."""

    def __init__(self, board: PodBoard, open_log: OpenLog, on_line: OnLine) -> None:
        self._board, self._open, self._on_line = board, open_log, on_line
        self._followed: set[tuple[str, str]] = set()  # (pod uid, container)
        self._limiter = anyio.CapacityLimiter(FOLLOWERS_MAX)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        version = 0
        async with anyio.create_task_group() as followers:
            task_status.started()
            while True:
                for workload in self._board.workloads:
                    for pod in self._board.pods_of(workload):
                        self._start(followers, workload, pod)
                version = await self._board.changed(version)

    def _start(self, group: anyio.abc.TaskGroup, workload: AppWorkload, pod: Obj) -> None:
        uid = str(pod["metadata"].get("uid", ""))
        for name, init in started_containers(pod):
            if (uid, name) not in self._followed:
                self._followed.add((uid, name))
                group.start_soon(self._follower, workload, uid, name, init)

    async def _follower(self, workload: AppWorkload, uid: str, name: str, init: bool) -> None:
        """Follow one container across its restarts; ends when its pod is gone or it is done.

        A stream is opened for each new instance (containerID) and again while the status says
        the instance still runs (the stream broke); the cursor drops what was shown before."""
        cursor, prefix, shown = Cursor(), f"{workload.name}/{name}", ""
        while True:
            version = self._board.version
            pod = self._board.pod(uid)
            if pod is None:
                return
            status = container_status(pod, name) or {}
            instance = str(status.get("containerID", ""))
            running = "running" in (status.get("state") or {})
            if started(status) and (instance != shown or running):
                if instance == shown:
                    await anyio.sleep(RETRY_S)  # the same instance again: its stream broke
                shown = instance
                await self._stream(pod, name, cursor, prefix)
                continue
            if finished(pod, status, init):
                return
            await self._board.changed(version)

    async def _stream(self, pod: Obj, name: str, cursor: Cursor, prefix: str) -> None:
        """One log stream, shown until it ends (or cannot be opened: the caller tries again)."""
        meta = pod["metadata"]
        since = cursor.reopened()

        def follow() -> None:
            lines = self._open(meta["namespace"], meta["name"], name, since)
            show(lines, cursor, prefix, self._on_line)

        try:
            await blocking.call(follow, limiter=self._limiter, what=f"the log of {prefix}")
        except DevloopError:
            pass  # e.g. the container is not started yet: its next status change retries
