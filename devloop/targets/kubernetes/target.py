"""The Kubernetes target: deliver the built images, server-side apply, wait for what changed to
roll out, show the app.

One `Cluster` (a blocking REST client) per run, made on first use in a worker thread, and one
limiter for every call to it. Each call runs through `blocking.call`, so the apply deadline is
real and a newer change or Ctrl-C stops a rollout wait at its next poll. How the images reach the
cluster is decided at the first deploy that has built images (`delivering.Delivery`), said once,
and kept for the run.

While the target is open (`open_streams`, in a task group `open_target` owns), it also follows
the output of the app's pods (podlogs) and forwards its ports to 127.0.0.1 (forwarding), both
told after each apply which workloads the app has now.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TypeVar

import anyio
import anyio.abc

from devloop import blocking
from devloop.events import Events, Stopwatch
from devloop.kbld.model import Resolved
from devloop.targets.base import ManifestObject, Placement
from devloop.targets.kubernetes import applying, forwarding, rollout, rollout_watch, streaming
from devloop.targets.kubernetes.delivering import Delivery
from devloop.targets.kubernetes.podlogs import PodLogs, open_log
from devloop.targets.kubernetes.pods import AppWorkload, PodBoard, app_workloads

T = TypeVar("T")
APPLY_DEADLINE_S = 120.0  # one apply (every object, prune, inventory) must finish within this
CLUSTER_CALLS = 4  # concurrent blocking calls to the API server


class KubernetesTarget:
    name = "kubernetes"

    def __init__(
        self,
        kubeconfig: str | None,
        context: str | None,
        events: Events,
        delivery: str = "auto",
        default_repo: str | None = None,
    ) -> None:
        self._kubeconfig, self._context, self._events = kubeconfig, context, events
        self._cluster: applying.Cluster | None = None
        self._inventory: applying.Inventory | None = None  # of the last successful apply
        self._limiter = anyio.CapacityLimiter(CLUSTER_CALLS)
        self._delivery = Delivery(events, self._limiter, delivery, default_repo)
        self._group: anyio.abc.TaskGroup | None = None
        self._board: PodBoard | None = None
        self._forward = False
        self._forwards: dict[int, tuple[forwarding.Forwarder, anyio.CancelScope]] = {}

    async def open_streams(
        self, group: anyio.abc.TaskGroup, *, logs: bool = True, forward: bool = True
    ) -> None:
        """Follow the app's pod logs and forward its ports, in `group`, from the next deploy."""
        if not (logs or forward):
            return
        cluster = await self.cluster()
        self._group, self._forward = group, forward
        self._board = PodBoard(cluster, group)
        if logs:
            await group.start(PodLogs(self._board, open_log(cluster), self._events.line).run)

    def describe(self) -> str:
        server = self._cluster.server if self._cluster else "the kubeconfig's cluster"
        return f"Kubernetes at {server}"

    async def cluster(self) -> applying.Cluster:
        if self._cluster is None:
            self._cluster = await blocking.call(
                applying.Cluster, self._kubeconfig, self._context, limiter=self._limiter
            )
        return self._cluster

    async def ping(self) -> None:
        cluster = await self.cluster()
        await self._call(cluster.ping)

    async def deliver(self, built: Mapping[str, Resolved]) -> Mapping[str, Resolved]:
        return await self._delivery.deliver(await self.cluster(), built)

    async def deploy(self, objects: Sequence[ManifestObject], placement: Placement) -> None:
        watch = Stopwatch()
        cluster = await self.cluster()
        objects = self._delivery.with_pull_policy(objects)
        previous = self._inventory

        def apply() -> applying.ApplyResult:
            return applying.apply_objects(
                cluster, objects, placement.app, placement.namespace, previous
            )

        result = await self._call(apply, deadline_s=APPLY_DEADLINE_S, what="applying")
        self._inventory = result.inventory
        self._events.emit("apply.finished", seconds=watch.seconds, **result.counts())
        workloads = app_workloads(
            [o.data for o in objects], placement.namespace or cluster.namespace
        )
        if self._board is not None:
            self._board.show(workloads)  # a new pod's lines appear while the rollout runs
        await self._wait(cluster, result.changed_workloads(), placement.rollout_timeout_s)
        await self._forward_ports(cluster, workloads)

    def close(self) -> None:
        """Close what delivering kept open (engine and registry connections)."""
        self._delivery.close()

    async def _forward_ports(self, cluster: applying.Cluster, workloads: list[AppWorkload]) -> None:
        """One listener per forwarded local port, kept across deploys (a changed workload or
        pod port is retargeted on the same listener); a port no longer wanted is closed."""
        if self._board is None or self._group is None or not self._forward:
            return
        wanted = {p.local: (w, p) for w in workloads for p in w.ports}
        for local, (forwarder, scope) in list(self._forwards.items()):
            if local in wanted:
                forwarder.retarget(*wanted[local])
            else:
                scope.cancel()
                del self._forwards[local]
        for local, (workload, port) in wanted.items():
            if local in self._forwards:
                continue
            listener = await forwarding.listen(workload, port)
            opener = partial(streaming.open_tunnel, cluster)
            forwarder = forwarding.Forwarder(self._board, workload, port, opener, self._events.emit)
            scope = anyio.CancelScope()
            self._forwards[local] = (forwarder, scope)
            self._group.start_soon(_serve, forwarder, listener, scope)

    async def _wait(
        self, cluster: applying.Cluster, workloads: list[rollout.Workload], timeout_s: float
    ) -> None:
        if not workloads:
            return
        watch = Stopwatch()

        def wait() -> None:
            with rollout_watch.changes(cluster, workloads) as changes:
                rollout.wait_for_rollouts(cluster, workloads, timeout_s, sleep=changes.wait)

        await self._call(wait)
        self._events.emit(
            "rollout.finished", seconds=watch.seconds, workloads=[w.name for w in workloads]
        )

    async def delete_app(self, placement: Placement) -> list[str]:
        cluster = await self.cluster()
        return await self._call(applying.delete_app, cluster, placement.app, placement.namespace)

    async def _call(
        self,
        fn: Callable[..., T],
        *args: object,
        deadline_s: float | None = None,
        what: str = "the call",
    ) -> T:
        return await blocking.call(
            fn, *args, limiter=self._limiter, deadline_s=deadline_s, what=what
        )


async def _serve(
    forwarder: forwarding.Forwarder,
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    scope: anyio.CancelScope,
) -> None:
    with scope:
        await forwarder.serve(listener)
