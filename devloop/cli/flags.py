"""The flag spellings every devloop command shares: kbld's booleans, -f, the registry flags.

Kept apart from the commands so that each command's module can use them without importing the
others (and `resolve` never pays for `up`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import NoReturn

_TRUE = {"true", "1", "yes", "on", "t"}
_FALSE = {"false", "0", "no", "off", "f"}


class Parser(argparse.ArgumentParser):
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
    assert isinstance(parser, Parser)  # every subparser is: add_subparsers uses our class
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


def add_files(parser: argparse.ArgumentParser, default: list[str] | None = None) -> None:
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


def add_builder_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--builder",
        metavar="NAME",
        help="build on this buildx builder, e.g. a remote or in-cluster BuildKit (default: "
        "$DEVLOOP_BUILDER, else buildx's current builder: the engine's own BuildKit)",
    )


def add_registry_flags(parser: argparse.ArgumentParser) -> None:
    add_bool(parser, "registry-insecure", False, "allow plain-HTTP registries")
    add_bool(parser, "registry-verify-certs", True, "verify registry TLS certificates")
    parser.add_argument(
        "--registry-ca-cert-path",
        action="append",
        default=[],
        metavar="FILE",
        help="extra CA certificate (PEM) to trust for registries; repeatable",
    )
