"""The `devloop` command line: kbld's flags and spellings, one clear error, no tracebacks.

Heavy SDKs are imported only by the commands that need them: `devloop resolve` on manifests that
only use digests and preresolved overrides never imports docker or kubernetes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from devloop import __version__
from devloop.errors import DevloopError

_TRUE = {"true", "1", "yes", "on", "t"}
_FALSE = {"false", "0", "no", "off", "f"}


class _Parser(argparse.ArgumentParser):
    """argparse with kbld's error shape: one `devloop: Error:` line and exit 1, not usage + 2.

    A subcommand's arguments may be added only when that subcommand is parsed (`defer`): the
    `up` flags need `devloop.settings` for their defaults, and `resolve` should not pay for it.
    """

    fill: Callable[[argparse.ArgumentParser], None] | None = None

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"devloop: Error: {message}. See `{self.prog} --help`\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.fill is not None:
            fill, self.fill = self.fill, None
            fill(self)
        return super().parse_known_args(args, namespace)


def defer(parser: argparse.ArgumentParser, fill: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `parser`'s arguments with `fill` when it is first used, not when it is built."""
    assert isinstance(parser, _Parser)  # every subparser is: add_subparsers uses our class
    parser.fill = fill


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_bool(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    """A boolean flag spelt `--name`, `--name=false` (kbld) or `--no-name`."""
    dest = name.replace("-", "_")
    parser.add_argument(
        f"--{name}",
        dest=dest,
        nargs="?",
        const=True,
        default=default,
        type=parse_bool,
        metavar="BOOL",
        help=f"{help} (default {str(default).lower()})",
    )
    parser.add_argument(f"--no-{name}", dest=dest, action="store_false", help=argparse.SUPPRESS)


def _add_files(parser: argparse.ArgumentParser, default: list[str] | None = None) -> None:
    parser.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        default=None,
        metavar="PATH",
        help="a file, a directory (walked recursively for .yml/.yaml/.json, sorted), or - for "
        "stdin; repeatable, comma-separated values allowed"
        + (f" (default {','.join(default)})" if default else ""),
    )


def _add_registry_flags(parser: argparse.ArgumentParser) -> None:
    add_bool(parser, "registry-insecure", False, "allow plain-HTTP registries")
    add_bool(parser, "registry-verify-certs", True, "verify registry TLS certificates")
    parser.add_argument(
        "--registry-ca-cert-path",
        action="append",
        default=[],
        metavar="FILE",
        help="extra CA certificate (PEM) to trust for registries; repeatable",
    )


def _resolve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "resolve",
        help="build and resolve images in manifests, like kbld",
        description="Find image references in the manifests, build the ones a Source matches, "
        "resolve the rest to digests, and print the manifests with the final references on "
        "stdout. Progress and build output go to stderr. Drop-in for `kbld -f ...`.",
    )
    _add_files(p)
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
    _add_registry_flags(p)
    p.set_defaults(run=_run_resolve)


def _inspect_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        aliases=["i", "is", "insp"],
        help="list images, their origins and users",
        description="List the images in the manifests, the origins recorded in their "
        "kbld.k14s.io/images annotations (current and legacy formats), and the resources "
        "using them.",
    )
    _add_files(p)
    add_bool(p, "json", False, "print JSON instead of a table")
    _add_registry_flags(p)
    p.set_defaults(run=_run_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="devloop",
        description="An instant, trustworthy Kubernetes inner loop.",
    )
    parser.add_argument("--version", action="version", version=f"devloop version {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _resolve_parser(sub)
    _inspect_parser(sub)
    v = sub.add_parser("version", help="print the version")
    v.set_defaults(run=lambda args: _print(f"devloop version {__version__}"))
    _add_daemon_parsers(sub)
    return parser


def _add_daemon_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from devloop.cli.up import add_parsers

    add_parsers(sub)


def _print(text: str) -> int:
    print(text)
    return 0


def _run_resolve(args: argparse.Namespace) -> int:
    from devloop.kbld.pipeline import resolve_command

    return resolve_command(args, sys.stdin, sys.stdout, sys.stderr)


def _run_inspect(args: argparse.Namespace) -> int:
    from devloop.kbld.pipeline import inspect_command

    return inspect_command(args, sys.stdin, sys.stdout)


def main(argv: Sequence[str] | None = None, stderr: TextIO | None = None) -> int:
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except DevloopError as error:
        err.write(f"devloop: Error: {error}\n")
        return 1
    except KeyboardInterrupt:
        err.write("devloop: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1
    except BaseExceptionGroup as group:
        # `up` runs in task groups: a failure in any task arrives wrapped, maybe twice over.
        expected = expected_error(group)
        if expected is None:
            raise  # a bug: the traceback is the report
        err.write(f"devloop: Error: {expected}\n")
        return 1


def expected_error(group: BaseExceptionGroup[BaseException]) -> DevloopError | None:
    """The first DevloopError of a (nested) exception group whose every leaf is expected.

    Cancellation leaves are the sibling tasks the failure stopped, so they do not count.
    """
    from asyncio import CancelledError  # anyio's backend; imported late like the SDKs

    leaves = _leaves(group)
    if any(not isinstance(leaf, DevloopError | CancelledError) for leaf in leaves):
        return None
    return next((leaf for leaf in leaves if isinstance(leaf, DevloopError)), None)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


if __name__ == "__main__":
    sys.exit(main())
