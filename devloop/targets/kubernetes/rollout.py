"""Deciding whether a workload has rolled out, and waiting until it has.

`rollout_status` is pure: it reads the plain status dicts the API server returns (a workload and its
pods) and says done, pending (with a message) or failed (with what went wrong and what to do). The
dev loop must not sit for minutes on a pod that can never start, so pod-level failures such as
ErrImagePull or CrashLoopBackOff end the wait at once (skaffold#3909). `wait_for_rollouts` is a
small polling loop over a `Reader` (applying.Cluster in production, plain dicts in tests); it never
asks for pod logs or exec, it only reads objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from devloop import blocking
from devloop.errors import RolloutError, trimmed

Obj = Mapping[str, Any]

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"})
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
POLL_S = 0.25  # between two reads of the pending workloads, seconds (3 GETs each)
MESSAGE_CHARS = 300  # a server message is cut to this many characters


@dataclass(frozen=True, order=True)
class Workload:
    """An object's identity (a workload to wait for, an applied object); `str()` gives
    ``Kind/name``; `namespace` is "" for cluster-scoped objects."""

    api_version: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Status:
    """Where a rollout stands: done, failed (the reason, for the user) or pending (`message`)."""

    done: bool
    failed: str | None = None
    message: str = ""


class Reader(Protocol):
    """What the waiting loop needs from the cluster: read one object, list by label selector."""

    def get_object(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None: ...

    def list_objects(
        self, api_version: str, kind: str, namespace: str, selector: str
    ) -> Sequence[Obj]: ...


def _pending(message: str) -> Status:
    return Status(done=False, message=message)


def _failed(reason: str) -> Status:
    return Status(done=False, failed=reason, message=reason)


DONE = Status(done=True, message="rolled out")


def rollout_status(kind: str, obj: Obj, pods: Sequence[Obj]) -> Status:
    """The rollout state of `obj` of `kind`, given the pods it currently owns."""
    for pod in pods:
        reason = pod_failure(pod)
        if reason is not None:
            return _failed(reason)
    check = _CHECKS.get(kind)
    return DONE if check is None else check(obj)


def _trim(text: str) -> str:
    return trimmed(text, MESSAGE_CHARS)


def _observed(obj: Obj) -> Status | None:
    """Pending while the controller has not yet seen the newest spec."""
    generation = obj.get("metadata", {}).get("generation", 0)
    observed = obj.get("status", {}).get("observedGeneration", 0)
    if observed < generation:
        return _pending(f"waiting for the controller to observe generation {generation}")
    return None


def _condition(obj: Obj, kind: str) -> Obj:
    conditions = obj.get("status", {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def deployment_status(obj: Obj) -> Status:
    progressing = _condition(obj, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return _failed(
            "the rollout exceeded its progressDeadlineSeconds: "
            f"{_trim(progressing.get('message', ''))}. Look at the new pods' events "
            "(kubectl describe pod) to see why they do not become ready"
        )
    status = obj.get("status", {})
    want = obj.get("spec", {}).get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    if (observing := _observed(obj)) is not None:
        return observing
    if updated < want:
        return _pending(f"{updated} of {want} replicas updated")
    if total > updated:
        return _pending(f"{total - updated} old replicas still running")
    return _all_of(updated, status.get("availableReplicas", 0), status.get("readyReplicas", 0))


def _all_of(want: int, available: int, ready: int) -> Status:
    if ready < want:
        return _pending(f"{ready} of {want} updated replicas ready")
    if available < want:
        return _pending(f"{available} of {want} updated replicas available")
    return DONE


def statefulset_status(obj: Obj) -> Status:
    if (observing := _observed(obj)) is not None:
        return observing
    spec, status = obj.get("spec", {}), obj.get("status", {})
    if spec.get("updateStrategy", {}).get("type") == "OnDelete":
        return DONE  # pods change only when someone deletes them: nothing to wait for
    want = spec.get("replicas", 1)
    partition = spec.get("updateStrategy", {}).get("rollingUpdate", {}).get("partition", 0)
    updated = status.get("updatedReplicas", 0)
    if updated < want - partition:
        return _pending(f"{updated} of {want - partition} replicas updated")
    if status.get("readyReplicas", 0) < want:
        return _pending(f"{status.get('readyReplicas', 0)} of {want} replicas ready")
    if partition == 0 and status.get("updateRevision") != status.get("currentRevision"):
        return _pending("waiting for the update revision to become current")
    return DONE


def daemonset_status(obj: Obj) -> Status:
    if (observing := _observed(obj)) is not None:
        return observing
    status = obj.get("status", {})
    want = status.get("desiredNumberScheduled", 0)
    updated = status.get("updatedNumberScheduled", 0)
    if updated < want:
        return _pending(f"{updated} of {want} pods updated")
    available = status.get("numberAvailable", 0)
    if available < want:
        return _pending(f"{available} of {want} pods available")
    return DONE


def job_status(obj: Obj) -> Status:
    if _condition(obj, "Complete").get("status") == "True":
        return DONE
    failed = _condition(obj, "Failed")
    if failed.get("status") == "True":
        return _failed(
            f"the job failed ({failed.get('reason', 'Failed')}: "
            f"{_trim(failed.get('message', ''))}). See its pods' output with "
            "`kubectl logs job/NAME`"
        )
    want = obj.get("spec", {}).get("completions", 1)
    done = obj.get("status", {}).get("succeeded", 0)
    return _pending(f"{done} of {want} completions succeeded")


def pod_status(obj: Obj) -> Status:
    phase = obj.get("status", {}).get("phase", "Pending")
    if phase == "Succeeded" or _condition(obj, "Ready").get("status") == "True":
        return DONE
    if phase == "Failed":
        reason = obj.get("status", {}).get("message") or obj.get("status", {}).get("reason", "")
        return _failed(f"the pod failed: {_trim(reason) or 'no reason given'}")
    return _pending(f"pod is {phase}, not ready yet")


_CHECKS: Mapping[str, Callable[[Obj], Status]] = {
    "Deployment": deployment_status,
    "StatefulSet": statefulset_status,
    "DaemonSet": daemonset_status,
    "Job": job_status,
    "Pod": pod_status,
}


# -- pod-level failures that will not heal by waiting -------------------------------------------

PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff"})
KBLD_LOCAL_PREFIXES = ("kbld:", "docker.io/library/kbld:", "index.docker.io/library/kbld:")


def pod_failure(pod: Obj) -> str | None:
    """Why `pod` can never become ready without the user's help, or None."""
    name = pod.get("metadata", {}).get("name", "?")
    scheduled = _condition(pod, "PodScheduled")
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return (
            f"pod {name} cannot be scheduled: {_trim(scheduled.get('message', ''))}. "
            "Check its resource requests, nodeSelector, affinity and tolerations against "
            "the cluster's nodes (kubectl describe nodes)"
        )
    status = pod.get("status", {})
    for container in (
        *status.get("initContainerStatuses", ()),
        *status.get("containerStatuses", ()),
    ):
        reason = container_failure(container)
        if reason is not None:
            return f"pod {name}, container {container.get('name', '?')}: {reason}"
    return None


def container_failure(container: Obj) -> str | None:
    """The user-facing reason a container is stuck, from its status, or None."""
    waiting = container.get("state", {}).get("waiting") or {}
    reason = waiting.get("reason", "")
    message = _trim(waiting.get("message", ""))
    image = container.get("image", "")
    if reason in PULL_REASONS:
        return pull_failure(image, message)
    if reason == "ErrImageNeverPull":
        return (
            f"imagePullPolicy is Never and the node does not have {image}. Drop "
            "imagePullPolicy: devloop sets IfNotPresent on the images it delivers unpushed"
        )
    if reason == "InvalidImageName":
        return f"the image reference {image!r} is invalid: {message}"
    if reason == "CrashLoopBackOff":
        return crash_failure(container)
    if reason == "CreateContainerConfigError":
        return (
            f"the container cannot be created: {message}. A ConfigMap, Secret or key it "
            "refers to is probably missing"
        )
    return None


def pull_failure(image: str, message: str) -> str:
    if image.startswith(KBLD_LOCAL_PREFIXES):
        return (
            f"the cluster cannot pull {image}: this image exists only in your local Docker "
            "engine, which the cluster does not share. Let devloop deliver it another way: "
            "--delivery load on kind or k3d, --default-repo REGISTRY/PREFIX, an "
            "ImageDestinations document, or a local registry announced in the ConfigMap "
            "kube-public/local-registry-hosting"
        )
    detail = f" ({message})" if message else ""
    return (
        f"the cluster cannot pull {image}{detail}. Check that the image exists in the "
        "registry, that the nodes can reach it and that imagePullSecrets allow it"
    )


def crash_failure(container: Obj) -> str:
    restarts = container.get("restartCount", 0)
    last = container.get("lastState", {}).get("terminated") or {}
    what = f"exit code {last.get('exitCode', '?')}"
    if last.get("reason"):
        what += f", {last['reason']}"
    if last.get("message"):
        what += f": {_trim(last['message'])}"
    return (
        f"the container keeps crashing (restarted {restarts} times; last {what}). "
        "See its output with `kubectl logs POD -c CONTAINER --previous`"
    )


# -- reading a workload's pods --------------------------------------------------------------------


def selector_string(selector: Obj) -> str:
    """A LabelSelector as the query string the API accepts (``a=b,tier in (x,y)``)."""
    parts = [f"{k}={v}" for k, v in sorted(selector.get("matchLabels", {}).items())]
    for expr in selector.get("matchExpressions", ()):
        key, op, values = expr["key"], expr["operator"], ",".join(expr.get("values", ()))
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }[op]
        )
    return ",".join(parts)


def owned_by(obj: Obj, uids: set[str]) -> bool:
    return any(ref.get("uid") in uids for ref in obj.get("metadata", {}).get("ownerReferences", ()))


def _newest_replica_sets(reader: Reader, workload: Workload, obj: Obj, selector: str) -> set[str]:
    """The uid of the ReplicaSet of the Deployment's current revision (empty until created)."""
    revision = obj.get("metadata", {}).get("annotations", {}).get(REVISION_ANNOTATION)
    sets = reader.list_objects("apps/v1", "ReplicaSet", workload.namespace, selector)
    uid = obj.get("metadata", {}).get("uid", "")
    return {
        rs["metadata"]["uid"]
        for rs in sets
        if owned_by(rs, {uid})
        and rs["metadata"].get("annotations", {}).get(REVISION_ANNOTATION) == revision
    }


def pods_of(reader: Reader, workload: Workload, obj: Obj) -> list[Obj]:
    """The pods of `obj`'s current revision: selected by its selector, filtered by owner."""
    if workload.kind == "Pod":
        return [obj]
    selector = selector_string(obj.get("spec", {}).get("selector") or {})
    owners = {obj.get("metadata", {}).get("uid", "")}
    if workload.kind == "Deployment":
        owners = _newest_replica_sets(reader, workload, obj, selector)
    pods = reader.list_objects("v1", "Pod", workload.namespace, selector) if owners else []
    return [pod for pod in pods if owned_by(pod, owners)]


def check(reader: Reader, workload: Workload) -> Status:
    """Read `workload` and its pods once and decide."""
    w = workload
    obj = reader.get_object(w.api_version, w.kind, w.namespace, w.name)
    if obj is None:
        return _pending("not found (yet)")
    return rollout_status(w.kind, obj, pods_of(reader, w, obj))


# -- waiting --------------------------------------------------------------------------------------

Progress = Callable[[Workload, Status], None]


def wait_for_rollouts(
    cluster: Reader,
    workloads: Sequence[Workload],
    deadline_s: float,
    on_progress: Progress | None = None,
    *,
    poll_s: float = POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
) -> None:
    """Return once every workload rolled out; RolloutError on a fast failure or the deadline.

    `on_progress` hears each workload's status whenever it changes. Run through
    `anyio.to_thread.run_sync`, it stops at the next poll once the calling task is cancelled.
    `clock` and `sleep` are the seams a test replaces to run the deadline without waiting.
    """
    report = on_progress or (lambda _w, _s: None)
    pause = sleep or _pause
    pending: dict[Workload, Status] = {w: _pending("not read yet") for w in workloads}
    end = clock() + deadline_s
    while pending:
        for workload in list(pending):
            status = check(cluster, workload)
            if status != pending[workload]:
                report(workload, status)
            if status.failed is not None:
                raise RolloutError(f"{_place(workload)}: {status.failed}")
            pending[workload] = status
            if status.done:
                del pending[workload]
        if pending and clock() >= end:
            raise RolloutError(_timeout_message(pending, deadline_s))
        if pending:
            pause(poll_s)


def _pause(seconds: float) -> None:
    """Sleep between polls, but first stop if the task that started this thread was cancelled:
    a newer change must not wait for an old rollout's deadline."""
    blocking.check()
    time.sleep(seconds)


def _place(workload: Workload) -> str:
    return f"{workload} in namespace {workload.namespace}" if workload.namespace else str(workload)


def _timeout_message(pending: Mapping[Workload, Status], deadline_s: float) -> str:
    lines = "; ".join(f"{_place(w)}: {s.message}" for w, s in pending.items())
    return (
        f"the rollout did not finish within {deadline_s:g} s; still pending: {lines}. "
        "Raise rolloutTimeoutSeconds if it needs longer, or see why with kubectl describe"
    )
