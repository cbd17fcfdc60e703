"""Command-line surface of `devloop up` and `devloop down`.

Flags left unset are None, so that `settings.settle` can let the environment and the project's
Settings document fill them; only what the user typed wins over the file. The flags are added
only when `up` or `down` is parsed, so that building the parser imports neither the settings nor
the loop.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from devloop.cli.flags import defer

    up = sub.add_parser(
        "up",
        help="watch, build, apply and roll out on every save",
        description="Watch the Sources and manifests; on every change rebuild only the images "
        "whose inputs changed, re-render and resolve the manifests with the new digests, apply "
        "them with server-side apply and wait for the rollout. Ctrl-C stops.",
    )
    defer(up, _up_arguments)
    up.set_defaults(run=_run_up)

    down = sub.add_parser(
        "down",
        help="delete the app's resources",
        description="Delete everything `devloop up` applied for the app.",
    )
    defer(down, _down_arguments)
    down.set_defaults(run=_run_down)


def _up_arguments(up: argparse.ArgumentParser) -> None:
    from devloop.cli.flags import add_bool, add_builder_flag
    from devloop.settings import Settings

    _common(up)
    up.add_argument(
        "--render",
        metavar="CMD",
        help="a command whose stdout is the manifests, e.g. 'ytt -f config/'; rerun "
        "when its inputs (the -f paths, or --render-input) change",
    )
    up.add_argument(
        "--render-input",
        dest="render_inputs",
        action="append",
        metavar="PATH",
        help="a file or directory the render command reads; repeatable",
    )
    up.add_argument(
        "--build-concurrency",
        type=int,
        metavar="N",
        help=f"image builds at once (default {Settings.build_concurrency})",
    )
    up.add_argument(
        "--debounce-ms",
        type=int,
        metavar="MS",
        help=f"quiet period after the last change (default {Settings.debounce_ms})",
    )
    up.add_argument(
        "--max-wait-ms",
        type=int,
        metavar="MS",
        help=f"cap on waiting for quiet (default {Settings.max_wait_ms})",
    )
    up.add_argument(
        "--rollout-timeout",
        dest="rollout_timeout_s",
        type=float,
        metavar="SECONDS",
        help=f"deadline of a rollout (default {Settings.rollout_timeout_s:.0f})",
    )
    add_bool(up, "cleanup", False, "delete what was applied on exit")
    add_bool(up, "keep", False, "docker target: leave the containers running on exit")
    add_bool(up, "logs", True, "stream the app's output (pod logs, container output)")
    add_bool(up, "port-forward", True, "kubernetes target: forward the app's ports to 127.0.0.1")
    up.set_defaults(cleanup=None, keep=None, logs=None, port_forward=None)
    up.add_argument(
        "--log-format",
        choices=["console", "json"],
        help="console lines on stderr, or JSON lines on stdout (default console)",
    )
    _add_target(up)
    add_builder_flag(up)
    up.add_argument(
        "--delivery",
        choices=["auto", "registry", "engine", "load", "push"],
        help="how built images reach the cluster: the announced local registry, the shared "
        "Docker engine, loading into kind/k3d nodes, or pushing to --default-repo (default auto: "
        "the first that fits, in that order)",
    )
    up.add_argument(
        "--default-repo",
        metavar="REGISTRY/PREFIX",
        help="push built images without an ImageDestination here (names escaped: / : @ become _)",
    )


def _down_arguments(down: argparse.ArgumentParser) -> None:
    _common(down)
    _add_target(down)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        choices=["kubernetes", "docker"],
        help="where the app runs: a cluster, or containers on the local Docker engine "
        "(default: kubernetes when a kubeconfig exists, docker otherwise)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        metavar="PATH",
        help="manifest file or directory; repeatable (default config/)",
    )
    parser.add_argument("--app", help="names the inventory (default: the directory name)")
    parser.add_argument("-n", "--namespace", help="namespace for objects that name none")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    names = [
        "files",
        "render",
        "render_inputs",
        "namespace",
        "context",
        "kubeconfig",
        "app",
        "build_concurrency",
        "debounce_ms",
        "max_wait_ms",
        "rollout_timeout_s",
        "cleanup",
        "keep",
        "logs",
        "port_forward",
        "log_format",
        "target",
        "builder",
        "delivery",
        "default_repo",
    ]
    flags = {name: getattr(args, name, None) for name in names}
    for name in ("files", "render_inputs"):
        values: list[str] | None = flags[name]
        if values is not None:
            flags[name] = tuple(p for value in values for p in value.split(",") if p)
    return flags


def _run_up(args: argparse.Namespace) -> int:
    import anyio

    from devloop.loop.daemon import run

    return anyio.run(run, flags_of(args))


def _run_down(args: argparse.Namespace) -> int:
    from devloop.loop.daemon import down

    return down(flags_of(args))
