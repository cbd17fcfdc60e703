"""The `devloop` command line: kbld's flags and spellings, one clear error, no tracebacks.

Heavy SDKs are imported only by the commands that need them: `devloop resolve` on manifests that
only use digests and preresolved overrides never imports docker or kubernetes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from devloop import __version__
from devloop.cli.flags import Parser
from devloop.errors import DevloopError


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(
        prog="devloop",
        description="An instant, trustworthy Kubernetes inner loop.",
    )
    parser.add_argument("--version", action="version", version=f"devloop version {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from devloop.cli.resolve import add_inspect_parser, add_resolve_parser

    add_resolve_parser(sub)
    add_inspect_parser(sub)
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
