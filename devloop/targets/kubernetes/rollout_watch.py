"""Waking the rollout wait when the cluster changes, instead of every 0.25 s.

`rollout.wait_for_rollouts` decides from fresh reads; between two decisions it used to sleep.
Here its pause is a wait on watches of the workloads' namespaces (their workload kinds,
ReplicaSets and Pods): it returns at the first event, so a rollout is seen done as soon as the
API server says so (kubectl's rollout status answers in 0.08-0.15 s). A watch opened without a
resourceVersion starts with the current objects, so a change that happened before it opened
still wakes the wait once; `FALLBACK_S` bounds the pause should a watch break quietly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from devloop import blocking
from devloop.errors import DevloopError
from devloop.targets.kubernetes import streaming
from devloop.targets.kubernetes.applying import Cluster
from devloop.targets.kubernetes.rollout import Workload

FALLBACK_S = 2.0  # the longest pause without an event, seconds
WATCH_TIMEOUT_S = 120  # the server ends each watch after this


class Changes:
    """Watch threads that set one event; `wait` pauses until it is set (or the fallback)."""

    def __init__(self, cluster: Cluster, paths: Iterable[str]) -> None:
        self._cluster = cluster
        self._changed = threading.Event()
        self._closing = threading.Event()
        self._streams: list[streaming.Lines] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._watch, args=(p,), daemon=True) for p in paths
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait(self, seconds: float) -> None:
        """The pause of `wait_for_rollouts`: until a watched object changes, at most `seconds`
        (raised to FALLBACK_S: the watch makes the short poll unnecessary)."""
        blocking.check()
        stop = blocking.current_stop()
        unregister = stop.on_set(self._changed.set) if stop is not None else (lambda: None)
        try:
            self._changed.wait(max(seconds, FALLBACK_S))
        finally:
            unregister()
        self._changed.clear()

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            streams = list(self._streams)
        for lines in streams:
            lines.close()
        for thread in self._threads:
            thread.join(5)

    def _watch(self, path: str) -> None:
        query = [("watch", "1"), ("timeoutSeconds", str(WATCH_TIMEOUT_S))]
        while not self._closing.is_set():
            try:
                lines = streaming.open_lines(self._cluster, path, query)
            except DevloopError:
                self._closing.wait(FALLBACK_S)  # the polls go on meanwhile
                continue
            with self._lock:
                self._streams.append(lines)
            if self._closing.is_set():
                lines.close()
            for line in lines:
                if line.strip():
                    self._changed.set()
            with self._lock:
                self._streams.remove(lines)


def watched_paths(cluster: Cluster, workloads: Sequence[Workload]) -> list[str]:
    """The collections whose changes can end a wait: each workload's kind, ReplicaSets, Pods."""
    paths = set()
    for w in workloads:
        paths.add(cluster.path(w.api_version, w.kind, w.namespace))
        paths.add(cluster.path("v1", "Pod", w.namespace))
        if w.kind == "Deployment":
            paths.add(cluster.path("apps/v1", "ReplicaSet", w.namespace))
    return sorted(paths)


@contextmanager
def changes(cluster: Cluster, workloads: Sequence[Workload]) -> Iterator[Changes]:
    """Watches for the wait on `workloads`, closed (their threads joined) on exit."""
    watching = Changes(cluster, watched_paths(cluster, workloads))
    watching.start()
    try:
        yield watching
    finally:
        watching.close()
