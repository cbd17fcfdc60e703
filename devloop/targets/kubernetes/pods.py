"""The app's pods as the API server sees them, kept current by one watch per namespace.

The log followers and the port-forwarders both need to know, at every moment, which pods belong
to which applied workload: chosen by ownership (a pod's controller, through its ReplicaSet to the
Deployment) and by the workload's selector, never by image name, so a rollout's new pod is
found as soon as it exists and an old one is dropped when it is gone. The pure functions below
decide; `PodBoard` holds the pods a list + watch reported and says when they change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread

from devloop import blocking
from devloop.errors import DevloopError
from devloop.targets.kubernetes import streaming
from devloop.targets.kubernetes.applying import Cluster

Obj = Mapping[str, Any]
POD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"})
WATCH_TIMEOUT_S = 300  # the server ends a watch after this; it is resumed from its resourceVersion
RETRY_S = (0.5, 1.0, 2.0, 5.0)  # between attempts while the API server is away


@dataclass(frozen=True)
class ForwardPort:
    """127.0.0.1:`local` on this machine reaches `remote` in the workload's pod."""

    local: int
    remote: int


@dataclass(frozen=True)
class AppWorkload:
    """An applied object that makes pods: what owns them and which ports the app exposes."""

    kind: str
    namespace: str
    name: str
    selector: Mapping[str, Any]  # a LabelSelector; {} for a bare Pod
    ports: tuple[ForwardPort, ...] = ()


def app_workloads(objects: Sequence[Obj], namespace: str) -> list[AppWorkload]:
    """The workloads among the rendered objects, with the ports the Docker target would publish
    (a Service's `port`, else the containerPort), so one URL works on both targets."""
    services = [o for o in objects if o.get("kind") == "Service"]
    found = []
    for obj in objects:
        kind = str(obj.get("kind", ""))
        if kind not in POD_KINDS:
            continue
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or namespace
        spec = obj.get("spec") or {}
        template = obj if kind == "Pod" else spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        pod_spec = template.get("spec") or {}
        selector = {} if kind == "Pod" else spec.get("selector") or {"matchLabels": labels}
        ours = [s for s in services if _selects(s, labels, ns, namespace)]
        ports = _ports(pod_spec.get("containers") or [], ours)
        found.append(AppWorkload(kind, ns, str(meta.get("name", "")), selector, ports))
    return found


def _selects(service: Obj, labels: Mapping[str, Any], ns: str, default_ns: str) -> bool:
    if ((service.get("metadata") or {}).get("namespace") or default_ns) != ns:
        return False
    selector = (service.get("spec") or {}).get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _ports(containers: Sequence[Obj], services: Sequence[Obj]) -> tuple[ForwardPort, ...]:
    declared = [p for c in containers for p in c.get("ports") or [] if _tcp(p)]
    ports: list[ForwardPort] = []
    for service in services:
        for port in (service.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            remote = next(
                (int(d["containerPort"]) for d in declared
                 if target in (d.get("name"), d.get("containerPort"))),
                target if isinstance(target, int) else None,
            )  # fmt: skip
            if remote is not None and _tcp(port):
                ports.append(ForwardPort(int(port["port"]), remote))
    reached = {p.remote for p in ports}
    for d in declared:
        if int(d["containerPort"]) not in reached:
            number = int(d["containerPort"])
            ports.append(ForwardPort(int(d.get("hostPort") or number), number))
    return tuple(dict.fromkeys(ports))


def _tcp(port: Obj) -> bool:
    return bool(port.get("protocol", "TCP") == "TCP")


def matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """Whether a LabelSelector selects `labels` (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or ()
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(str(op), False):
            return False
    return True


def controller(obj: Obj) -> tuple[str, str] | None:
    """(kind, name) of the object's controlling owner, if it has one."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return str(ref.get("kind")), str(ref.get("name"))
    return None


def owns(workload: AppWorkload, pod: Obj, owner: tuple[str, str] | None) -> bool:
    """Whether `pod`, whose top controller is `owner`, belongs to `workload`."""
    meta = pod.get("metadata") or {}
    if meta.get("namespace") != workload.namespace:
        return False
    if workload.kind == "Pod":
        return bool(meta.get("name") == workload.name)
    labels = meta.get("labels") or {}
    return owner == (workload.kind, workload.name) and matches(workload.selector, labels)


def serving(pods: Iterable[Obj]) -> Obj | None:
    """The pod a new connection goes to: running and not terminating; a ready one first, then
    the newest (during a rollout the new pod answers once it is ready, the old one until then)."""
    alive = [
        p
        for p in pods
        if (p.get("status") or {}).get("phase") == "Running"
        and not (p.get("metadata") or {}).get("deletionTimestamp")
    ]
    if not alive:
        return None
    return max(
        alive, key=lambda p: (_ready(p), (p.get("metadata") or {}).get("creationTimestamp", ""))
    )


def _ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# -- the board -----------------------------------------------------------------------------------


class PodBoard:
    """The pods of the app's namespaces, their owners, and a version that grows on each change.

    One watcher task per namespace (started on first use in the target's task group) lists the
    namespace's pods, then watches from that resourceVersion; a ReplicaSet's owner is read once.
    """

    def __init__(self, cluster: Cluster, group: anyio.abc.TaskGroup) -> None:
        self._cluster, self._group = cluster, group
        self.workloads: list[AppWorkload] = []
        self._pods: dict[str, tuple[Obj, tuple[str, str] | None]] = {}  # uid -> (pod, owner)
        self._watched: set[str] = set()
        self._owners: dict[tuple[str, str], tuple[str, str] | None] = {}  # ReplicaSet -> owner
        self.version = 0
        self._changed = anyio.Event()

    def show(self, workloads: Sequence[AppWorkload]) -> None:
        """Track these workloads from now on (after each apply)."""
        self.workloads = list(workloads)
        for namespace in {w.namespace for w in workloads} - self._watched:
            self._watched.add(namespace)
            self._group.start_soon(self._watcher, namespace)
        self._bump()

    def pods_of(self, workload: AppWorkload) -> list[Obj]:
        return [pod for pod, owner in self._pods.values() if owns(workload, pod, owner)]

    def pod(self, uid: str) -> Obj | None:
        entry = self._pods.get(uid)
        return entry[0] if entry else None

    async def changed(self, since: int) -> int:
        """Wait until the board is newer than `since`; returns its version."""
        while self.version <= since:
            await self._changed.wait()
        return self.version

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = anyio.Event()

    def record(self, kind: str, pod: Obj, owner: tuple[str, str] | None) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) of a pod whose top controller is `owner`."""
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        if kind == "DELETED":
            self._pods.pop(uid, None)
        else:
            self._pods[uid] = (pod, owner)
        self._bump()

    def _relisted(self, namespace: str, pods: Sequence[tuple[Obj, tuple[str, str] | None]]) -> None:
        for uid, (pod, _) in list(self._pods.items()):
            if (pod.get("metadata") or {}).get("namespace") == namespace:
                del self._pods[uid]
        for pod, owner in pods:
            self._pods[str(pod["metadata"].get("uid", ""))] = (pod, owner)
        self._bump()

    async def _watcher(self, namespace: str) -> None:
        await blocking.call(self._watch, namespace, what=f"watching the pods of {namespace}")

    def _watch(self, namespace: str) -> None:
        """List, then watch from the list's resourceVersion; relist when the watch expires."""
        attempt = 0
        while True:
            blocking.check()
            try:
                version = self._list(namespace)
                attempt = 0
                while version:
                    version = self._follow(namespace, version)
            except (DevloopError, ValueError):  # away, refused, or a torn event: list again
                stop = blocking.current_stop()
                if stop is not None:
                    stop.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1

    def _list(self, namespace: str) -> str:
        reply = self._cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods")
        if reply.status != 200:
            raise DevloopError(reply.message())
        pods = [(p, self._owner(p)) for p in reply.body.get("items", [])]
        anyio.from_thread.run_sync(self._relisted, namespace, pods)
        return str(reply.body.get("metadata", {}).get("resourceVersion", ""))

    def _follow(self, namespace: str, version: str) -> str:
        """Apply one watch's events; the resourceVersion to resume from, "" to relist."""
        query = [("watch", "1"), ("resourceVersion", version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(WATCH_TIMEOUT_S))]  # fmt: skip
        lines = streaming.open_lines(self._cluster, f"/api/v1/namespaces/{namespace}/pods", query)
        for event in streaming.watch_events(lines):
            kind, pod = event.get("type", ""), event.get("object") or {}
            if kind == "ERROR":
                return ""  # e.g. 410 Gone: the resourceVersion is too old
            version = str((pod.get("metadata") or {}).get("resourceVersion", version))
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                anyio.from_thread.run_sync(self.record, kind, pod, self._owner(pod))
        blocking.check()
        return version

    def _owner(self, pod: Obj) -> tuple[str, str] | None:
        """The pod's top controller: a ReplicaSet's own controller (its Deployment)."""
        owner = controller(pod)
        if owner is None or owner[0] != "ReplicaSet":
            return owner
        key = (str(pod["metadata"].get("namespace", "")), owner[1])
        if key not in self._owners:
            found = self._cluster.get_object("apps/v1", "ReplicaSet", *key)
            if found is None:
                return None  # not readable yet: asked again at the pod's next event
            self._owners[key] = controller(found)
        return self._owners[key]
