"""Read kbld config documents (and imgpkg ImagesLock files) out of the input stream.

kbld takes its configuration from the same YAML stream as the manifests, so the loader splits the
documents: config goes into one typed `Config`, everything else passes through untouched.
All five kbld kinds share one schema, as in kbld. Unlike kbld (whose JSON decoding silently
drops unknown fields and matches keys case-insensitively), devloop matches keys exactly and
warns about every key it does not know, so a typo such as `noCahce` is seen instead of ignored.
Source paths are checked only when a source is used (`check_source_path`), as kbld does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, get_args

from devloop.errors import ConfigError, ManifestError
from devloop.kbld.documents import parse_embedded
from devloop.kbld.model import (
    IMGPKG_API_VERSION,
    KBLD_API_VERSION,
    KBLD_KINDS,
    AllIndexes,
    Config,
    Destination,
    DockerBuild,
    ImageRef,
    KeyMatcher,
    Origin,
    Override,
    PathPart,
    SearchRule,
    Source,
    Strategy,
    ValueMatcher,
)
from devloop.kbld.schema import Reader, join, kind_of

# The kbld release whose config and output formats devloop implements. `minimumRequiredVersion`
# is compared with this (not with devloop's own version), and lock files carry it.
KBLD_COMPAT_VERSION = "0.45.0"
KBLD_GROUP = KBLD_API_VERSION.split("/")[0]
IMAGES_LOCK_KIND = "ImagesLock"
LOCK_ID_ANNOTATION = "kbld.carvel.dev/id"
LOCK_ORIGINS_ANNOTATION = "kbld.carvel.dev/origins"
ORIGIN_TYPES = ("local", "git", "resolved", "tagged", "preresolved", "platformSelected")

# `metadata` is not a kbld field, but ytt overlays and kapp tooling often add it: accept it quietly.
_TOP_KEYS = (
    *("apiVersion", "kind", "metadata", "minimumRequiredVersion"),
    *("sources", "overrides", "destinations", "keys", "searchRules"),
)
_SOURCE_KEYS = ("image", "imageRepo", "path", "docker")
_OTHER_BUILDERS = ("pack", "kubectlBuildkit", "ko", "bazel", "buildah", "jib")
_BUILD_KEYS = ("file", "target", "pull", "noCache", "buildArgs", "platform", "rawOptions")
_BUILD_KEYS_ALL = (*_BUILD_KEYS, "buildkit")
_OVERRIDE_KEYS = ("image", "imageRepo", "newImage", "preresolved", "origins")
_NOT_YET = {
    "tagSelection": "Pin the tag in newImage instead",
    "platformSelection": "Remove it: devloop uses the image as resolved by the registry",
}
_STRATEGY_NAMES: dict[str, Strategy] = {s: s for s in get_args(Strategy)}
_STRATEGIES = tuple(_STRATEGY_NAMES)
_SEMVER = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


class ConfigDocument(Protocol):
    """What the loader needs of a document (`devloop.kbld.documents.Document` has it)."""

    @property
    def data(self) -> Any: ...

    @property
    def where(self) -> str: ...


D = TypeVar("D", bound=ConfigDocument)


def load_config(docs: Sequence[D]) -> tuple[Config, list[D], list[str]]:
    """The merged config of `docs`, the documents that are not config, and the warnings.

    Keys are matched exactly (case-sensitive); kbld ignores case, so a key that differs from a
    known one only in case gets a warning with the right spelling, and is otherwise ignored.
    """
    parts: list[_Part] = []
    rest: list[D] = []
    warnings: list[str] = []
    for doc in docs:
        part = _read_document(doc.data, Reader(doc.where, warnings))
        if part is None:
            rest.append(doc)
        else:
            parts.append(part)
    return _merge(parts), rest, warnings


def check_source_path(source: Source) -> None:
    """Raise ConfigError when `source.path` is not a directory (call it when the source is used)."""
    if os.path.isdir(source.path):
        return
    problem = "is not a directory" if os.path.exists(source.path) else "does not exist"
    raise ConfigError(
        f"{source.where}: sources[{source.index}].path",
        f"'{source.path}' {problem}",
        f"The path is relative to the directory devloop runs in ({os.getcwd()}): "
        "run devloop from there or fix the path",
    )


@dataclass
class _Part:
    """What one config document contributes; parts are concatenated in input order."""

    sources: list[Source] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)
    destinations: list[Destination] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    rules: list[SearchRule] = field(default_factory=list)
    minimum: str | None = None


def _merge(parts: list[_Part]) -> Config:
    # kbld puts the `keys` of every document before the `searchRules` of any.
    keys = [SearchRule(key_matcher=KeyMatcher(name=k)) for p in parts for k in p.keys]
    rules: list[SearchRule] = []
    for rule in keys + [r for p in parts for r in p.rules]:
        if rule not in rules:
            rules.append(rule)
    minimums = [p.minimum for p in parts if p.minimum]
    return Config(
        sources=tuple(s for p in parts for s in p.sources),
        overrides=tuple(o for p in parts for o in p.overrides),
        destinations=tuple(d for p in parts for d in p.destinations),
        search_rules=tuple(rules),
        minimum_required_version=max(minimums, key=_version_key, default=None),
    )


def is_config_document(data: Any) -> bool:
    """True for what `load_config` takes (or rejects as a bad kbld document), not a manifest."""
    if not isinstance(data, dict):
        return False
    api, kind = data.get("apiVersion"), data.get("kind")
    if api == IMGPKG_API_VERSION and kind == IMAGES_LOCK_KIND:
        return True
    return isinstance(api, str) and api.startswith(f"{KBLD_GROUP}/")


def _read_document(data: Any, r: Reader) -> _Part | None:
    """The config in `data`, or None when it is not a config document."""
    if not is_config_document(data):
        return None
    api, kind = data.get("apiVersion"), data.get("kind")
    if api == IMGPKG_API_VERSION and kind == IMAGES_LOCK_KIND:
        return _Part(overrides=_images_lock(data, r))
    if api != KBLD_API_VERSION:
        raise r.error("apiVersion", f"'{api}' is not a kbld config version", _use_api())
    if kind not in KBLD_KINDS:
        raise r.error("kind", f"'{kind}' is not a kbld config kind", _use_kinds())
    return _config(r.fields(data, "", _TOP_KEYS), r)


def _use_api() -> str:
    return f"Use apiVersion: {KBLD_API_VERSION}"


def _use_kinds() -> str:
    return f"Use one of {', '.join(KBLD_KINDS)} (Config is recommended)"


def _config(m: Mapping[str, Any], r: Reader) -> _Part:
    minimum = r.string(m, "minimumRequiredVersion", "")
    if minimum:
        _check_minimum(minimum, r)
    return _Part(
        sources=[_source(item, p, i, r) for i, (p, item) in enumerate(r.items(m, "sources", ""))],
        overrides=[_override(item, p, r) for p, item in r.items(m, "overrides", "")],
        destinations=[_destination(item, p, r) for p, item in r.items(m, "destinations", "")],
        keys=list(r.strings(m, "keys", "")),
        rules=[_rule(item, p, r) for p, item in r.items(m, "searchRules", "")],
        minimum=minimum or None,
    )


def _check_minimum(minimum: str, r: Reader) -> None:
    path = "minimumRequiredVersion"
    if minimum.startswith("v"):
        raise r.error(path, f"'{minimum}' must not start with 'v'", f"Write '{minimum[1:]}'")
    if not _SEMVER.match(minimum):
        raise r.error(path, f"'{minimum}' is not a version", "Write a version such as '0.45.0'")
    if _version_key(minimum) > _version_key(KBLD_COMPAT_VERSION):
        raise r.error(
            path,
            f"devloop implements kbld {KBLD_COMPAT_VERSION}, which does not meet the minimum "
            f"required version '{minimum}'",
            "Use a newer devloop, or lower minimumRequiredVersion if the config allows it",
        )


def _version_key(version: str) -> tuple[tuple[int, ...], int, tuple[tuple[int, int | str], ...]]:
    """A sort key for semantic versions: a pre-release sorts before its release."""
    match = _SEMVER.match(version)
    assert match is not None  # callers check the syntax first
    numbers = tuple(int(n or 0) for n in match.group(1, 2, 3))
    pre = match.group(4)
    if pre is None:
        return numbers, 1, ()
    return numbers, 0, tuple((0, int(x)) if x.isdigit() else (1, x) for x in pre.split("."))


def _ref(m: Mapping[str, Any], path: str, r: Reader) -> ImageRef:
    image, repo = r.string(m, "image", path), r.string(m, "imageRepo", path)
    if not image and not repo:
        raise r.error(
            path,
            "needs image or imageRepo",
            "Set image: <the reference as written> or imageRepo: <its repository>",
        )
    return ImageRef(image=image or None, image_repo=repo or None)


def _source(item: Any, path: str, index: int, r: Reader) -> Source:
    r.refuse(item, path, _OTHER_BUILDERS, "builder not supported yet", "Use docker.build")
    m = r.fields(item, path, _SOURCE_KEYS)
    ref = _ref(m, path, r)
    where = "the directory to build from (relative to the current directory)"
    directory = r.string(m, "path", path, required=where)
    return Source(ref, directory, _docker(m.get("docker"), join(path, "docker"), r), r.where, index)


def _docker(value: Any, path: str, r: Reader) -> DockerBuild:
    m = r.fields(value, path, ("build", "buildx"))
    if "build" in m and "buildx" in m:
        raise r.error(path, "has both build and buildx", "Keep one of them")
    kind = "buildx" if "buildx" in m else "build"
    build_path = join(path, kind)
    known = _BUILD_KEYS_ALL if kind == "build" else _BUILD_KEYS
    m = r.fields(m.get(kind), build_path, known)
    r.boolean(m, "buildkit", build_path)  # kbld's flag; devloop uses BuildKit whenever it can
    raw = r.strings(m, "rawOptions", build_path)
    args, buildkit = parse_raw_options(raw, join(build_path, "rawOptions"), r)
    return DockerBuild(
        file=r.string(m, "file", build_path) or None,
        target=r.string(m, "target", build_path) or None,
        pull=r.boolean(m, "pull", build_path),
        no_cache=r.boolean(m, "noCache", build_path),
        build_args={**args, **r.string_map(m.get("buildArgs"), join(build_path, "buildArgs"))},
        platform=r.string(m, "platform", build_path) or None,
        raw_options=raw,
        buildkit_options=buildkit,
        buildx=kind == "buildx",
    )


# buildx flags devloop sets itself: a rawOptions copy would fight them (or print nothing).
_OWN_FLAGS = {
    *("--tag", "-t", "--load", "--push", "--output", "-o", "--iidfile", "--metadata-file"),
    *("--progress", "--builder", "--quiet", "-q", "--call", "--check"),
}


def parse_raw_options(
    raw: Sequence[str], path: str, r: Reader
) -> tuple[dict[str, str], tuple[str, ...]]:
    """kbld's `rawOptions`: the `--build-arg K=V` / `--build-arg=K=V` folded into build args,
    and every other word, as written, for buildx (`--secret`, `--ssh`, `--cache-from`, ...).

    Errors name options only: their values may hold secrets.
    """
    args: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(raw):
        option = raw[i]
        if option == "--build-arg" and i + 1 < len(raw):
            _add_build_arg(args, raw[i + 1])
            i += 1
        elif option.startswith("--build-arg="):
            _add_build_arg(args, option.removeprefix("--build-arg="))
        elif option.split("=")[0] in _OWN_FLAGS:
            name = option.split("=")[0]
            raise r.error(f"{path}[{i}]", f"'{name}' is set by devloop", "Remove it")
        else:
            rest.append(option)
        i += 1
    return args, tuple(rest)


def _add_build_arg(args: dict[str, str], text: str) -> None:
    name, sep, value = text.partition("=")
    # Docker's `--build-arg NAME` takes the value from the environment, or drops the arg.
    found = value if sep else os.environ.get(name)
    if found is not None:
        args[name] = found


def _override(item: Any, path: str, r: Reader) -> Override:
    for key, hint in _NOT_YET.items():
        r.refuse(item, path, (key,), "not supported yet", hint)
    m = r.fields(item, path, _OVERRIDE_KEYS)
    return Override(
        ref=_ref(m, path, r),
        new_image=r.string(m, "newImage", path, required="the reference to use instead"),
        preresolved=r.boolean(m, "preresolved", path),
        origins=_origins(m.get("origins"), join(path, "origins"), r),
    )


def _origins(value: Any, path: str, r: Reader) -> tuple[Origin, ...]:
    """The origins of known types; kbld ignores unknown types, so a newer kbld's data loads."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(o, dict) for o in value):
        raise r.error(path, f"expected a list of origins, found {kind_of(value)}")
    known = ({k: v for k, v in o.items() if k in ORIGIN_TYPES} for o in value)
    return tuple(o for o in known if o)


def _destination(item: Any, path: str, r: Reader) -> Destination:
    m = r.fields(item, path, ("image", "imageRepo", "newImage", "tags"))
    ref = _ref(m, path, r)
    # kbld defaults newImage to image; devloop also accepts imageRepo as the repository to push to.
    new_image = r.string(m, "newImage", path) or ref.image or ref.image_repo or ""
    return Destination(ref, new_image, r.strings(m, "tags", path))


def _rule(item: Any, path: str, r: Reader) -> SearchRule:
    m = r.fields(item, path, ("keyMatcher", "valueMatcher", "updateStrategy"))
    key = _key_matcher(m.get("keyMatcher"), join(path, "keyMatcher"), r)
    value = _value_matcher(m.get("valueMatcher"), join(path, "valueMatcher"), r)
    if key is None and value is None:
        raise r.error(
            path, "needs keyMatcher or valueMatcher", "Add keyMatcher: {name: <key>} for example"
        )
    strategy, nested = _strategy(m.get("updateStrategy"), join(path, "updateStrategy"), r)
    return SearchRule(key, value, strategy, nested)


def _key_matcher(value: Any, path: str, r: Reader) -> KeyMatcher | None:
    if value is None:
        return None
    m = r.fields(value, path, ("name", "path"))
    name = r.string(m, "name", path)
    parts = tuple(_path_part(item, p, r) for p, item in r.items(m, "path", path))
    if bool(name) == bool(parts):
        raise r.error(path, "needs either name or path (not both)", _KEY_HINT)
    return KeyMatcher(name=name or None, path=parts or None)


_KEY_HINT = "name matches a key at any depth; path is the full key path from the document root"


def _path_part(value: Any, path: str, r: Reader) -> PathPart:
    if isinstance(value, str):
        return value
    m = r.fields(value, path, ("index", "allIndexes")) if isinstance(value, dict) else {}
    index, every = m.get("index"), m.get("allIndexes")
    if type(index) is int and index >= 0 and every is None:
        return index
    if every is True and index is None:
        return AllIndexes()
    raise r.error(
        path,
        f"expected a key, {{index: N}} or {{allIndexes: true}}, found {kind_of(value)}",
        "Write list positions as {index: 0}",
    )


def _value_matcher(value: Any, path: str, r: Reader) -> ValueMatcher | None:
    if value is None:
        return None
    m = r.fields(value, path, ("image", "imageRepo"))
    ref = _ref(m, path, r)
    return ValueMatcher(image=ref.image, image_repo=ref.image_repo)


def _strategy(value: Any, path: str, r: Reader) -> tuple[Strategy, tuple[SearchRule, ...]]:
    if value is None:
        return "entireValue", ()
    chosen = [k for k in r.fields(value, path, _STRATEGIES) if k in _STRATEGIES]
    if len(chosen) != 1:
        raise r.error(path, f"choose exactly one of {', '.join(_STRATEGIES)}", _STRATEGY_HINT)
    name = _STRATEGY_NAMES[chosen[0]]
    known = ("searchRules",) if name in ("json", "yaml") else ()
    m = r.fields(value[name], join(path, name), known)
    nested = tuple(_rule(item, p, r) for p, item in r.items(m, "searchRules", join(path, name)))
    return name, nested


_STRATEGY_HINT = "e.g. updateStrategy: {json: {searchRules: [...]}}"


def _images_lock(data: dict[str, Any], r: Reader) -> list[Override]:
    """kbld turns each ImagesLock entry into a preresolved override keyed by its original ref."""
    m = r.fields(data, "", ("apiVersion", "kind", "metadata", "images"))
    return [_lock_entry(item, p, r) for p, item in r.items(m, "images", "")]


def _lock_entry(item: Any, path: str, r: Reader) -> Override:
    m = r.fields(item, path, ("image", "annotations"))
    image = r.string(m, "image", path, required="the locked reference (repo@sha256:...)")
    notes = r.string_map(m.get("annotations"), join(path, "annotations"))
    original = notes.get(LOCK_ID_ANNOTATION)
    if not original:
        raise r.error(
            f'{join(path, "annotations")}["{LOCK_ID_ANNOTATION}"]',
            "required, the reference as written in the manifests",
            "Write the lock with devloop or kbld --imgpkg-lock-output",
        )
    origins = _lock_origins(notes.get(LOCK_ORIGINS_ANNOTATION), path, r)
    return Override(ImageRef(image=original), image, preresolved=True, origins=origins)


def _lock_origins(text: str | None, path: str, r: Reader) -> tuple[Origin, ...]:
    key = f'{join(path, "annotations")}["{LOCK_ORIGINS_ANNOTATION}"]'
    try:
        values = parse_embedded(text, key) if text else []
    except ManifestError as error:
        raise r.error(key, "not valid YAML", "Write a YAML list of origins") from error
    value = values[0] if values else None
    return _origins(value, key, r)
