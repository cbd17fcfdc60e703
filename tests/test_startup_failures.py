"""`devloop up` failing to start, as a user sees it: one `devloop: Error:` line, exit 1.

Errors raised inside the daemon's task groups arrive at the CLI wrapped in exception groups;
each test here provokes one real start-up failure and checks that stderr is exactly that one
line naming the culprit, never a traceback. The app has no Source, so nothing is built.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devloop.cli import expected_error
from devloop.errors import DevloopError, InputError
from tests.fixtures.engine import ROOT

RUN_TIMEOUT_S = 60.0
CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: greeting}\ndata: {msg: hi}\n"
# A kubeconfig the client accepts; nothing listens on port 1, so deploys are retried quietly.
UNREACHABLE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "configmap.yml").write_text(CONFIGMAP)
    return tmp_path


def up(
    cwd: Path, *args: str, env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    argv = [*wrap, sys.executable, "-m", "devloop.cli", "up", "--log-format", "json", *args]
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], *culprits: str) -> None:
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("devloop: Error: "), done.stderr
    for culprit in culprits:
        assert culprit in lines[0]


def test_an_unreachable_docker_engine_is_one_line_naming_docker_host(app: Path) -> None:
    done = up(app, "--target", "docker", env={"DOCKER_HOST": "unix:///nowhere"})
    assert_one_error_line(done, "cannot reach the Docker engine", "unix:///nowhere")


def test_a_kubeconfig_that_is_not_yaml_is_one_line_naming_the_file_and_place(app: Path) -> None:
    (app / "kubeconfig").write_text("clusters: [{name: c\n")
    done = up(app, "--kubeconfig", "kubeconfig")
    assert_one_error_line(done, "kubeconfig kubeconfig: not YAML", "line 2")


def test_a_kubeconfig_that_is_yaml_but_no_kubeconfig_is_one_line(app: Path) -> None:
    (app / "kubeconfig").write_text("clusters: 5\n")
    done = up(app, "--kubeconfig", "kubeconfig")
    assert_one_error_line(done, "kubeconfig kubeconfig: not a kubeconfig")


def test_a_missing_kubeconfig_is_one_line_naming_it(app: Path) -> None:
    done = up(app, "--kubeconfig", "nothere")
    assert_one_error_line(done, "kubeconfig nothere: no such file")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_the_inotify_watch_limit_is_one_line_saying_which_sysctl_to_raise(app: Path) -> None:
    # A real limit, in a user namespace of its own: user.max_inotify_watches is counted per
    # namespace, so this changes nothing on the host and goes away with the process.
    (app / "kubeconfig").write_text(UNREACHABLE_KUBECONFIG)
    limit = 'echo 0 >/proc/sys/user/max_inotify_watches && exec "$@"'
    in_namespace = ("unshare", "-U", "-r", "sh", "-c", limit, "-")
    done = up(app, "--kubeconfig", "kubeconfig", wrap=in_namespace)
    assert_one_error_line(done, "cannot watch", "fs.inotify.max_user_watches")


def test_a_group_of_expected_errors_and_cancellations_yields_its_first_error() -> None:
    import asyncio

    first = InputError("kubeconfig k", "not YAML")
    inner = BaseExceptionGroup("inner", [asyncio.CancelledError(), first])
    assert expected_error(BaseExceptionGroup("outer", [inner, DevloopError("later")])) is first


def test_a_group_holding_a_bug_is_not_expected() -> None:
    group = BaseExceptionGroup("g", [DevloopError("fine"), KeyError("a bug")])
    assert expected_error(group) is None
