"""The typed values that flow between pipeline stages.

Nothing downstream of the loaders sees raw YAML dicts: config documents become these frozen
dataclasses (built in `config.py`), and resolution results are `Resolved` values. Keeping them in
one small module lets every stage import the types without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

KBLD_API_VERSION = "kbld.k14s.io/v1alpha1"
KBLD_KINDS = ("Config", "Sources", "ImageOverrides", "ImageDestinations", "ImageKeys")
IMGPKG_API_VERSION = "imgpkg.carvel.dev/v1alpha1"
IMAGES_ANNOTATION = "kbld.k14s.io/images"
# devloop's own Settings document (read by `devloop.settings`) rides in the same stream and, like
# kbld's config kinds, is never output; resolving only needs to recognise it.
SETTINGS_API_VERSION = "devloop.dev/v1alpha1"
SETTINGS_KIND = "Settings"

# An origin in kbld's current annotation format, e.g. {"local": {"path": "/src/app"}}.
Origin = Mapping[str, Any]


def is_settings_document(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("apiVersion") == SETTINGS_API_VERSION
        and data.get("kind") == SETTINGS_KIND
    )


@dataclass(frozen=True)
class ImageRef:
    """Matches a found reference exactly (`image`) or by its repository part (`imageRepo`)."""

    image: str | None = None
    image_repo: str | None = None

    def matches(self, url: str) -> bool:
        from devloop.kbld.references import repo_of

        if self.image is not None and self.image == url:
            return True
        return self.image_repo is not None and self.image_repo == repo_of(url)


@dataclass(frozen=True)
class DockerBuild:
    """Options of a docker build; paths are relative to the Source `path`.

    `config.py` is the one place that reads `rawOptions`: `--build-arg` words are folded into
    `build_args`, every other word lands in `buildkit_options`, passed to buildx as written.
    """

    file: str | None = None  # Dockerfile path relative to the context; default "Dockerfile"
    target: str | None = None
    pull: bool = False
    no_cache: bool = False
    build_args: Mapping[str, str] = field(default_factory=dict)
    platform: str | None = None
    raw_options: tuple[str, ...] = ()  # kbld's rawOptions as written (part of the input digest)
    buildkit_options: tuple[str, ...] = ()  # rawOptions but --build-arg: buildx flags, verbatim
    buildx: bool = False  # kbld's `docker.buildx` (BuildKit required) rather than `docker.build`


@dataclass(frozen=True)
class Source:
    """Build `ref`'s image from the directory `path` (relative to the current directory)."""

    ref: ImageRef
    path: str
    docker: DockerBuild = DockerBuild()
    where: str = ""  # "file, document N" of the declaring document, for error messages
    index: int = 0  # position in that document's `sources`, for error messages


@dataclass(frozen=True)
class Override:
    """Use `new_image` for references matching `ref`; `preresolved` ends resolution there."""

    ref: ImageRef
    new_image: str
    preresolved: bool = False
    origins: tuple[Origin, ...] = ()


@dataclass(frozen=True)
class Destination:
    """Push built images matching `ref` to `new_image` (defaults to the image), plus `tags`."""

    ref: ImageRef
    new_image: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class AllIndexes:
    """`{allIndexes: true}` in a keyMatcher path."""


PathPart = str | int | AllIndexes


@dataclass(frozen=True)
class KeyMatcher:
    """A search rule's key test: the last key is `name`, or the whole key path is `path`."""

    name: str | None = None
    path: tuple[PathPart, ...] | None = None


@dataclass(frozen=True)
class ValueMatcher:
    """A search rule's value test: the string is `image`, or its repository is `image_repo`."""

    image: str | None = None
    image_repo: str | None = None


Strategy = Literal["entireValue", "none", "json", "yaml"]


@dataclass(frozen=True)
class SearchRule:
    """kbld's `searchRules` entry (or a `keys` name): where references are, and how to edit them."""

    key_matcher: KeyMatcher | None = None
    value_matcher: ValueMatcher | None = None
    strategy: Strategy = "entireValue"
    nested: tuple[SearchRule, ...] = ()  # the rules of a json/yaml strategy


DEFAULT_RULE = SearchRule(key_matcher=KeyMatcher(name="image"))


@dataclass(frozen=True)
class Config:
    """All kbld config documents of the input, concatenated in input order."""

    sources: tuple[Source, ...] = ()
    overrides: tuple[Override, ...] = ()
    destinations: tuple[Destination, ...] = ()
    search_rules: tuple[SearchRule, ...] = ()  # keys first, then searchRules; no default rule
    minimum_required_version: str | None = None

    def rules(self) -> tuple[SearchRule, ...]:
        """The rules in kbld's order, deduplicated, the default `image` rule last."""
        seen: list[SearchRule] = []
        for rule in (*self.search_rules, DEFAULT_RULE):
            if rule not in seen:
                seen.append(rule)
        return tuple(seen)

    def override_for(self, url: str) -> Override | None:
        return next((o for o in self.overrides if o.ref.matches(url)), None)

    def source_for(self, url: str) -> Source | None:
        return next((s for s in self.sources if s.ref.matches(url)), None)

    def destination_for(self, url: str) -> Destination | None:
        return next((d for d in self.destinations if d.ref.matches(url)), None)


@dataclass(frozen=True)
class Resolved:
    """The final reference for one original reference, with the origins for the annotation."""

    url: str
    origins: tuple[Origin, ...] = ()
