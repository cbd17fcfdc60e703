"""Write the two lock files kbld writes, so a later run reproduces this run's references.

`--lock-output` is a kbld `Config` of preresolved overrides (plus the user's search rules, which
decide where the references are found); `--imgpkg-lock-output` is an imgpkg `ImagesLock` that
imgpkg can relocate. Both are read back by `config.load_config`. The output follows kbld's
(sigs.k8s.io/yaml) shape: keys sorted, lists not indented under their key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from devloop.kbld.config import (
    IMAGES_LOCK_KIND,
    KBLD_COMPAT_VERSION,
    LOCK_ID_ANNOTATION,
    LOCK_ORIGINS_ANNOTATION,
)
from devloop.kbld.model import (
    IMGPKG_API_VERSION,
    KBLD_API_VERSION,
    AllIndexes,
    Config,
    KeyMatcher,
    PathPart,
    Resolved,
    SearchRule,
)


def kbld_lock(resolved: Mapping[str, Resolved], config: Config) -> str:
    """A kbld `Config` lock: one preresolved override per original reference, sorted."""
    lock: dict[str, Any] = {
        "apiVersion": KBLD_API_VERSION,
        "kind": "Config",
        "minimumRequiredVersion": KBLD_COMPAT_VERSION,
    }
    overrides = [
        {"image": url, "newImage": resolved[url].url, "preresolved": True}
        for url in sorted(resolved)
    ]
    rules = [rule_to_yaml(rule) for rule in config.search_rules]
    # kbld leaves empty lists out (`omitempty`).
    if overrides:
        lock["overrides"] = overrides
    if rules:
        lock["searchRules"] = rules
    return dump_yaml(lock)


def imgpkg_lock(resolved: Mapping[str, Resolved], origins_annotation: bool) -> str:
    """An imgpkg `ImagesLock`; origins are left out when there are none or when not wanted."""
    images = [
        {"annotations": _lock_annotations(url, resolved[url], origins_annotation), "image": r.url}
        for url, r in sorted(resolved.items())
    ]
    lock = {"apiVersion": IMGPKG_API_VERSION, "images": images, "kind": IMAGES_LOCK_KIND}
    return "---\n" + dump_yaml(lock)


def _lock_annotations(url: str, resolved: Resolved, with_origins: bool) -> dict[str, str]:
    annotations = {LOCK_ID_ANNOTATION: url}
    if with_origins and resolved.origins:
        annotations[LOCK_ORIGINS_ANNOTATION] = dump_yaml(plain(list(resolved.origins)))
    return annotations


def rule_to_yaml(rule: SearchRule) -> dict[str, Any]:
    """`rule` in kbld's YAML shape; the default strategy (entireValue) is left out, as kbld does."""
    out: dict[str, Any] = {}
    if rule.key_matcher is not None:
        out["keyMatcher"] = _key_matcher_to_yaml(rule.key_matcher)
    if rule.value_matcher is not None:
        matcher = rule.value_matcher
        out["valueMatcher"] = _present(image=matcher.image, imageRepo=matcher.image_repo)
    if rule.strategy in ("json", "yaml"):
        nested = [rule_to_yaml(r) for r in rule.nested]
        out["updateStrategy"] = {rule.strategy: {"searchRules": nested} if nested else {}}
    elif rule.strategy == "none":
        out["updateStrategy"] = {"none": {}}
    return out


def _key_matcher_to_yaml(matcher: KeyMatcher) -> dict[str, Any]:
    if matcher.name is not None:
        return {"name": matcher.name}
    return {"path": [_path_part_to_yaml(part) for part in matcher.path or ()]}


def _path_part_to_yaml(part: PathPart) -> Any:
    if isinstance(part, AllIndexes):
        return {"allIndexes": True}
    if isinstance(part, int):
        return {"index": part}
    return part


def _present(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value}


def plain(value: Any) -> Any:
    """`value` with every Mapping a dict and every tuple a list, so the YAML dumper takes it."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (an origins annotation) as `|` blocks, as Go's YAML writes them."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(value: Any) -> str:
    """Block-style YAML with sorted keys and no line folding (references can be long)."""
    return yaml.dump(value, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=1 << 16)
