"""The delivery ladder, decided from recorded objects: which rung each kind of cluster gets.

No kind, k3d, minikube or Docker Desktop runs here, so each product is one recorded set of Node
objects (`tests/recorded/nodes.yaml`) and its usual kubeconfig context name; the ladder is a pure
function of them, the KEP-1755 ConfigMap and the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from devloop.errors import DeliveryError
from devloop.kbld.references import repository_in
from devloop.targets.kubernetes.delivery import (
    Choice,
    Evidence,
    choose,
    parse_hosting,
    product,
    pulled_as,
    with_pull_policy,
)

RECORDED = yaml.safe_load((Path(__file__).parent / "recorded" / "nodes.yaml").read_text())


def hosting(**fields: str) -> dict[str, Any]:
    text = "".join(f'{key}: "{value}"\n' for key, value in fields.items())
    meta = {"name": "local-registry-hosting", "namespace": "kube-public"}
    return {"kind": "ConfigMap", "metadata": meta, "data": {"localRegistryHosting.v1": text}}


def evidence(name: str, configmap: dict[str, Any] | None = None, **environ: str) -> Evidence:
    recorded = RECORDED[name]
    return Evidence(recorded["context"], recorded["nodes"], configmap, environ)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("kind", "kind"),
        ("k3d", "k3d"),
        ("minikube", "minikube"),
        ("minikube-containerd", "minikube"),
        ("docker-desktop", "docker-desktop"),
        ("rancher-desktop", "rancher-desktop"),
        ("colima", "colima"),
        ("orbstack", "orbstack"),
        ("kwok", "kwok"),
        ("gke", ""),
    ],
)
def test_each_product_is_recognised_from_its_context_and_nodes(name: str, expected: str) -> None:
    recorded = RECORDED[name]
    assert product(recorded["context"], recorded["nodes"]) == expected


def test_kind_is_recognised_by_its_provider_id_under_a_renamed_context() -> None:
    assert product("my-laptop", RECORDED["kind"]["nodes"]) == "kind"


def test_k3d_is_recognised_by_its_node_names_under_a_renamed_context() -> None:
    assert product("work", RECORDED["k3d"]["nodes"]) == "k3d"


def test_an_announced_registry_wins_over_every_other_rung() -> None:
    announced = hosting(
        host="localhost:5001", help="https://kind.sigs.k8s.io/docs/user/local-registry/"
    )
    for name in ("kind", "docker-desktop", "kwok", "gke"):
        choice = choose(evidence(name, announced), default_repo="ghcr.io/me")
        assert (choice.rung, choice.push_to, choice.pull_from) == (
            "registry",
            "localhost:5001",
            "localhost:5001",
        )
        assert "local-registry-hosting" in choice.reason and "host=localhost:5001" in choice.reason


def test_the_runtime_side_name_of_an_announced_registry_is_what_manifests_pull() -> None:
    announced = hosting(host="127.0.0.1:5000", hostFromContainerRuntime="registry:5000")
    choice = choose(evidence("k3d", announced))
    assert pulled_as(choice, "127.0.0.1:5000/app@sha256:" + "a" * 64) == (
        "registry:5000/app@sha256:" + "a" * 64
    )


def test_a_configmap_without_the_v1_key_is_a_clear_error() -> None:
    broken = {"data": {"localRegistryHosting.v2": "host: x"}}
    with pytest.raises(
        DeliveryError, match=r"local-registry-hosting has no key localRegistryHosting\.v1"
    ):
        parse_hosting(broken)


def test_a_configmap_naming_no_host_is_a_clear_error() -> None:
    with pytest.raises(DeliveryError, match="names no host"):
        parse_hosting(hosting(help="https://example.test/"))


@pytest.mark.parametrize("name", ["docker-desktop", "rancher-desktop", "colima", "orbstack"])
def test_a_desktop_cluster_on_the_local_engine_uses_the_built_tag(name: str) -> None:
    choice = choose(evidence(name))
    assert choice.rung == "engine" and name in choice.reason


def test_a_desktop_cluster_is_not_the_engine_when_docker_host_points_elsewhere() -> None:
    with pytest.raises(DeliveryError):
        choose(evidence("docker-desktop", DOCKER_HOST="tcp://build-box.internal:2376"))


def test_minikube_shares_the_engine_only_through_its_docker_env() -> None:
    with_env = choose(evidence("minikube", MINIKUBE_ACTIVE_DOCKERD="minikube"))
    assert with_env.rung == "engine" and "docker-env" in with_env.reason
    with pytest.raises(DeliveryError):
        choose(evidence("minikube"))  # the host's engine: the cluster cannot see its images


def test_minikube_on_containerd_is_never_the_engine() -> None:
    with pytest.raises(DeliveryError):
        choose(evidence("minikube-containerd", MINIKUBE_ACTIVE_DOCKERD="dev"))


def test_kwok_nodes_pull_nothing_so_the_built_tag_is_used() -> None:
    choice = choose(evidence("kwok"))
    assert choice.rung == "engine" and "kwok" in choice.reason


def test_kind_loads_into_every_node() -> None:
    choice = choose(evidence("kind"))
    assert (choice.rung, choice.product) == ("load", "kind")
    assert choice.nodes == ("dev-control-plane", "dev-worker")
    assert "kind load docker-image" in choice.reason


def test_k3d_loads_into_its_server_node() -> None:
    choice = choose(evidence("k3d"))
    assert (choice.rung, choice.product, choice.nodes) == ("load", "k3d", ("k3d-dev-server-0",))


def test_a_default_repo_is_pushed_to_when_nothing_closer_fits() -> None:
    choice = choose(evidence("gke"), default_repo="europe-docker.pkg.dev/p/dev/")
    assert (choice.rung, choice.push_to) == ("push", "europe-docker.pkg.dev/p/dev")


def test_a_local_cluster_comes_before_the_default_repo() -> None:
    assert choose(evidence("kind"), default_repo="ghcr.io/me").rung == "load"


def test_no_rung_is_one_error_naming_the_three_fixes() -> None:
    with pytest.raises(DeliveryError) as raised:
        choose(evidence("gke"))
    message = str(raised.value)
    assert "gke_project_europe-west1_dev" in message
    for fix in ("ImageDestinations", "--default-repo", "defaultRepo", "local-registry-hosting"):
        assert fix in message
    assert "\n" not in message


def test_an_explicit_rung_is_taken_without_the_others_being_tried() -> None:
    announced = hosting(host="localhost:5001")
    assert choose(evidence("kind", announced), "load").rung == "load"
    assert choose(evidence("gke"), "engine").rung == "engine"
    assert choose(evidence("kind", announced), "push", "ghcr.io/me").rung == "push"


def test_an_explicit_rung_that_cannot_work_says_why() -> None:
    with pytest.raises(DeliveryError, match="--delivery registry: the cluster has no ConfigMap"):
        choose(evidence("kind"), "registry")
    with pytest.raises(DeliveryError, match="--delivery push: no defaultRepo is set"):
        choose(evidence("kind"), "push")
    with pytest.raises(
        DeliveryError, match=r"--delivery load: context 'gke_.*' is not a kind or k3d"
    ):
        choose(evidence("gke"), "load")


# -- names under a default repo (Tilt's escaping) ---------------------------------------------
@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("sample-app-go", "ghcr.io/me/sample-app-go"),
        ("sample-app-go:v1", "ghcr.io/me/sample-app-go"),
        ("docker.io/library/web", "ghcr.io/me/docker.io_library_web"),
        ("registry.localhost:32000/api-gateway", "ghcr.io/me/registry.localhost_32000_api-gateway"),
        ("web@sha256:" + "0" * 64, "ghcr.io/me/web"),
        ("ghcr.io/me/web", "ghcr.io/me/web"),  # already under the repository: left as it is
        ("ghcr.io/me/team/web:dev", "ghcr.io/me/team/web"),
        ("ghcr.io/meow/web", "ghcr.io/me/ghcr.io_meow_web"),  # a prefix of the name is not enough
    ],
)
def test_names_under_a_default_repo_escape_slashes_colons_and_ats(
    image: str, expected: str
) -> None:
    assert repository_in("ghcr.io/me/", image) == expected


def test_a_name_under_a_default_repo_is_at_most_255_characters() -> None:
    assert len(repository_in("ghcr.io/me", "a/" * 200 + "b")) == 255


def test_a_pushed_reference_keeps_its_host_when_the_runtime_names_it_the_same() -> None:
    choice = Choice("push", "", push_to="ghcr.io/me", pull_from="ghcr.io/me")
    assert (
        pulled_as(choice, "ghcr.io/me/web@sha256:" + "b" * 64)
        == "ghcr.io/me/web@sha256:" + "b" * 64
    )


# -- pull policy ----------------------------------------------------------------------------------
def deployment(*containers: dict[str, Any]) -> dict[str, Any]:
    spec = {"containers": list(containers), "initContainers": [{"name": "init", "image": "kbld:i"}]}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": {"spec": spec}}}


def test_unpushed_built_images_get_if_not_present_where_the_manifest_leaves_it_unset() -> None:
    data = deployment(
        {"name": "web", "image": "kbld:web"},
        {"name": "mine", "image": "kbld:web", "imagePullPolicy": "Always"},
        {"name": "other", "image": "redis:7"},
    )
    with_pull_policy(data, frozenset({"kbld:web", "kbld:i"}))
    spec = data["spec"]["template"]["spec"]
    assert [c.get("imagePullPolicy") for c in spec["containers"]] == [
        "IfNotPresent",
        "Always",
        None,
    ]
    assert spec["initContainers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_pods_and_cronjobs_get_the_pull_policy_too() -> None:
    pod = {"kind": "Pod", "spec": {"containers": [{"name": "a", "image": "kbld:a"}]}}
    job_spec = {"template": {"spec": {"containers": [{"name": "a", "image": "kbld:a"}]}}}
    cron = {"kind": "CronJob", "spec": {"jobTemplate": {"spec": job_spec}}}
    with_pull_policy(pod, frozenset({"kbld:a"}))
    with_pull_policy(cron, frozenset({"kbld:a"}))
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert job_spec["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_other_kinds_are_left_alone() -> None:
    config = {"kind": "ConfigMap", "data": {"image": "kbld:a"}}
    assert with_pull_policy(dict(config), frozenset({"kbld:a"})) == config
