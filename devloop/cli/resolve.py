"""`devloop resolve` and `devloop inspect`: kbld's commands, wired for one run.

read inputs -> split off config -> find references -> resolve them (build, push, digest) ->
rewrite the documents in place -> write the stream, the lock files and the `final` lines. The
stages live in `devloop.kbld`; this module only turns flags into one run of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from devloop.cli.flags import add_bool, add_builder_flag, add_files, add_registry_flags
from devloop.errors import DevloopError
from devloop.kbld.documents import iter_documents, read_inputs
from devloop.kbld.model import Config, Resolved
from devloop.kbld.offline import resolve_all_offline
from devloop.kbld.pipeline import Found, final_lines, find, rendered
from devloop.kbld.rendering import stream_pieces
from devloop.logs import LineWriter

if TYPE_CHECKING:
    from devloop.kbld.resolving import ResolveOptions


def add_resolve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "resolve",
        help="build and resolve images in manifests, like kbld",
        description="Find image references in the manifests, build the ones a Source matches, "
        "resolve the rest to digests, and print the manifests with the final references on "
        "stdout. Progress and build output go to stderr. Drop-in for `kbld -f ...`.",
    )
    add_files(p)
    add_bool(
        p, "build", True, "build images that a Source matches; false makes such a match an error"
    )
    p.add_argument(
        "--build-concurrency",
        type=int,
        default=4,
        metavar="N",
        help="references processed (built or resolved) at once (default 4)",
    )
    add_bool(p, "images-annotation", True, "annotate resources with kbld.k14s.io/images")
    p.add_argument("--lock-output", metavar="FILE", help="write a kbld Config lock file")
    p.add_argument("--imgpkg-lock-output", metavar="FILE", help="write an imgpkg ImagesLock file")
    add_bool(p, "origins-annotation", True, "write kbld.carvel.dev/origins in --imgpkg-lock-output")
    add_bool(
        p,
        "unresolved-inspect",
        False,
        "only list the image references found (as `- image: REF`), resolve nothing",
    )
    p.add_argument(
        "--default-repo",
        metavar="REGISTRY/PREFIX",
        help="push built images no ImageDestinations names here, as `up` does (not in kbld; "
        "names escaped: / : @ become _)",
    )
    add_registry_flags(p)
    add_builder_flag(p)
    p.set_defaults(run=_run_resolve)


def add_inspect_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        aliases=["i", "is", "insp"],
        help="list images, their origins and users",
        description="List the images in the manifests, the origins recorded in their "
        "kbld.k14s.io/images annotations (current and legacy formats), and the resources "
        "using them.",
    )
    add_files(p)
    add_bool(p, "json", False, "print JSON instead of a table")
    add_registry_flags(p)
    p.set_defaults(run=_run_inspect)


def _run_resolve(args: argparse.Namespace) -> int:
    return resolve_command(args, sys.stdin, sys.stdout, sys.stderr)


def _run_inspect(args: argparse.Namespace) -> int:
    return inspect_command(args, sys.stdin, sys.stdout)


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
    return ResolveOptions(
        build=args.build,
        concurrency=args.build_concurrency,
        registry=registry,
        builder=args.builder or os.environ.get("DEVLOOP_BUILDER") or None,
        default_repo=args.default_repo,
    )


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
