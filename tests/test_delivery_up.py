"""`devloop up` delivers what it builds, with no destinations written by hand: the local cluster.

The cluster's kwok node pulls nothing, so what is checked is what devloop pushes and what the
manifests name: a KEP-1755 ConfigMap made by the test points at a Debian docker-registry on
127.0.0.1, and the registry is asked whether it holds the digests the Deployment names. A Node
object of no known product stands for a remote cluster with no way in. The pods really pulling
and running the image is `test_delivery_real_node.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from devloop.kbld.references import repository_in
from devloop.kbld.registry import Registry, RegistryOptions
from tests.daemon_driver import ROOT, Devloop
from tests.fixtures.engine import BaseImages, Leftovers
from tests.fixtures.registry import RunningRegistry

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

DOCKERFILE = "FROM {busybox}\nCOPY . /app/\n"
MANIFESTS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: {image}}}]
---
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
sources: [{{image: {image}, path: app}}]
"""
EXTRA = "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: extra}}\ndata: {{n: '{n}'}}\n"
DESTINATIONS = """\
apiVersion: kbld.k14s.io/v1alpha1
kind: ImageDestinations
destinations: [{{image: {image}, newImage: {new_image}}}]
"""
HOSTING = "local-registry-hosting"


@pytest.fixture
def project(tmp_path: Path, leftovers: Leftovers, base_images: BaseImages) -> Path:
    root = tmp_path / "project"
    (root / "app").mkdir(parents=True)
    (root / "config").mkdir()
    (root / "app" / "Dockerfile").write_text(DOCKERFILE.format(busybox=base_images.busybox))
    (root / "app" / "content.txt").write_text("v1\n")
    (root / "config" / "app.yml").write_text(MANIFESTS.format(image=leftovers.image))
    (root / "config" / "extra.yml").write_text(EXTRA.format(n=1))
    return root


@pytest.fixture
def up(project: Path, cluster: Any, namespace: str) -> Iterator[Any]:
    started: list[Devloop] = []

    def start(*extra: str) -> Devloop:
        args = ["--app", "web", "-n", namespace, "--debounce-ms", "50"]
        started.append(Devloop(project, [*args, "--kubeconfig", str(cluster.kubeconfig), *extra]))
        return started[-1]

    yield start
    for devloop in started:
        devloop.stop()


@pytest.fixture
def announce(kube_api: client.ApiClient) -> Iterator[Any]:
    """`announce(**fields)` writes the KEP-1755 ConfigMap; it is deleted after the test."""
    core = client.CoreV1Api(kube_api)

    def write(**fields: str) -> None:
        data = {"localRegistryHosting.v1": yaml.safe_dump(fields)}
        body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=HOSTING), data=data)
        core.create_namespaced_config_map("kube-public", body)

    yield write
    try:
        core.delete_namespaced_config_map(HOSTING, "kube-public")
    except client.ApiException as error:
        if error.status != 404:
            raise


@pytest.fixture
def foreign_node(kube_api: client.ApiClient) -> Iterator[None]:
    """A Node of no product devloop knows (a cloud VM), next to the kwok node; deleted after."""
    core = client.CoreV1Api(kube_api)
    name = "gke-dev-default-pool-0a1b2c3d-x9z8"
    spec = client.V1NodeSpec(provider_id=f"gce://project/europe-west1-b/{name}")
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name), spec=spec))
    yield
    core.delete_node(name)


def deployed(kube_api: client.ApiClient, namespace: str) -> Any:
    deployment = client.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace)
    return deployment.spec.template.spec.containers[0]


def held(registry: RunningRegistry, ref: str) -> str | None:
    with Registry(RegistryOptions(insecure=True)) as client_:
        return client_.held(ref)


def pushed_lines(devloop: Devloop, repository: str, after: int = 0) -> list[str]:
    return [str(e["line"]) for e in devloop.named("output", after) if e["source"] == repository]


def test_an_announced_registry_gets_each_build_and_the_manifest_names_its_digest(
    up: Any,
    announce: Any,
    project: Path,
    registry: RunningRegistry,
    leftovers: Leftovers,
    kube_api: client.ApiClient,
    namespace: str,
) -> None:
    announce(host=registry.host, help="https://devloop.test/registry-help")
    devloop = up()
    selected = devloop.wait("delivery.selected")
    assert selected["rung"] == "registry" and f"host={registry.host}" in selected["reason"]
    devloop.wait("rollout.finished")
    repository = repository_in(registry.host, leftovers.image)
    first = deployed(kube_api, namespace)
    assert first.image.startswith(f"{repository}@sha256:")
    assert held(registry, first.image) == first.image.partition("@")[2]
    assert first.image_pull_policy != "Never"  # pushed: the cluster's default policy stays

    mark = devloop.mark()  # a manifest-only change: the image the registry holds is not pushed
    (project / "config" / "extra.yml").write_text(EXTRA.format(n=2))
    devloop.wait("apply.finished", after=mark)
    lines = pushed_lines(devloop, repository, mark)
    assert any("not pushed" in line for line in lines), lines
    assert not any("starting push" in line for line in lines)

    mark = devloop.mark()  # an edit: a new digest, and only the new layer is sent
    (project / "app" / "content.txt").write_text("v2\n")
    devloop.wait("build.finished", after=mark)
    devloop.wait("rollout.finished", after=mark)
    second = deployed(kube_api, namespace).image
    assert second != first.image and second.startswith(f"{repository}@sha256:")
    assert held(registry, second) is not None
    lines = pushed_lines(devloop, repository, mark)
    assert any("Layer already exists" in line for line in lines), lines
    assert len(devloop.named("delivery.selected")) == 1


def test_manifests_name_the_registry_as_the_cluster_runtime_sees_it(
    up: Any,
    announce: Any,
    registry: RunningRegistry,
    leftovers: Leftovers,
    kube_api: client.ApiClient,
    namespace: str,
) -> None:
    announce(host=registry.host, hostFromContainerRuntime="registry.devloop.test:5000")
    devloop = up()
    devloop.wait("rollout.finished")
    image = deployed(kube_api, namespace).image
    pushed_as = repository_in(registry.host, leftovers.image)
    assert image.startswith(repository_in("registry.devloop.test:5000", leftovers.image) + "@")
    assert held(registry, f"{pushed_as}@{image.partition('@')[2]}") is not None


def test_explicit_image_destinations_win_over_the_announced_registry(
    up: Any,
    announce: Any,
    project: Path,
    registry: RunningRegistry,
    leftovers: Leftovers,
    kube_api: client.ApiClient,
    namespace: str,
) -> None:
    announce(host="127.0.0.1:1")  # nothing listens there: a push to it would fail
    new_image = f"{registry.host}/explicit/{leftovers.token}"
    destinations = DESTINATIONS.format(image=leftovers.image, new_image=new_image)
    (project / "config" / "push.yml").write_text(destinations)
    devloop = up()
    devloop.wait("rollout.finished")
    assert deployed(kube_api, namespace).image.startswith(f"{new_image}@sha256:")
    assert devloop.named("delivery.selected") == []  # nothing was left to deliver


def test_on_kwok_the_built_tag_is_used_with_pull_policy_if_not_present(
    up: Any, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up()
    selected = devloop.wait("delivery.selected")
    assert selected["rung"] == "engine" and "kwok" in selected["reason"]
    ref = devloop.wait("build.finished")["ref"]
    devloop.wait("rollout.finished")
    container = deployed(kube_api, namespace)
    assert (container.image, container.image_pull_policy) == (ref, "IfNotPresent")


def test_a_cluster_with_no_way_in_is_one_error_before_anything_is_applied(
    up: Any, foreign_node: None, kube_api: client.ApiClient, namespace: str
) -> None:
    devloop = up()
    failed = devloop.wait("apply.failed")
    for fix in ("ImageDestinations", "--default-repo", "local-registry-hosting"):
        assert fix in failed["reason"]
    assert devloop.named("apply.finished") == [] and devloop.named("delivery.selected") == []
    deployments = client.AppsV1Api(kube_api).list_namespaced_deployment(namespace)
    assert deployments.items == []


def test_a_default_repo_is_pushed_to_with_escaped_names(
    up: Any, foreign_node: None, registry: RunningRegistry, leftovers: Leftovers,
    kube_api: client.ApiClient, namespace: str,
) -> None:  # fmt: skip
    devloop = up("--default-repo", f"{registry.host}/team")
    selected = devloop.wait("delivery.selected")
    assert selected["rung"] == "push"
    devloop.wait("rollout.finished")
    image = deployed(kube_api, namespace).image
    escaped = leftovers.image.replace("/", "_")
    assert image.startswith(f"{registry.host}/team/{escaped}@sha256:")
    assert held(registry, image) is not None


def test_resolve_with_a_default_repo_pushes_what_it_builds_there(
    project: Path, registry: RunningRegistry, leftovers: Leftovers
) -> None:
    argv = [sys.executable, "-m", "devloop.cli", "resolve", "-f", "config/app.yml"]
    done = subprocess.run(
        [*argv, "--default-repo", f"{registry.host}/ci"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    image = next(yaml.safe_load_all(done.stdout))["spec"]["template"]["spec"]["containers"][0]
    escaped = leftovers.image.replace("/", "_")
    assert image["image"].startswith(f"{registry.host}/ci/{escaped}@sha256:")
    assert held(registry, image["image"]) is not None


def test_resolve_without_a_default_repo_keeps_kbld_s_local_tag(project: Path) -> None:
    argv = [sys.executable, "-m", "devloop.cli", "resolve", "-f", "config/app.yml"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        argv, cwd=project, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "image: kbld:devloop-test-" in done.stdout
