"""Server-side apply of rendered manifests, with an inventory so removed objects are pruned.

This is the only module that imports `kubernetes`; everything else gets plain dicts and small
values. It talks raw REST through the client's `ApiClient` (auth, TLS, kubeconfig) and resolves
kinds to resources with its own per-group-version discovery cache, which costs one request per
group-version instead of the dynamic client's full discovery sweep.

Each object gets the label `devloop.dev/app` and a content hash annotation, and is sent only when
its rendered content changed (checked against the previous apply in memory, or against the live
object's annotation after a restart). The set of applied objects is recorded in the ConfigMap
`devloop-inventory-<app>` so pruning and `devloop down` work after a crash (skaffold#2690).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devloop import blocking
from devloop.errors import ApplyError, ClusterUnavailable, InputError, trimmed
from devloop.targets.base import APP_LABEL, ManifestObject
from devloop.targets.kubernetes.rollout import WORKLOAD_KINDS, Workload

INVENTORY_LABEL = "devloop.dev/inventory"  # not APP_LABEL: pruning must never see the inventory
HASH_ANNOTATION = "devloop.dev/content-hash"
FIELD_MANAGER = "devloop"
APPLY_PATCH = "application/apply-patch+yaml"
REQUEST_TIMEOUT = (3.0, 30.0)  # connect, read; seconds
PING_TIMEOUT = (2.0, 5.0)  # connect, read; seconds
DISCOVERY_WAIT_S = 10.0  # how long a just-applied CRD may take to show up in discovery
SERVER_MESSAGE_CHARS = 400

# Apply order: what others depend on goes first; pruning runs in the reverse order.
_ORDER = {
    "Namespace": 0,
    "CustomResourceDefinition": 1,
    **dict.fromkeys(
        ("ClusterRole", "ClusterRoleBinding", "StorageClass", "PriorityClass", "IngressClass"), 2
    ),
    "PersistentVolume": 2,
    "ServiceAccount": 3,
    **dict.fromkeys(("Role", "RoleBinding"), 4),
    **dict.fromkeys(("ConfigMap", "Secret"), 5),
    "PersistentVolumeClaim": 6,
    "Service": 7,
    **dict.fromkeys(("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"), 8),
    "Pod": 8,
}


def rank(kind: str) -> int:
    return _ORDER.get(kind, 9)


ObjectKey = Workload  # the identity of an applied object is the same four fields


@dataclass(frozen=True)
class Inventory:
    """What one app has applied: object -> content hash ("" when read back from the cluster)."""

    app: str
    namespace: str  # where the inventory ConfigMap lives
    objects: Mapping[ObjectKey, str] = field(default_factory=dict)
    kinds: frozenset[tuple[str, str]] = frozenset()  # (apiVersion, kind) ever applied
    from_memory: bool = False  # False: read back after a restart, so check live objects too


@dataclass(frozen=True)
class Outcome:
    key: ObjectKey
    action: str  # created | configured | unchanged | pruned
    seconds: float


@dataclass(frozen=True)
class ApplyResult:
    outcomes: tuple[Outcome, ...]
    inventory: Inventory

    def counts(self) -> dict[str, int]:
        counted = Counter(o.action for o in self.outcomes)
        return {a: counted[a] for a in ("created", "configured", "unchanged", "pruned")}

    def changed_workloads(self) -> list[Workload]:
        return [
            o.key
            for o in self.outcomes
            if o.action in ("created", "configured") and o.key.kind in WORKLOAD_KINDS
        ]


# -- the connection ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """A kind as the API serves it: the plural path segment and whether it is namespaced."""

    plural: str
    namespaced: bool


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]

    def message(self) -> str:
        """The server's message, trimmed: ``Deployment.apps "x" is invalid: a: b`` -> ``a: b``."""
        text = str(self.body.get("message") or f"HTTP {self.status}")
        _, marker, rest = text.partition(" is invalid: ")
        text = rest if marker else text
        return trimmed(text, SERVER_MESSAGE_CHARS)


class Cluster:
    """One kubeconfig context: a blocking REST client with timeouts and a discovery cache."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        self.api, self.namespace, self.context = _client(kubeconfig, context)
        self.server: str = self.api.configuration.host
        self.requests: Counter[str] = Counter()  # method -> count; diagnostics and tests
        self._discovery: dict[str, dict[str, Resource]] = {}

    def ping(self) -> None:
        """Raise ClusterUnavailable unless the API server answers /readyz quickly."""
        reply = self.request("GET", "/readyz", timeout=PING_TIMEOUT)
        if reply.status != 200:
            raise ClusterUnavailable(
                f"the Kubernetes API at {self.server} is not ready ({reply.message()}); "
                "devloop will retry"
            )

    def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Reply:
        """One call; connection failures and overload become ClusterUnavailable."""
        from kubernetes.client.exceptions import ApiException  # status 0: TLS failure
        from urllib3.exceptions import HTTPError

        blocking.check()  # the caller's deadline or cancellation ends a long apply here
        self.requests[method] += 1
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            call = self.api.param_serialize(
                method, path, query_params=list(query), header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )  # fmt: skip
            response = self.api.call_api(*call, _request_timeout=timeout)
            raw = response.read()
        except (HTTPError, OSError, ApiException) as error:
            raise ClusterUnavailable(_unreachable(self.server, error)) from error
        if response.status in (429, 502, 503, 504):
            raise ClusterUnavailable(
                f"the Kubernetes API at {self.server} is overloaded or restarting "
                f"(HTTP {response.status}); devloop will retry"
            )
        return Reply(response.status, _json(raw))

    def resource(self, api_version: str, kind: str) -> Resource | None:
        """The resource serving `kind` in `api_version`, from a cache filled per group-version."""
        if api_version not in self._discovery:
            prefix = "/api/" if "/" not in api_version else "/apis/"
            reply = self.request("GET", prefix + api_version)
            listed = reply.body.get("resources", []) if reply.status == 200 else []
            self._discovery[api_version] = {
                r["kind"]: Resource(r["name"], bool(r.get("namespaced")))
                for r in listed
                if "/" not in r["name"]  # subresources such as deployments/status
            }
        return self._discovery[api_version].get(kind)

    def forget(self, api_version: str) -> None:
        """Drop a group-version from the discovery cache (a CRD may have just added a kind)."""
        self._discovery.pop(api_version, None)

    def path(self, api_version: str, kind: str, namespace: str = "", name: str = "") -> str:
        """The REST path of a kind (all namespaces when `namespace` is ""), or of one object."""
        resource = self.resource(api_version, kind)
        if resource is None:
            raise LookupError(kind)
        base = ("/api/" if "/" not in api_version else "/apis/") + api_version
        if resource.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{resource.plural}"
        return f"{base}/{name}" if name else base

    # The rollout.Reader protocol.
    def get_object(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        reply = self.request("GET", self.path(api_version, kind, namespace, name))
        return reply.body if reply.status == 200 else None

    def list_objects(
        self, api_version: str, kind: str, namespace: str, selector: str
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        reply = self.request("GET", self.path(api_version, kind, namespace), query)
        items: list[dict[str, Any]] = reply.body.get("items", []) if reply.status == 200 else []
        return items


def _client(kubeconfig: str | None, context: str | None) -> tuple[Any, str, str]:
    """An ApiClient for the context, the context's default namespace and its name."""
    from kubernetes import client
    from kubernetes import config as kube_config

    config: Any = kube_config  # its loaders are untyped
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    configuration = client.Configuration()
    configuration.retries = 1  # one quick reconnect; the daemon retries the whole step
    if not any(os.path.isfile(part) for part in path.split(os.pathsep)):
        hint = "Pass --kubeconfig or set KUBECONFIG"
        raise InputError(f"kubeconfig {path}", "no such file", hint)
    try:
        config.load_kube_config(path, context, client_configuration=configuration)
        contexts, active = config.list_kube_config_contexts(path)
    except Exception as error:  # the loaders are untyped: garbage fails in many shapes
        raise InputError(
            f"kubeconfig {path}", _kubeconfig_problem(error), "Pass --kubeconfig or set KUBECONFIG"
        ) from error
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
    return client.ApiClient(configuration), namespace, str((chosen or {}).get("name") or "")


def _kubeconfig_problem(error: Exception) -> str:
    """What is wrong with a kubeconfig, from whatever the kubernetes loaders raised."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"not YAML: {error.problem} at line {mark.line + 1} column {mark.column + 1}"
    if isinstance(error, yaml.YAMLError):
        return f"not YAML: {error}"
    if isinstance(error, TypeError | AttributeError | KeyError | IndexError):
        return "not a kubeconfig (a YAML mapping with clusters, contexts and users)"
    return f"cannot use it: {str(error).rstrip('.')}"


def _unreachable(server: str, error: Exception) -> str:
    text = str(error)
    for needle, short in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Name or service not known", "unknown host"),
        ("CERTIFICATE_VERIFY_FAILED", "its TLS certificate is not trusted"),
    ):
        if needle in text:
            text = short
            break
    return f"cannot reach the Kubernetes API at {server}: {trimmed(text, 200)}; devloop will retry"


def _json(raw: bytes | None) -> dict[str, Any]:
    try:
        decoded = json.loads(raw or b"{}")
    except ValueError:
        return {"message": (raw or b"").decode(errors="replace")}
    return decoded if isinstance(decoded, dict) else {}


# -- applying ------------------------------------------------------------------------------------


def apply_objects(
    cluster: Cluster,
    objects: Sequence[ManifestObject],
    app: str,
    namespace: str | None,
    previous: Inventory | None,
) -> ApplyResult:
    """Server-side apply what changed since `previous`, prune what is gone, record the inventory.

    `previous` is the inventory of the last apply in this process; None (or another app's) reads
    it back from the cluster, and then live objects are compared and scanned as well.
    """
    ns = namespace or cluster.namespace
    for obj in objects:
        _check_shape(obj)
    before = previous
    if before is None or (before.app, before.namespace) != (app, ns):
        before = read_inventory(cluster, app, ns)
    kinds = before.kinds | {(o.data["apiVersion"], o.data["kind"]) for o in objects}
    applier = _Applier(cluster, app, ns, before)
    ordered = sorted(objects, key=lambda o: rank(o.data["kind"]))
    first = [o for o in ordered if o.data["kind"] == "Namespace"]
    outcomes = [applier.apply(o) for o in first]
    if kinds != before.kinds:  # record new kinds before creating anything we might lose track of
        write_inventory(cluster, Inventory(app, ns, before.objects, kinds))
    outcomes += [applier.apply(o) for o in ordered if o.data["kind"] != "Namespace"]
    outcomes += _prune(cluster, app, before, set(applier.applied), kinds)
    after = Inventory(app, ns, applier.applied, kinds, from_memory=True)
    if set(after.objects) != set(before.objects) or not before.from_memory:
        write_inventory(cluster, after)
    return ApplyResult(tuple(outcomes), after)


def _check_shape(obj: ManifestObject) -> None:
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.data.get(key), str) or not obj.data[key]:
            raise ApplyError(f"{obj.where}: {key}: missing; every manifest needs it")
    name = (obj.data.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise ApplyError(f"{obj.where}: metadata.name: missing; devloop applies named objects only")


def content_hash(body: Mapping[str, Any]) -> str:
    """A digest of the rendered object (before the hash annotation is added)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Applier:
    """Applies objects one by one, remembering each one's key and content hash."""

    def __init__(self, cluster: Cluster, app: str, namespace: str, before: Inventory) -> None:
        self.cluster, self.app, self.namespace, self.before = cluster, app, namespace, before
        self.applied: dict[ObjectKey, str] = {}
        self._where: dict[ObjectKey, str] = {}
        self._crds_applied = False

    def apply(self, obj: ManifestObject) -> Outcome:
        started = time.perf_counter()
        key, body, digest = self._prepare(obj)
        if key in self._where:
            raise ApplyError(
                f"{obj.where}: {key}: also defined in {self._where[key]}; remove one of them"
            )
        self._where[key], self.applied[key] = obj.where, digest
        self._crds_applied |= key.kind == "CustomResourceDefinition"
        if self._unchanged(key, digest):
            return Outcome(key, "unchanged", time.perf_counter() - started)
        action = self._send(obj.where, key, body)
        return Outcome(key, action, time.perf_counter() - started)

    def _prepare(self, obj: ManifestObject) -> tuple[ObjectKey, dict[str, Any], str]:
        """The body to send: labelled, namespaced if the kind is, with its content hash."""
        body = copy.deepcopy(obj.data)
        meta = body["metadata"]
        if self._resource(obj).namespaced:
            meta["namespace"] = meta.get("namespace") or self.namespace
        else:
            meta.pop("namespace", None)
        meta["labels"] = {**(meta.get("labels") or {}), APP_LABEL: self.app}
        digest = content_hash(body)
        meta["annotations"] = {**(meta.get("annotations") or {}), HASH_ANNOTATION: digest}
        key = ObjectKey(body["apiVersion"], body["kind"], meta.get("namespace", ""), meta["name"])
        return key, body, digest

    def _resource(self, obj: ManifestObject) -> Resource:
        version, kind = obj.data["apiVersion"], obj.data["kind"]
        resource = self.cluster.resource(version, kind)
        deadline = time.monotonic() + (DISCOVERY_WAIT_S if self._crds_applied else 0.0)
        while resource is None:
            self.cluster.forget(version)
            resource = self.cluster.resource(version, kind)
            if resource is None and time.monotonic() >= deadline:
                raise ApplyError(
                    f"{obj.where}: {kind}/{obj.data['metadata']['name']}: the cluster does not "
                    f"serve kind {kind} in {version}. Check the apiVersion, or apply its "
                    "CustomResourceDefinition first"
                )
            if resource is None:
                time.sleep(0.2)  # a just-created CRD becomes Established within a second or so
        return resource

    def _unchanged(self, key: ObjectKey, digest: str) -> bool:
        if self.before.from_memory:
            return self.before.objects.get(key) == digest
        # After a restart the live object's annotation says what was last applied.
        live = self.cluster.get_object(key.api_version, key.kind, key.namespace, key.name)
        annotations = ((live or {}).get("metadata") or {}).get("annotations") or {}
        return bool(annotations.get(HASH_ANNOTATION) == digest)

    def _send(self, where: str, key: ObjectKey, body: dict[str, Any]) -> str:
        reply = self.cluster.request(
            "PATCH",
            self.cluster.path(key.api_version, key.kind, key.namespace, key.name),
            [("fieldManager", FIELD_MANAGER), ("force", "true")],
            body,
            APPLY_PATCH,
        )
        if reply.status >= 300:
            raise ApplyError(
                f"{where}: {key}: the API server rejected it: {reply.message()}"
                + _immutable_hint(key, reply)
            )
        return "created" if reply.status == 201 else "configured"


def _immutable_hint(key: ObjectKey, reply: Reply) -> str:
    if "field is immutable" not in reply.message():
        return ""
    scope = f" -n {key.namespace}" if key.namespace else ""
    return (
        f". This field cannot change on a live object: delete it "
        f"(kubectl delete {key.kind.lower()} {key.name}{scope}) and devloop will recreate it"
    )


# -- pruning and deleting ------------------------------------------------------------------------


def _prune(
    cluster: Cluster,
    app: str,
    before: Inventory,
    applied: set[ObjectKey],
    kinds: frozenset[tuple[str, str]],
) -> list[Outcome]:
    stale = set(before.objects) - applied
    if not before.from_memory:  # objects applied before a crash may be missing from the record
        namespaces = {k.namespace for k in (*before.objects, *applied)} | {before.namespace}
        stale |= labelled(cluster, app, kinds, namespaces) - applied
    return _delete_all(cluster, stale)


def _delete_all(cluster: Cluster, keys: Iterable[ObjectKey]) -> list[Outcome]:
    """Delete in reverse apply order (workloads before their Namespace); skip the already gone."""
    ordered = sorted(keys, key=lambda key: (rank(key.kind), key), reverse=True)
    return [o for o in (delete_object(cluster, k) for k in ordered) if o is not None]


def labelled(
    cluster: Cluster, app: str, kinds: Iterable[tuple[str, str]], namespaces: set[str]
) -> set[ObjectKey]:
    """Live objects of `kinds` carrying the app label, in `namespaces` or cluster-scoped."""
    found: set[ObjectKey] = set()
    for version, kind in kinds:
        if cluster.resource(version, kind) is None:
            continue  # e.g. its CRD is gone, and with it every object of the kind
        for item in cluster.list_objects(version, kind, "", f"{APP_LABEL}={app}"):
            meta = item["metadata"]
            key = ObjectKey(version, kind, meta.get("namespace", ""), meta["name"])
            if key.namespace in namespaces or not key.namespace:
                found.add(key)
    return found


def delete_object(cluster: Cluster, key: ObjectKey) -> Outcome | None:
    """Delete one object (pods of a workload go in the background); None if it was not there."""
    started = time.perf_counter()
    if cluster.resource(key.api_version, key.kind) is None:
        return None
    path = cluster.path(key.api_version, key.kind, key.namespace, key.name)
    reply = cluster.request("DELETE", path, [("propagationPolicy", "Background")])
    if reply.status == 404:
        return None
    if reply.status >= 300:
        raise ApplyError(f"{key}: deleting it failed: {reply.message()}")
    return Outcome(key, "pruned", time.perf_counter() - started)


def delete_app(cluster: Cluster, app: str, namespace: str | None) -> list[str]:
    """`devloop down`: delete everything the app applied, then its inventory; returns Kind/name."""
    inventory = read_inventory(cluster, app, namespace or cluster.namespace)
    namespaces = {k.namespace for k in inventory.objects} | {inventory.namespace}
    keys = set(inventory.objects) | labelled(cluster, app, inventory.kinds, namespaces)
    deleted = [str(o.key) for o in _delete_all(cluster, keys)]
    delete_object(cluster, _inventory_key(app, inventory.namespace))
    return deleted


# -- the inventory ConfigMap ---------------------------------------------------------------------


def _inventory_key(app: str, namespace: str) -> ObjectKey:
    return ObjectKey("v1", "ConfigMap", namespace, f"devloop-inventory-{app}")


def read_inventory(cluster: Cluster, app: str, namespace: str) -> Inventory:
    """The recorded inventory, or an empty one; hashes are unknown ("") after a read-back."""
    key = _inventory_key(app, namespace)
    found = cluster.get_object(key.api_version, key.kind, key.namespace, key.name)
    data = (found or {}).get("data") or {}
    try:
        objects = {ObjectKey(*o): "" for o in json.loads(data.get("objects", "[]"))}
        kinds = frozenset((v, k) for v, k in json.loads(data.get("kinds", "[]")))
    except (TypeError, ValueError):
        objects, kinds = {}, frozenset()  # a hand-edited record: the live label scan still works
    return Inventory(app, namespace, objects, kinds)


def write_inventory(cluster: Cluster, inventory: Inventory) -> None:
    key = _inventory_key(inventory.app, inventory.namespace)
    objects = sorted([k.api_version, k.kind, k.namespace, k.name] for k in inventory.objects)
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": key.name, "namespace": key.namespace,
                     "labels": {INVENTORY_LABEL: inventory.app}},
        "data": {"objects": json.dumps(objects), "kinds": json.dumps(sorted(inventory.kinds))},
    }  # fmt: skip
    path = cluster.path(key.api_version, key.kind, key.namespace, key.name)
    query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
    reply = cluster.request("PATCH", path, query, body, APPLY_PATCH)
    if reply.status == 404:
        raise ApplyError(
            f"namespace {key.namespace} does not exist: create it or add a Namespace document "
            f"(devloop records what it applied in the ConfigMap {key.name} there)"
        )
    if reply.status >= 300:
        raise ApplyError(f"ConfigMap/{key.name}: recording the inventory failed: {reply.message()}")
