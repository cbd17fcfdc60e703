"""The one-shot pipeline behind `devloop resolve` and `devloop inspect`.

read inputs -> split off config -> find references -> resolve them (build, push, digest) ->
rewrite the documents in place -> write the stream, the lock files and the `final` lines. The
daemon runs the same stages on every change; this module only wires them for a single run.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from devloop.errors import DevloopError, ImageReferenceError
from devloop.kbld.config import is_config_document, load_config
from devloop.kbld.documents import Document, iter_documents, read_inputs, reparsed
from devloop.kbld.model import Config, Resolved, SearchRule, is_settings_document
from devloop.kbld.offline import resolve_all_offline
from devloop.kbld.references import is_digest, parse_reference
from devloop.kbld.rendering import (
    Splice,
    annotation_point,
    render,
    render_stream,
    stream_pieces,
)
from devloop.kbld.searching import ImageSite, find_sites
from devloop.logs import LineWriter

if TYPE_CHECKING:
    from devloop.kbld.resolving import ResolveOptions


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


def resolve_command(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    if args.lock_output and args.imgpkg_lock_output:
        raise DevloopError(
            "Can only output one lockfile type: choose --lock-output or --imgpkg-lock-output"
        )
    files = args.files or _missing_files()
    found = find(iter_documents(files, stdin), keep_trees=False)
    for warning in found.warnings:
        stderr.write(f"devloop: Warning: {warning}\n")
    if args.unresolved_inspect:
        stdout.write("".join(f"- image: {url}\n" for url in found.urls))
        return 0
    out = LineWriter(stderr)
    resolved = _resolve(args, found, out)
    # Locks first: a lock that cannot be written must fail the run before a piped consumer
    # (`| kapp deploy -f-`) has read any manifest.
    _write_locks(args, found.config, resolved)
    # Every document is rendered before the first is written (a rendering error leaves stdout
    # empty), then written piece by piece: the joined stream would be one more copy of it all.
    stdout.writelines(stream_pieces(rendered(found, resolved, args.images_annotation)))
    stdout.flush()
    for line in final_lines(resolved):
        out.line("resolve", line)
    return 0


def _resolve(args: argparse.Namespace, found: Found, out: LineWriter) -> dict[str, Resolved]:
    """Synchronously when no reference needs a build or a registry, else concurrently."""
    _check_concurrency(args)
    resolved = resolve_all_offline(found.config, found.urls)
    if resolved is not None:
        return resolved
    import anyio

    from devloop.kbld.resolving import Resolver

    resolver = Resolver(found.config, out, _options(args))
    try:
        return anyio.run(resolver.resolve_all, found.urls)
    finally:
        resolver.close()


def inspect_command(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    from devloop.kbld.inspecting import inspect

    found = find(read_inputs(args.files or _missing_files(), stdin))
    stdout.write(inspect(found.documents, found.config, as_json=args.json))
    return 0


def _check_concurrency(args: argparse.Namespace) -> None:
    if args.build_concurrency < 1:
        raise DevloopError("--build-concurrency must be at least 1")


def _options(args: argparse.Namespace) -> ResolveOptions:
    from devloop.kbld.registry import RegistryOptions
    from devloop.kbld.resolving import ResolveOptions

    registry = RegistryOptions(
        insecure=args.registry_insecure,
        verify_certs=args.registry_verify_certs,
        ca_cert_paths=tuple(args.registry_ca_cert_path),
    )
    return ResolveOptions(build=args.build, concurrency=args.build_concurrency, registry=registry)


def _write_locks(
    args: argparse.Namespace, config: Config, resolved: Mapping[str, Resolved]
) -> None:
    if args.lock_output:
        from devloop.kbld.locks import kbld_lock

        _write_file(args.lock_output, kbld_lock(resolved, config))
    if args.imgpkg_lock_output:
        from devloop.kbld.locks import imgpkg_lock

        _write_file(args.imgpkg_lock_output, imgpkg_lock(resolved, args.origins_annotation))


def _write_file(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as error:
        raise DevloopError(f"cannot write {path}: {error.strerror}") from error


def _missing_files() -> list[str]:
    raise DevloopError("no input: pass -f FILE, -f DIR or -f - (stdin)")
