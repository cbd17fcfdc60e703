"""Rollout decisions over real-shaped status objects, and the waiting loop over a scripted reader.

The status dicts copy what the API server returns (field names and nesting as in `kubectl get -o
json`); the kbld ErrImagePull one is the one from the kbld tutorial in shared/seed. The cluster
tests in test_applying.py run the same loop against a real control plane.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devloop import blocking
from devloop.errors import RolloutError
from devloop.targets.kubernetes.rollout import (
    Status,
    Workload,
    pod_failure,
    rollout_status,
    selector_string,
    wait_for_rollouts,
)

KBLD_IMAGE = (
    "kbld:quay-io-eduk8s-labs-sample-app-go-sha256-"
    "2040a07ce5d0d41559c23103ae5c56b4d64c9f36bb5859d664b1311e329a79b5"
)
KBLD_PULL_MESSAGE = (
    'rpc error: code = Unknown desc = failed to pull and unpack image "docker.io/library/'
    f'{KBLD_IMAGE}": pull access denied, repository does not exist or may require authorization'
)


def deployment(
    *, replicas: int = 2, generation: int = 2, observed: int = 2, **status: Any
) -> dict[str, Any]:
    counts = {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas}
    counts["availableReplicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "dev", "generation": generation, "uid": "d-1",
                     "annotations": {"deployment.kubernetes.io/revision": "2"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}},
        "status": {"observedGeneration": observed, **counts, **status},
    }  # fmt: skip


def pod(name: str = "web-7d9-abcde", owner: str = "rs-2", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "dev", "labels": {"app": "web"},
                     "ownerReferences": [{"kind": "ReplicaSet", "uid": owner}]},
        "status": {"phase": "Pending", **status},
    }  # fmt: skip


def waiting(reason: str, message: str = "", image: str = KBLD_IMAGE) -> dict[str, Any]:
    return {
        "name": "app",
        "image": image,
        "ready": False,
        "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": message}},
    }


def test_a_deployment_with_every_replica_updated_and_available_is_done() -> None:
    assert rollout_status("Deployment", deployment(), []).done


def test_a_deployment_whose_new_spec_was_not_observed_yet_is_pending() -> None:
    status = rollout_status("Deployment", deployment(generation=3, observed=2), [])
    assert (status.done, status.failed) == (False, None)
    assert "generation 3" in status.message


def test_a_deployment_with_replicas_not_yet_updated_is_pending() -> None:
    status = rollout_status("Deployment", deployment(replicas=3, updatedReplicas=2), [])
    assert (status.done, status.message) == (False, "2 of 3 replicas updated")


def test_a_deployment_with_surplus_old_replicas_says_so() -> None:
    obj = deployment(replicas=2)
    obj["status"]["replicas"] = 3
    status = rollout_status("Deployment", obj, [])
    assert not status.done
    assert "1 old replicas" in status.message


@given(
    want=st.integers(0, 5),
    updated=st.integers(0, 5),
    available=st.integers(0, 5),
    ready=st.integers(0, 5),
)
def test_a_deployment_is_done_only_when_all_counts_reach_the_desired_replicas(
    want: int, updated: int, available: int, ready: int
) -> None:
    obj = deployment(replicas=want)
    obj["status"].update(
        replicas=updated, updatedReplicas=updated, availableReplicas=available, readyReplicas=ready
    )
    done = rollout_status("Deployment", obj, []).done
    assert done == (updated >= want and available >= updated and ready >= updated)


def test_a_deployment_past_its_progress_deadline_fails() -> None:
    condition = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": 'ReplicaSet "web-7d9" has timed out progressing.'}  # fmt: skip
    obj = deployment(updatedReplicas=1, conditions=[condition])
    status = rollout_status("Deployment", obj, [])
    assert status.failed is not None
    assert "progressDeadlineSeconds" in status.failed and "timed out progressing" in status.failed


def test_a_statefulset_is_pending_until_the_update_revision_is_current() -> None:
    obj: dict[str, Any] = {
        "metadata": {"generation": 1},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2,
                   "updatedReplicas": 2, "currentRevision": "db-1", "updateRevision": "db-2"},
    }  # fmt: skip
    assert not rollout_status("StatefulSet", obj, []).done
    obj["status"]["currentRevision"] = "db-2"
    assert rollout_status("StatefulSet", obj, []).done


def test_a_daemonset_waits_for_every_scheduled_pod_to_be_updated_and_available() -> None:
    obj: dict[str, Any] = {
        "metadata": {"generation": 4},
        "status": {"observedGeneration": 4, "desiredNumberScheduled": 3,
                   "updatedNumberScheduled": 3, "numberAvailable": 2},
    }  # fmt: skip
    assert rollout_status("DaemonSet", obj, []).message == "2 of 3 pods available"
    obj["status"]["numberAvailable"] = 3
    assert rollout_status("DaemonSet", obj, []).done


def test_a_job_is_done_when_complete_and_failed_when_its_failed_condition_is_true() -> None:
    obj: dict[str, Any] = {"spec": {"completions": 1}, "status": {"succeeded": 0}}
    assert rollout_status("Job", obj, []).message == "0 of 1 completions succeeded"
    obj["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    assert rollout_status("Job", obj, []).done
    obj["status"]["conditions"] = [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}
    ]  # fmt: skip
    failed = rollout_status("Job", obj, []).failed
    assert failed is not None and "BackoffLimitExceeded" in failed


def test_a_bare_pod_is_done_when_ready() -> None:
    ready = pod(phase="Running", conditions=[{"type": "Ready", "status": "True"}])
    assert rollout_status("Pod", ready, [ready]).done
    assert not rollout_status("Pod", pod(), [pod()]).done


def test_err_image_pull_of_a_kbld_tag_says_the_image_exists_only_locally() -> None:
    broken = pod(containerStatuses=[waiting("ErrImagePull", KBLD_PULL_MESSAGE)])
    status = rollout_status("Deployment", deployment(updatedReplicas=1), [broken])
    assert status.failed is not None
    assert f"the cluster cannot pull {KBLD_IMAGE}" in status.failed
    assert "exists only in your local Docker engine" in status.failed
    assert "ImageDestinations" in status.failed
    assert "--delivery load" in status.failed and "--default-repo" in status.failed
    assert status.failed.startswith("pod web-7d9-abcde, container app: ")


def test_image_pull_back_off_of_a_registry_image_quotes_the_server_message() -> None:
    image = "registry.example:5000/web:v2"
    broken = pod(containerStatuses=[waiting("ImagePullBackOff", "Back-off pulling image", image)])
    reason = pod_failure(broken)
    assert reason is not None
    assert f"cannot pull {image} (Back-off pulling image)" in reason
    assert "local Docker engine" not in reason


@pytest.mark.parametrize(
    ("reason", "message", "expected"),
    [
        ("ErrImageNeverPull", "", "imagePullPolicy is Never and the node does not have"),
        ("InvalidImageName", "couldn't parse image name", "couldn't parse image name"),
        ("CreateContainerConfigError", 'configmap "web-env" not found', '"web-env" not found'),
    ],
)
def test_a_stuck_container_fails_the_rollout_with_the_reason(
    reason: str, message: str, expected: str
) -> None:
    broken = pod(containerStatuses=[waiting(reason, message)])
    status = rollout_status("Deployment", deployment(), [broken])
    assert status.failed is not None and expected in status.failed


def test_crash_loop_back_off_reports_the_last_termination_and_how_to_see_logs() -> None:
    crashing = waiting("CrashLoopBackOff", "back-off 40s restarting failed container")
    crashing["restartCount"] = 4
    crashing["lastState"] = {
        "terminated": {"exitCode": 2, "reason": "Error", "message": "panic: missing PORT"}
    }
    reason = pod_failure(pod(containerStatuses=[crashing]))
    assert reason is not None
    assert "restarted 4 times; last exit code 2, Error: panic: missing PORT" in reason
    assert "kubectl logs" in reason


def test_a_failing_init_container_is_caught_too() -> None:
    broken = pod(initContainerStatuses=[waiting("ErrImagePull", "not found", "busybox:nope")])
    reason = pod_failure(broken)
    assert reason is not None and "cannot pull busybox:nope" in reason


def test_an_unschedulable_pod_says_what_to_check() -> None:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 node(s) didn't match node selector.",
    }
    reason = pod_failure(pod(conditions=[condition]))
    assert reason is not None
    assert "cannot be scheduled: 0/1 nodes are available" in reason and "nodeSelector" in reason


def test_a_pod_that_is_merely_creating_its_container_is_not_a_failure() -> None:
    assert pod_failure(pod(containerStatuses=[waiting("ContainerCreating")])) is None


def test_label_selectors_become_the_query_syntax_of_the_api() -> None:
    selector = {
        "matchLabels": {"app": "web", "tier": "front"},
        "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["dev", "qa"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    assert selector_string(selector) == "app=web,tier=front,env in (dev,qa),!canary"


# -- the waiting loop ---------------------------------------------------------------------------


class ScriptedCluster:
    """A Reader serving successive snapshots: each read of the Deployment advances one step."""

    def __init__(self, steps: list[dict[tuple[str, str], list[dict[str, Any]]]]) -> None:
        self.steps, self.step = steps, -1
        self.read = threading.Event()

    def get_object(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        self.read.set()
        self.step = min(self.step + 1, len(self.steps) - 1)
        found = self.steps[self.step].get((kind, name), [])
        return found[0] if found else None

    def list_objects(self, api_version: str, kind: str, namespace: str, selector: str) -> Any:
        return self.steps[self.step].get((kind, ""), [])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


WEB = Workload("apps/v1", "Deployment", "dev", "web")


def replica_set(uid: str, revision: str) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "ownerReferences": [{"uid": "d-1"}],
                     "annotations": {"deployment.kubernetes.io/revision": revision}},
    }  # fmt: skip


def snapshot(dep: Mapping[str, Any], pods: list[dict[str, Any]]) -> Any:
    sets = [replica_set("rs-1", "1"), replica_set("rs-2", "2")]
    return {("Deployment", "web"): [dep], ("ReplicaSet", ""): sets, ("Pod", ""): pods}


def test_waiting_returns_once_the_deployment_rolled_out_and_reports_each_change() -> None:
    rolling = deployment(updatedReplicas=1, availableReplicas=1, readyReplicas=1)
    cluster = ScriptedCluster(
        [snapshot(rolling, []), snapshot(rolling, []), snapshot(deployment(), [])]
    )
    heard: list[Status] = []
    clock = FakeClock()
    wait_for_rollouts(cluster, [WEB], 60, lambda w, s: heard.append(s), clock=clock,
                      sleep=clock.sleep)  # fmt: skip
    assert [s.message for s in heard] == ["1 of 2 replicas updated", "rolled out"]
    assert cluster.step == 2


def test_a_crashing_pod_of_an_old_replica_set_does_not_fail_the_new_rollout() -> None:
    crashing = waiting("CrashLoopBackOff")
    old = pod("web-old", owner="rs-1", containerStatuses=[crashing])
    cluster = ScriptedCluster([snapshot(deployment(), [old])])
    wait_for_rollouts(cluster, [WEB], 60, sleep=FakeClock().sleep)


def test_a_fast_failure_ends_the_wait_with_the_workload_and_the_reason() -> None:
    rolling = deployment(updatedReplicas=1)
    broken = pod(containerStatuses=[waiting("ErrImagePull", KBLD_PULL_MESSAGE)])
    cluster = ScriptedCluster([snapshot(rolling, []), snapshot(rolling, [broken])])
    clock = FakeClock()
    with pytest.raises(RolloutError) as raised:
        wait_for_rollouts(cluster, [WEB], 60, clock=clock, sleep=clock.sleep)
    assert str(raised.value).startswith("Deployment/web in namespace dev: pod web-7d9-abcde")
    assert "exists only in your local Docker engine" in str(raised.value)
    assert clock.now < 60


def test_the_deadline_lists_what_is_still_pending() -> None:
    stuck = deployment(updatedReplicas=1)
    cluster = ScriptedCluster([snapshot(stuck, [])])
    clock = FakeClock()
    missing = Workload("apps/v1", "StatefulSet", "dev", "db")
    with pytest.raises(RolloutError) as raised:
        wait_for_rollouts(cluster, [WEB, missing], 5, clock=clock, sleep=clock.sleep)
    message = str(raised.value)
    assert "did not finish within 5 s" in message
    assert "Deployment/web in namespace dev: 1 of 2 replicas updated" in message
    assert "StatefulSet/db in namespace dev: not found (yet)" in message
    assert clock.now == pytest.approx(5, abs=0.5)


@pytest.mark.anyio
@pytest.mark.timeout(20)
async def test_cancelling_the_caller_stops_the_wait_in_its_worker_thread() -> None:
    cluster = ScriptedCluster([snapshot(deployment(updatedReplicas=1), [])])

    def wait() -> None:
        wait_for_rollouts(cluster, [WEB], deadline_s=3600, poll_s=0.01)

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocking.call, wait)  # how the Kubernetes target runs it
            await anyio.to_thread.run_sync(cluster.read.wait)
            scope.cancel()
    assert scope.cancelled_caught


def test_waiting_for_nothing_returns_at_once() -> None:
    cluster = ScriptedCluster([{}])
    wait_for_rollouts(cluster, [], 1, sleep=lambda _s: pytest.fail("slept"))
    assert cluster.step == -1


def test_rollout_status_does_not_modify_its_inputs() -> None:
    obj, pods = deployment(), [pod(containerStatuses=[waiting("ErrImagePull")])]
    before = copy.deepcopy((obj, pods))
    rollout_status("Deployment", obj, pods)
    assert (obj, pods) == before
