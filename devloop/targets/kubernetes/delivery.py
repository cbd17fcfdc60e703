"""How an image built on this machine reaches the cluster: decided once, said once.

kbld builds into the local Docker engine and leaves the cluster to pull `kbld:...`, which ends in
ErrImagePull unless the cluster happens to share that engine. Skaffold and Tilt instead pick a way
on their own; devloop does the same with a fixed ladder, tried in order, and says which rung it
took and why (`delivery.selected`):

1. `registry`: the cluster announces a local registry (KEP-1755, the ConfigMap
   kube-public/local-registry-hosting): push to its `host`, reference `hostFromContainerRuntime`
   (else `host`) plus the digest the registry holds.
2. `engine`: the cluster's runtime is this Docker engine (Docker Desktop, Rancher Desktop, Colima,
   OrbStack; minikube through `minikube docker-env`), or its nodes are kwok fakes that pull
   nothing: the `kbld:` tag is used as built.
3. `load`: kind or k3d: the image archive is streamed into each node's containerd.
4. `push`: a `defaultRepo` is set: push there, names escaped as Tilt does.

None fitting is one error before anything is applied. Explicit ImageDestinations are not this
module's business: a pushed image arrives here already as `<newImage>@sha256:...`.

Everything here is pure, over the kubeconfig context name, the node objects, the ConfigMap and
the environment, so each product is tested with recorded objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from devloop.errors import DeliveryError

Rung = Literal["registry", "engine", "load", "push"]
HOSTING_NAMESPACE, HOSTING_NAME = "kube-public", "local-registry-hosting"
HOSTING_KEY = "localRegistryHosting.v1"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
MINIKUBE_LABEL = "minikube.k8s.io/name"
# Products whose Kubernetes runs on this machine's Docker engine (when their runtime is docker).
ENGINE_PRODUCTS = ("docker-desktop", "rancher-desktop", "colima", "orbstack")


@dataclass(frozen=True)
class Hosting:
    """A KEP-1755 `localRegistryHosting.v1`: where to push, and the name the runtime pulls."""

    host: str
    host_from_runtime: str = ""
    help: str = ""

    @property
    def pull_host(self) -> str:
        return self.host_from_runtime or self.host


@dataclass(frozen=True)
class Evidence:
    """What the ladder looks at, read from the cluster and the environment."""

    context: str  # the kubeconfig context's name
    nodes: Sequence[Mapping[str, Any]] = ()  # the Node objects
    hosting: Mapping[str, Any] | None = None  # the ConfigMap, None when it does not exist
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    """The rung taken, why, and what its action needs."""

    rung: Rung
    reason: str
    push_to: str = ""  # registry or repository pushed to (registry, push)
    pull_from: str = ""  # the same as the cluster's runtime names it
    help: str = ""  # shown when a push fails
    product: str = ""  # kind | k3d for `load`
    nodes: tuple[str, ...] = ()  # the node containers to load into


def parse_hosting(configmap: Mapping[str, Any] | None) -> Hosting | None:
    """The announced registry, or None; a ConfigMap that announces nothing usable is an error."""
    if configmap is None:
        return None
    where = f"ConfigMap {HOSTING_NAMESPACE}/{HOSTING_NAME}"
    raw = (configmap.get("data") or {}).get(HOSTING_KEY)
    if raw is None:
        raise DeliveryError(f"{where} has no key {HOSTING_KEY}; fix or delete it")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise DeliveryError(f"{where}: {HOSTING_KEY} is not YAML: {error}") from error
    if not isinstance(value, dict) or not isinstance(value.get("host"), str) or not value["host"]:
        raise DeliveryError(f"{where}: {HOSTING_KEY} names no host; fix or delete it")
    return Hosting(
        value["host"],
        str(value.get("hostFromContainerRuntime") or ""),
        str(value.get("help") or ""),
    )


def product(context: str, nodes: Sequence[Mapping[str, Any]]) -> str:
    """kind, k3d, minikube, docker-desktop, rancher-desktop, colima, orbstack, kwok, or ""."""
    provider_ids = [str(_get(n, "spec", "providerID") or "") for n in nodes]
    names = [str(_get(n, "metadata", "name") or "") for n in nodes]
    labels = [_get(n, "metadata", "labels") or {} for n in nodes]
    annotations = [_get(n, "metadata", "annotations") or {} for n in nodes]
    if nodes and all(a.get(KWOK_ANNOTATION) == "fake" for a in annotations):
        return "kwok"
    if context.startswith("kind-") or context.endswith("@kind"):
        return "kind"
    if any(p.startswith("kind://") for p in provider_ids):
        return "kind"
    if context.startswith("k3d-") or any(
        p.startswith("k3s://k3d-") or n.startswith("k3d-")
        for p, n in zip(provider_ids, names, strict=True)
    ):
        return "k3d"
    if context == "minikube" or any(MINIKUBE_LABEL in label for label in labels):
        return "minikube"
    if context in ("docker-desktop", "docker-for-desktop") or "docker-desktop" in names:
        return "docker-desktop"
    for name in ("rancher-desktop", "colima", "orbstack"):
        if context == name or context.startswith(f"{name}-") or name in names:
            return name
    return ""


def choose(evidence: Evidence, delivery: str = "auto", default_repo: str | None = None) -> Choice:
    """The first rung that fits (or the one `delivery` names); DeliveryError when none does."""
    found = product(evidence.context, evidence.nodes)
    rungs: dict[str, Callable[[], Choice | None]] = {
        "registry": lambda: _registry(evidence),
        "engine": lambda: _engine(evidence, found, forced=delivery == "engine"),
        "load": lambda: _load(evidence, found),
        "push": lambda: _push(default_repo),
    }
    if delivery != "auto":
        choice = rungs[delivery]()
        if choice is None:
            raise DeliveryError(f"--delivery {delivery}: {_why_not(delivery, evidence, found)}")
        return choice
    for rung in rungs.values():
        if (choice := rung()) is not None:
            return choice
    raise DeliveryError(_no_rung(evidence.context, found))


def _registry(evidence: Evidence) -> Choice | None:
    hosting = parse_hosting(evidence.hosting)
    if hosting is None:
        return None
    seen = f"host={hosting.host}"
    if hosting.host_from_runtime:
        seen += f", hostFromContainerRuntime={hosting.host_from_runtime}"
    reason = f"ConfigMap {HOSTING_NAMESPACE}/{HOSTING_NAME} announces a registry: {seen}"
    return Choice("registry", reason, hosting.host, hosting.pull_host, hosting.help)


def _engine(evidence: Evidence, found: str, forced: bool = False) -> Choice | None:
    if found == "kwok":
        return Choice("engine", "the nodes are kwok fakes: nothing pulls, the kbld: tag is used")
    if forced:
        return Choice("engine", "--delivery engine: the kbld: tag is used as built")
    docker = _runtime_is_docker(evidence.nodes)
    env = evidence.environ
    if found == "minikube" and docker:
        profile = _minikube_profile(evidence)
        if env.get("MINIKUBE_ACTIVE_DOCKERD") == profile:
            return Choice("engine", f"DOCKER_HOST is minikube {profile}'s engine (docker-env)")
        return None
    if found in ENGINE_PRODUCTS and docker and _default_engine(env):
        return Choice("engine", f"{found} runs its pods on this Docker engine")
    return None


def _load(evidence: Evidence, found: str) -> Choice | None:
    if found not in ("kind", "k3d"):
        return None
    nodes = tuple(sorted(str(_get(n, "metadata", "name")) for n in evidence.nodes))
    if not nodes:
        return None
    how = "kind load docker-image" if found == "kind" else "k3d image import"
    reason = (
        f"{found} without a local registry: images are loaded into {len(nodes)} node(s) "
        f"as `{how}` does"
    )
    return Choice("load", reason, product=found, nodes=nodes)


def _push(default_repo: str | None) -> Choice | None:
    if not default_repo:
        return None
    repo = default_repo.rstrip("/")
    return Choice("push", f"defaultRepo is set: images are pushed to {repo}", repo, repo)


def _why_not(delivery: str, evidence: Evidence, found: str) -> str:
    return {
        "registry": f"the cluster has no ConfigMap {HOSTING_NAMESPACE}/{HOSTING_NAME}",
        "engine": "",
        "load": f"context {evidence.context!r} is not a kind or k3d cluster ({found or 'unknown'})",
        "push": "no defaultRepo is set; pass --default-repo REGISTRY/PREFIX",
    }[delivery]


def _no_rung(context: str, found: str) -> str:
    what = f" ({found})" if found else ""
    return (
        f"cannot get the images devloop builds into the cluster of context {context!r}{what}: "
        f"it announces no local registry, its runtime is not this Docker engine and it is not "
        f"kind or k3d. Fix one of: an ImageDestinations document (kbld.k14s.io/v1alpha1) naming "
        f"a registry for each built image; --default-repo REGISTRY/PREFIX (defaultRepo in the "
        f"Settings document) for a registry the cluster pulls from; or a local registry announced "
        f"in the ConfigMap {HOSTING_NAMESPACE}/{HOSTING_NAME} (KEP-1755)"
    )


def _runtime_is_docker(nodes: Sequence[Mapping[str, Any]]) -> bool:
    runtimes = [str(_get(n, "status", "nodeInfo", "containerRuntimeVersion") or "") for n in nodes]
    return bool(runtimes) and all(r.startswith("docker://") for r in runtimes)


def _minikube_profile(evidence: Evidence) -> str:
    for node in evidence.nodes:
        name = (_get(node, "metadata", "labels") or {}).get(MINIKUBE_LABEL)
        if name:
            return str(name)
    return evidence.context


def _default_engine(environ: Mapping[str, str]) -> bool:
    """Whether DOCKER_HOST is unset or a local socket (the products' own sockets included)."""
    host = environ.get("DOCKER_HOST", "")
    return not host or host.startswith("unix://") or host.startswith("npipe://")


def _get(obj: Mapping[str, Any], *keys: str) -> Any:
    value: Any = obj
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


# -- names ---------------------------------------------------------------------------------------
def pulled_as(choice: Choice, pushed: str) -> str:
    """The reference the cluster's runtime pulls for `pushed` (`<push_to>/...@sha256:...`)."""
    if (
        choice.pull_from
        and choice.pull_from != choice.push_to
        and pushed.startswith(choice.push_to)
    ):
        return choice.pull_from + pushed[len(choice.push_to) :]
    return pushed


# -- pull policy ---------------------------------------------------------------------------------
POD_SPECS = {
    "Pod": ("spec",),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
TEMPLATE_KINDS = (
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "ReplicationController",
)


def with_pull_policy(data: dict[str, Any], local: frozenset[str]) -> dict[str, Any]:
    """`data` with `imagePullPolicy: IfNotPresent` on containers running a `local` image that
    leave it unset (never `Never`: skaffold#9687). Changes `data` in place and returns it."""
    path = POD_SPECS.get(str(data.get("kind")))
    if path is None and data.get("kind") in TEMPLATE_KINDS:
        path = ("spec", "template", "spec")
    spec = _get(data, *path) if path else None
    if not isinstance(spec, dict):
        return data
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            if isinstance(container, dict) and container.get("image") in local:
                container.setdefault("imagePullPolicy", "IfNotPresent")
    return data
