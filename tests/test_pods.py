"""Which pods belong to which workload, which ports are forwarded, and which pod serves.

Pure functions over API-shaped dicts; the real-node tests (test_real_node_streams.py) check the
same decisions against the pods a kubelet really runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from devloop.targets.kubernetes.pods import (
    AppWorkload,
    ForwardPort,
    app_workloads,
    controller,
    matches,
    owns,
    serving,
)

CONFIG = Path(__file__).resolve().parents[1] / "config"


def pod(name: str, **status: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "dev", "labels": {"app": "web"}}
    meta["creationTimestamp"] = status.pop("created", "2026-01-01T00:00:00Z")
    if status.pop("terminating", False):
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    ready = status.pop("ready", False)
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": meta, "status": {"phase": "Running", "conditions": conditions, **status}}


def test_the_sample_app_is_forwarded_at_its_service_port_as_on_the_docker_target() -> None:
    objects = [
        doc for path in sorted(CONFIG.glob("*.yml")) for doc in yaml.safe_load_all(path.read_text())
    ]
    (workload,) = app_workloads(objects, "dev")
    assert (workload.kind, workload.name, workload.namespace) == ("Deployment", "sample-app", "dev")
    assert workload.ports == (ForwardPort(8080, 8080),)


def test_a_container_port_no_service_exposes_is_forwarded_at_its_own_number() -> None:
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "other"},
        "spec": {
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "api", "ports": [{"containerPort": 9000}]}]},
            },
        },
    }
    service = {
        "kind": "Service",
        "metadata": {"name": "api", "namespace": "other"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 7000}]},
    }
    (workload,) = app_workloads([deployment, service], "dev")
    assert workload.namespace == "other"
    assert workload.ports == (ForwardPort(80, 7000), ForwardPort(9000, 9000))


def test_a_pod_belongs_to_the_deployment_its_replica_set_belongs_to_and_that_selects_it() -> None:
    web = AppWorkload("Deployment", "dev", "web", {"matchLabels": {"app": "web"}})
    mine = pod("web-1")
    assert owns(web, mine, ("Deployment", "web"))
    assert not owns(web, mine, ("Deployment", "other"))  # same labels, another owner
    stray = pod("web-2")
    stray["metadata"]["labels"] = {"app": "api"}
    assert not owns(web, stray, ("Deployment", "web"))


def test_the_controller_is_the_owner_reference_marked_controller() -> None:
    refs = [
        {"kind": "Other", "name": "x"},
        {"kind": "ReplicaSet", "name": "web-abc", "controller": True},
    ]
    assert controller({"metadata": {"ownerReferences": refs}}) == ("ReplicaSet", "web-abc")
    assert controller({"metadata": {}}) is None


def test_selectors_with_expressions_are_matched_like_the_api_server_does() -> None:
    selector = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "edge"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    assert matches(selector, {"app": "web", "tier": "edge"})
    assert not matches(selector, {"app": "web", "tier": "back"})
    assert not matches(selector, {"app": "web", "tier": "edge", "canary": "1"})


def test_a_new_connection_goes_to_a_ready_pod_before_a_newer_one_that_is_not_ready_yet() -> None:
    old = pod("old", ready=True, created="2026-01-01T00:00:00Z")
    new = pod("new", ready=False, created="2026-01-01T00:05:00Z")
    assert serving([old, new]) is old
    new_ready = pod("new", ready=True, created="2026-01-01T00:05:00Z")
    assert serving([old, new_ready]) is new_ready


def test_a_terminating_or_pending_pod_serves_no_connection() -> None:
    leaving = pod("old", ready=True, terminating=True)
    pending = pod("new", phase="Pending")
    assert serving([leaving, pending]) is None
