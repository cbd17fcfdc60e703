"""The one-shot pipeline behind `devloop resolve` and `devloop inspect`.

read inputs -> split off config -> find references -> resolve them (build, push, digest) ->
rewrite the documents in place -> write the stream, the lock files and the `final` lines. The
daemon runs the same stages on every change; this module only wires them for a single run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from devloop.errors import DevloopError, ImageReferenceError
from devloop.kbld.config import is_config_document, load_config
from devloop.kbld.documents import Document, reparsed
from devloop.kbld.model import Config, Resolved, SearchRule, is_settings_document
from devloop.kbld.references import is_digest, parse_reference
from devloop.kbld.rendering import (
    Splice,
    annotation_point,
    render,
    render_stream,
)
from devloop.kbld.searching import ImageSite, find_sites

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Found:
    """The input with its config split off and every image site located."""

    config: Config
    documents: list[Document]
    sites: list[list[ImageSite]]
    warnings: list[str]
    settings: list[Document] = field(default_factory=list)  # devloop Settings, never output
    # `annotation_point` of each document, when find dropped the trees (else empty: the
    # renderer finds the point in each document's tree)
    points: list[Splice | None] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return sorted({site.value for doc_sites in self.sites for site in doc_sites})


def find(documents: Iterable[Document], keep_trees: bool = True) -> Found:
    """Split off the config and settings documents and locate every image site.

    With `keep_trees` False each manifest keeps only its text, its sites and its annotation
    point: its node tree and data (~30 KB for a 650-byte Deployment) are dropped as soon as it
    has been searched, so a one-shot run holds little more than the text it will print. Search
    rules may come from a config document anywhere in the stream: a manifest searched before a
    later document changed them is parsed and searched again.
    """
    configs: list[Document] = []
    settings: list[Document] = []
    manifests: list[Document] = []
    sites: list[list[ImageSite]] = []
    points: list[Splice | None] = []
    searched_with: list[tuple[SearchRule, ...] | None] = []
    rules: tuple[SearchRule, ...] | None = Config().rules()
    for doc in documents:
        if is_config_document(doc.data):
            configs.append(doc)
            if "keys" in doc.data or "searchRules" in doc.data:  # the rest cannot add rules
                rules = _rules_so_far(configs)
        elif is_settings_document(doc.data):
            settings.append(doc)
        else:
            sites.append(find_sites(doc, rules) if rules is not None else [])
            searched_with.append(rules)
            if not keep_trees:
                points.append(annotation_point(doc))
                doc = replace(doc, node=None, data=None)
            manifests.append(doc)
    config, _, warnings = load_config(configs)  # raises the first config error, after reading
    _search_again(manifests, sites, searched_with, config.rules())
    for doc, doc_sites in zip(manifests, sites, strict=True):
        _check_digests(doc, doc_sites)
    return Found(config, manifests, sites, warnings, settings, points)


def _rules_so_far(configs: Sequence[Document]) -> tuple[SearchRule, ...] | None:
    """The search rules of the config read so far; None when it is broken (reported later)."""
    try:
        return load_config(configs)[0].rules()
    except DevloopError:
        return None


def _search_again(
    manifests: Sequence[Document],
    sites: list[list[ImageSite]],
    searched_with: Sequence[tuple[SearchRule, ...] | None],
    rules: tuple[SearchRule, ...],
) -> None:
    stale: dict[int, bool] = {}  # by id: the few rule tuples, each compared once
    for i, (doc, used) in enumerate(zip(manifests, searched_with, strict=True)):
        if stale.setdefault(id(used), used != rules):
            sites[i] = find_sites(doc if doc.node is not None else reparsed(doc), rules)


def _check_digests(doc: Document, sites: Sequence[ImageSite]) -> None:
    """A malformed digest reference is reported where it is written, before any work starts."""
    for site in sites:
        if not is_digest(site.value):
            continue
        try:
            parse_reference(site.value)
        except ImageReferenceError as error:
            key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in site.path)
            where = f"{doc.where}: {key.lstrip('.')}"
            raise ImageReferenceError(where, error.problem, error.hint) from error


def rewrite(found: Found, resolved: Mapping[str, Resolved], annotate: bool) -> str:
    return render_stream(rendered(found, resolved, annotate))


def rendered(found: Found, resolved: Mapping[str, Resolved], annotate: bool) -> list[str]:
    """Each manifest's text with its references resolved, in input order."""
    points = found.points or [None] * len(found.documents)
    return [
        render(doc, sites, resolved, annotate, point)
        for doc, sites, point in zip(found.documents, found.sites, points, strict=True)
    ]


def final_lines(resolved: Mapping[str, Resolved]) -> list[str]:
    return [f"final: {url} -> {resolved[url].url}" for url in sorted(resolved)]
