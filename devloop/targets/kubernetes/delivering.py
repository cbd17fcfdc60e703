"""The actions of the delivery rung `delivery.choose` took: push to a registry, or load into nodes.

`Delivery` is the target's step: it reads the evidence and chooses once per run (said as
`delivery.selected`), then runs the blocking `Deliverer` in a worker thread through
`blocking.call` on every deploy, and marks unpushed images `IfNotPresent` in what is applied. Only
images devloop built into the local engine (`kbld:` tags) are delivered: one a Destination pushed
already arrives as `<newImage>@sha256:...` and is left alone (explicit ImageDestinations win).

Pushes are cheap: each image is pushed under a tag made of its image ID, so one HEAD tells whether
the registry already holds it (then nothing is pushed, also after a restart), and a push sends
only the layers the registry lacks (the engine checks each blob first: "Layer already exists").
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from devloop import blocking
from devloop.errors import DeliveryError, RegistryError
from devloop.kbld.model import Resolved
from devloop.kbld.references import repository_in
from devloop.targets.base import ManifestObject
from devloop.targets.kubernetes.delivery import (
    HOSTING_NAME,
    HOSTING_NAMESPACE,
    Choice,
    Evidence,
    choose,
    pulled_as,
    with_pull_policy,
)

if TYPE_CHECKING:
    from devloop.events import Events
    from devloop.kbld.engine import Engine
    from devloop.kbld.registry import Registry
    from devloop.logs import LineSink
    from devloop.targets.kubernetes.applying import Cluster

LOCAL_PREFIX = "kbld:"  # what the lanes' builds are tagged; anything else is already somewhere
KIND_IMPORT = ["ctr", "--namespace=k8s.io", "images", "import", "--all-platforms", "--digests"]
K3D_IMPORT = ["ctr", "--namespace=k8s.io", "images", "import", "--all-platforms", "-"]
DEFAULT_SNAPSHOTTER = "overlayfs"
DELIVER_DEADLINE_S = 600.0  # pushing or loading every built image must finish within this


class Delivery:
    """The Kubernetes target's delivery step, for one run."""

    def __init__(
        self,
        events: Events,
        cluster_limiter: anyio.CapacityLimiter,
        delivery: str = "auto",
        default_repo: str | None = None,
    ) -> None:
        self._events, self._cluster_limiter = events, cluster_limiter
        self._delivery, self._default_repo = delivery, default_repo
        self._deliverer: Deliverer | None = None
        self._limiter = anyio.CapacityLimiter(1)  # one delivery at a time

    async def deliver(self, cluster: Cluster, built: Mapping[str, Resolved]) -> dict[str, Resolved]:
        """`built` with the local images delivered; no rung fitting raises DeliveryError."""
        local = {url: r for url, r in built.items() if r.url.startswith(LOCAL_PREFIX)}
        if not local:
            return dict(built)
        deliverer = await self._chosen(cluster)
        delivered = await blocking.call(
            deliverer.deliver,
            local,
            limiter=self._limiter,
            deadline_s=DELIVER_DEADLINE_S,
            what="delivering the images",
        )
        return {**built, **delivered}

    def close(self) -> None:
        if self._deliverer is not None:
            self._deliverer.close()
            self._deliverer = None

    def with_pull_policy(self, objects: Sequence[ManifestObject]) -> list[ManifestObject]:
        """IfNotPresent where unset, on containers of images delivered without a push."""
        local = frozenset(self._deliverer.local if self._deliverer else ())
        if not local:
            return list(objects)
        return [
            ManifestObject(with_pull_policy(copy.deepcopy(o.data), local), o.where) for o in objects
        ]

    async def _chosen(self, cluster: Cluster) -> Deliverer:
        if self._deliverer is None:
            evidence = await blocking.call(
                read_evidence, cluster, os.environ, limiter=self._cluster_limiter
            )
            choice = choose(evidence, self._delivery, self._default_repo)
            self._deliverer = await blocking.call(
                _deliverer, choice, self._events, limiter=self._limiter
            )
            self._events.emit("delivery.selected", rung=choice.rung, reason=choice.reason)
        return self._deliverer


def _deliverer(choice: Choice, events: Events) -> Deliverer:
    """The Deliverer of `choice`, with its own engine and registry clients (made in a thread:
    the first import of the docker SDK takes a while)."""
    from devloop.kbld.engine import Engine
    from devloop.kbld.registry import Registry

    return Deliverer(choice, events, Engine(), Registry())


@dataclass
class Deliverer:
    """Delivers built images the way `choice` says; remembers what it delivered this run."""

    choice: Choice
    out: LineSink
    engine: Engine
    registry: Registry
    local: set[str] = field(default_factory=set)  # refs the cluster uses unpushed
    _loaded: set[str] = field(default_factory=set)  # tags loaded into every node this run

    def deliver(self, built: Mapping[str, Resolved]) -> dict[str, Resolved]:
        delivered: dict[str, Resolved] = {}
        for url, result in sorted(built.items()):
            blocking.check()
            delivered[url] = self._one(url, result)
        return delivered

    def close(self) -> None:
        """Close the engine and registry connections kept for this run."""
        self.registry.close()
        self.engine.close()

    def _one(self, url: str, result: Resolved) -> Resolved:
        if not result.url.startswith(LOCAL_PREFIX):
            return result
        if self.choice.rung == "engine":
            self.local.add(result.url)
            return result
        if self.choice.rung == "load":
            self._load(result.url)
            self.local.add(result.url)
            return result
        return Resolved(self._push(url, result.url), result.origins)

    def _push(self, url: str, tag: str) -> str:
        from devloop.kbld.building import push_image

        repository = repository_in(self.choice.push_to, url)
        push_tag = tag.partition(":")[2]  # `<image>-sha256-<id>`: names the content
        try:
            held = self.registry.held(f"{repository}:{push_tag}")
            if held is not None:
                self.out.line(repository, f"already holds {push_tag}: not pushed")
                pushed = f"{repository}@{held}"
            else:
                pushed = push_image(self.engine, tag, repository, self.out, push_tag)
        except RegistryError as error:
            if self.choice.help:
                raise type(error)(f"{error}; see {self.choice.help}") from error
            raise
        return pulled_as(self.choice, pushed)

    def _load(self, tag: str) -> None:
        from devloop.kbld.building import load_image

        if tag in self._loaded:
            return
        for node in self.choice.nodes:
            command = self._import_command(node)
            self.out.line(tag, f"loading into node {node}: {' '.join(command)}")
            load_image(self.engine, tag, node, command, _stopped)
        self._loaded.add(tag)

    def _import_command(self, node: str) -> list[str]:
        if self.choice.product == "k3d":
            return K3D_IMPORT
        return [*KIND_IMPORT, f"--snapshotter={self._snapshotter(node)}", "-"]

    def _snapshotter(self, node: str) -> str:
        """The node's containerd snapshotter, as kind reads it (`crictl info`)."""
        from devloop.kbld.building import exec_output

        code, output = exec_output(self.engine, node, ["crictl", "info"])
        if code != 0:
            raise DeliveryError(f"cannot read node {node}'s containerd config: {output.strip()}")
        try:
            info = json.loads(output)
        except ValueError:
            return DEFAULT_SNAPSHOTTER
        return str(info.get("config", {}).get("containerd", {}).get("snapshotter") or "overlayfs")


def _stopped() -> bool:
    """The `cancelled` probe of a load: True once the deliver call was cancelled or ran late."""
    try:
        blocking.check()
    except Exception:  # its cancellation or DeadlineExceeded: either ends the stream here
        return True
    return False


def read_evidence(cluster: Cluster, environ: Mapping[str, str]) -> Evidence:
    """What the ladder looks at, from the cluster: its nodes and the KEP-1755 ConfigMap."""
    nodes = cluster.request("GET", "/api/v1/nodes")
    path = f"/api/v1/namespaces/{HOSTING_NAMESPACE}/configmaps/{HOSTING_NAME}"
    hosting = cluster.request("GET", path)
    return Evidence(
        cluster.context,
        nodes.body.get("items", []) if nodes.status == 200 else [],
        hosting.body if hosting.status == 200 else None,  # 404 (or not allowed): none announced
        dict(environ),
    )
