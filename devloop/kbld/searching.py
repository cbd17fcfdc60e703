"""Find the image references in a document, with kbld's search-rule semantics.

The walk mirrors kbld's `search.Fields`: every map entry and list element is offered to the
rules (first matching rule wins, so each leaf is matched once); a matched string is consumed by
the rule's strategy, and anything not consumed (a non-string under `image:`, a `none` rule, a
string that does not decode as JSON/YAML) is searched further. The walk runs over libyaml nodes
so that each reference comes with the exact span of its scalar in the document's text, which is
what lets rendering change only those bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import yaml

from devloop.errors import ManifestError
from devloop.kbld.documents import Document, parse_embedded
from devloop.kbld.model import AllIndexes, KeyMatcher, PathPart, SearchRule, ValueMatcher
from devloop.kbld.references import repo_of

STR_TAG = "tag:yaml.org,2002:str"
Key = str | int
Encoding = Literal["json", "yaml"]
T = TypeVar("T")


@dataclass(frozen=True)
class Inner:
    """One level of decoding: the scalar is `encoding` text; `path` leads to the next value.

    For YAML the first part of `path` is the position among the text's non-empty documents.
    """

    encoding: Encoding
    path: tuple[Key, ...]


@dataclass(frozen=True)
class ImageSite:
    """One image reference and the scalar of `Document.text` that holds it."""

    value: str  # the reference as written
    path: tuple[Key, ...]  # key path of the scalar from the document root
    start: int  # span of the scalar in the document's text (quotes included)
    end: int
    style: str  # libyaml scalar style: "" plain, "'", '"', "|" or ">"
    raw: str = ""  # the scalar's string value, when the reference sits inside it (`inner`)
    inner: tuple[Inner, ...] = ()  # outermost first: how to reach the reference inside `raw`


@dataclass(frozen=True)
class _Hit(Generic[T]):
    """A reference found by the walk, with the leaf (node or value) that holds it."""

    path: tuple[Key, ...]
    leaf: T
    value: str
    inner: tuple[Inner, ...]


class _Tree(Generic[T]):
    """kbld's walk over one kind of tree; subclasses say how to see children and strings."""

    def children(self, tree: T) -> Iterable[tuple[Key, T]]:
        raise NotImplementedError

    def string(self, tree: T) -> str | None:
        raise NotImplementedError

    def search(self, tree: T, rules: Sequence[SearchRule]) -> list[_Hit[T]]:
        hits: list[_Hit[T]] = []
        self._walk(tree, rules, (), hits)
        return hits

    def _walk(
        self, tree: T, rules: Sequence[SearchRule], path: tuple[Key, ...], hits: list[_Hit[T]]
    ) -> None:
        # An accumulator, not nested generators: this runs for every entry of every document.
        for key, child in self.children(tree):
            child_path = (*path, key)
            rule = _first_match(rules, child_path, self.string(child))
            if rule is None or not self._consume(rule, child, child_path, hits):
                self._walk(child, rules, child_path, hits)

    def _consume(
        self, rule: SearchRule, tree: T, path: tuple[Key, ...], hits: list[_Hit[T]]
    ) -> bool:
        """Add the references `rule` takes from `tree`; False when it leaves `tree` to the walk."""
        text = self.string(tree)
        if text is None or rule.strategy == "none":
            return False
        if rule.strategy == "entireValue":
            hits.append(_Hit(path, tree, text, ()))
            return True
        decoded = decode(text, allow_yaml=rule.strategy == "yaml")
        if decoded is None:
            return False
        encoding, docs = decoded
        hits.extend(
            _Hit(path, tree, hit.value, (Inner(encoding, (*prefix, *hit.path)), *hit.inner))
            for prefix, doc in docs
            for hit in _DATA.search(doc, rule.nested)
        )
        return True


class _Nodes(_Tree[yaml.Node]):
    def children(self, tree: yaml.Node) -> Iterable[tuple[Key, yaml.Node]]:
        if isinstance(tree, yaml.MappingNode):
            return [(k.value, v) for k, v in tree.value if isinstance(k, yaml.ScalarNode)]
        if isinstance(tree, yaml.SequenceNode):
            return enumerate(tree.value)
        return ()

    def string(self, tree: yaml.Node) -> str | None:
        if isinstance(tree, yaml.ScalarNode) and tree.tag == STR_TAG:
            return str(tree.value)
        return None


class _Data(_Tree[Any]):
    """Decoded JSON/YAML values; keys become strings, as through kbld's JSON round trip."""

    def children(self, tree: Any) -> Iterable[tuple[Key, Any]]:
        if isinstance(tree, dict):
            return ((str(k), v) for k, v in tree.items())
        if isinstance(tree, list):
            return enumerate(tree)
        return ()

    def string(self, tree: Any) -> str | None:
        return tree if isinstance(tree, str) else None


_NODES = _Nodes()
_DATA = _Data()


def find_sites(doc: Document, rules: Sequence[SearchRule]) -> list[ImageSite]:
    """Every image reference in `doc`, in document order."""
    if doc.node is None:
        return []
    return [_site(hit) for hit in _NODES.search(doc.node, rules)]


def _site(hit: _Hit[yaml.Node]) -> ImageSite:
    node = hit.leaf
    assert isinstance(node, yaml.ScalarNode)  # only string scalars are ever hit
    raw = str(node.value) if hit.inner else ""
    start, end = node.start_mark.index, node.end_mark.index
    return ImageSite(hit.value, hit.path, start, end, node.style or "", raw, hit.inner)


def _first_match(
    rules: Sequence[SearchRule], path: tuple[Key, ...], value: str | None
) -> SearchRule | None:
    for rule in rules:
        if _key_matches(rule.key_matcher, path) and _value_matches(rule.value_matcher, value):
            return rule
    return None


def _key_matches(matcher: KeyMatcher | None, path: tuple[Key, ...]) -> bool:
    if matcher is None:
        return True
    if matcher.name is not None:
        return isinstance(path[-1], str) and path[-1] == matcher.name
    wanted = matcher.path or ()
    return len(wanted) == len(path) and all(map(_part_matches, wanted, path))


def _part_matches(wanted: PathPart, key: Key) -> bool:
    if isinstance(wanted, AllIndexes):
        return isinstance(key, int)
    # bool is an int in Python; a path part is never one, a key never a bool.
    return type(wanted) is type(key) and wanted == key


def _value_matches(matcher: ValueMatcher | None, value: str | None) -> bool:
    if matcher is None:
        return True
    if value is None:
        return False
    if matcher.image is not None:
        return value == matcher.image
    return matcher.image_repo is not None and repo_of(value) == matcher.image_repo


def decode(
    text: str, allow_yaml: bool
) -> tuple[Encoding, list[tuple[tuple[Key, ...], Any]]] | None:
    """kbld's decoding of a json/yaml-strategy string: JSON first, then (for `yaml`) the
    non-empty YAML documents. Returns the encoding used and (path prefix, value) per root."""
    try:
        return "json", [((), json.loads(text))]
    except ValueError:
        pass
    if not allow_yaml:
        return None
    try:
        docs = parse_embedded(text, "value")
    except ManifestError:  # not YAML, or YAML beyond the bounds: a plain string then
        return None
    return "yaml", [((i,), doc) for i, doc in enumerate(docs)]
