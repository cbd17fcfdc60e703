"""The Kubernetes target: server-side apply, then wait for what changed to roll out.

One `Cluster` (a blocking REST client) per run, made on first use in a worker thread, and one
limiter for every call to it. Each call runs through `blocking.call`, so the apply deadline is
real and a newer change or Ctrl-C stops a rollout wait at its next poll.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio

from devloop import blocking
from devloop.events import Events, Stopwatch
from devloop.targets.base import ManifestObject, Placement
from devloop.targets.kubernetes import applying, rollout

T = TypeVar("T")
APPLY_DEADLINE_S = 120.0  # one apply (every object, prune, inventory) must finish within this
CLUSTER_CALLS = 4  # concurrent blocking calls to the API server


class KubernetesTarget:
    name = "kubernetes"

    def __init__(self, kubeconfig: str | None, context: str | None, events: Events) -> None:
        self._kubeconfig, self._context, self._events = kubeconfig, context, events
        self._cluster: applying.Cluster | None = None
        self._inventory: applying.Inventory | None = None  # of the last successful apply
        self._limiter = anyio.CapacityLimiter(CLUSTER_CALLS)

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

    async def deploy(self, objects: Sequence[ManifestObject], placement: Placement) -> None:
        watch = Stopwatch()
        cluster = await self.cluster()
        previous = self._inventory

        def apply() -> applying.ApplyResult:
            return applying.apply_objects(
                cluster, objects, placement.app, placement.namespace, previous
            )

        result = await self._call(apply, deadline_s=APPLY_DEADLINE_S, what="applying")
        self._inventory = result.inventory
        self._events.emit("apply.finished", seconds=watch.seconds, **result.counts())
        await self._wait(cluster, result.changed_workloads(), placement.rollout_timeout_s)

    async def _wait(
        self, cluster: applying.Cluster, workloads: list[rollout.Workload], timeout_s: float
    ) -> None:
        if not workloads:
            return
        watch = Stopwatch()
        await self._call(rollout.wait_for_rollouts, cluster, workloads, timeout_s)
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
