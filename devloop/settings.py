"""Settings of `devloop up` and `devloop down`, settled once: flag > environment > file > default.

A project can keep its settings in a document of our own among its manifests, so that plain
`devloop up` needs no flags:

    apiVersion: devloop.dev/v1alpha1
    kind: Settings
    app: sample-app
    namespace: dev
    debounceMs: 80

Like kbld's config kinds, the document is removed from what is applied.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from devloop.errors import ConfigError
from devloop.kbld.model import SETTINGS_API_VERSION as SETTINGS_API_VERSION
from devloop.kbld.model import SETTINGS_KIND as SETTINGS_KIND
from devloop.kbld.model import is_settings_document as is_settings_document


@dataclass(frozen=True)
class Settings:
    files: tuple[str, ...] = ("config/",)  # -f: manifest files or directories
    render: str | None = None  # --render: a command whose stdout is the manifests
    render_inputs: tuple[str, ...] = ()  # paths the render command reads (watched)
    namespace: str | None = None  # default namespace for namespaced objects; None: the context's
    context: str | None = None  # kubeconfig context; None: the current one
    kubeconfig: str | None = None  # None: $KUBECONFIG or ~/.kube/config
    app: str = ""  # names the inventory and the label value; "" means the directory name
    build_concurrency: int = 4  # image builds running at once
    debounce_ms: int = 100  # quiet period after the last change before acting, milliseconds
    max_wait_ms: int = 2000  # cap on the wait from the first change of a burst, milliseconds
    rollout_timeout_s: float = 120.0  # deadline for a rollout, seconds
    cleanup: bool = False  # delete the applied resources on exit
    keep: bool = False  # docker target: leave the containers running on exit
    logs: bool = True  # stream the app's output (pod logs, container output)
    port_forward: bool = True  # kubernetes target: forward the app's ports to 127.0.0.1
    log_format: str = "console"  # console | json
    target: str = "auto"  # kubernetes | docker | auto
    builder: str | None = None  # a buildx builder name for every build; None: buildx's current
    delivery: str = "auto"  # how images reach the cluster: auto|registry|engine|load|push
    default_repo: str | None = None  # registry (and prefix) built images are pushed to, rung `push`

    @property
    def app_name(self) -> str:
        return self.app or _dns_label(Path.cwd().name)

    def resolved_target(self, environ: Mapping[str, str] | None = None) -> str:
        """`auto` becomes kubernetes when a kubeconfig exists, docker otherwise."""
        if self.target != "auto":
            return self.target
        env = os.environ if environ is None else environ
        if self.kubeconfig or self.context:
            return "kubernetes"
        paths = [*env.get("KUBECONFIG", "").split(os.pathsep), str(Path.home() / ".kube/config")]
        return "kubernetes" if any(p and Path(p).is_file() for p in paths) else "docker"


# camelCase document key -> field name, and the type each must have
_FILE_KEYS: Mapping[str, tuple[str, type | tuple[type, ...]]] = {
    "render": ("render", str),
    "renderInputs": ("render_inputs", list),
    "namespace": ("namespace", str),
    "context": ("context", str),
    "kubeconfig": ("kubeconfig", str),
    "app": ("app", str),
    "buildConcurrency": ("build_concurrency", int),
    "debounceMs": ("debounce_ms", int),
    "maxWaitMs": ("max_wait_ms", int),
    "rolloutTimeoutSeconds": ("rollout_timeout_s", (int, float)),
    "cleanup": ("cleanup", bool),
    "keep": ("keep", bool),
    "logs": ("logs", bool),
    "portForward": ("port_forward", bool),
    "logFormat": ("log_format", str),
    "target": ("target", str),
    "builder": ("builder", str),
    "delivery": ("delivery", str),
    "defaultRepo": ("default_repo", str),
}
_ENV_PREFIX = "DEVLOOP_"
DELIVERY_RUNGS = ("auto", "registry", "engine", "load", "push")


def from_document(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The settings a document sets, validated; unknown keys are errors naming the key."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("apiVersion", "kind", "metadata"):
            continue
        if key not in _FILE_KEYS:
            known = ", ".join(sorted(_FILE_KEYS))
            raise ConfigError(f"{where}: {key}", "unknown setting", f"Known settings: {known}")
        name, kind = _FILE_KEYS[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: {key}", f"expected {_type_name(kind)}, got {value!r}")
        values[name] = tuple(value) if isinstance(value, list) else value
    return values


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """DEVLOOP_NAMESPACE, DEVLOOP_DEBOUNCE_MS, ... (the field names, upper-cased)."""
    values: dict[str, Any] = {}
    for field in fields(Settings):
        raw = environ.get(_ENV_PREFIX + field.name.upper())
        if raw is None or field.name == "files":
            continue
        values[field.name] = _parse_env(field.name, raw)
    return values


def settle(
    flags: Mapping[str, Any],
    documents: Sequence[Mapping[str, Any]] = (),
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the layers: flags (non-None) over environment over file documents over defaults."""
    merged: dict[str, Any] = {}
    for document_values in documents:
        merged.update(document_values)
    merged.update(from_environment(os.environ if environ is None else environ))
    merged.update({k: v for k, v in flags.items() if v is not None})
    settings = replace(Settings(), **merged)
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    if settings.log_format not in ("console", "json"):
        raise ConfigError(
            "--log-format", f"unknown format {settings.log_format!r}", "Use console or json"
        )
    if settings.target not in ("auto", "kubernetes", "docker"):
        raise ConfigError(
            "--target", f"unknown target {settings.target!r}", "Use kubernetes or docker"
        )
    if settings.delivery not in DELIVERY_RUNGS:
        raise ConfigError(
            "--delivery",
            f"unknown delivery {settings.delivery!r}",
            "Use auto, registry, engine, load or push",
        )
    for name in ("build_concurrency", "debounce_ms", "max_wait_ms"):
        if getattr(settings, name) < (1 if name == "build_concurrency" else 0):
            raise ConfigError(f"--{name.replace('_', '-')}", "must not be negative or zero")


def _parse_env(name: str, raw: str) -> Any:
    default = getattr(Settings(), name)
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int | float):
            return type(default)(raw)
    except ValueError as error:
        raise ConfigError(f"{_ENV_PREFIX}{name.upper()}", f"not a number: {raw!r}") from error
    if isinstance(default, tuple):
        return tuple(part for part in raw.split(",") if part)
    return raw


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "list": "a list",
        }[k.__name__]
        for k in kinds
    )


def _dns_label(name: str) -> str:
    label = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return label[:63] or "app"
