"""The one-time work before pytest: dev-env's steps and build-cluster-binaries' lock and install.

A real cold build takes minutes, so the builder is faked at one seam: a `go` on PATH that
"builds" kwok only once the test allows it. Everything else (flock, the staging directory, the
rename into place, `--cached`) is the real script.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.engine import ROOT

BUILD = ROOT / "scripts" / "build-cluster-binaries"
STEP = ROOT / "scripts" / "lib" / "step.sh"
KWOK = "v0.8.0"
FAKE_GO = """#!/bin/sh
case "$1" in
  env) echo "$FAKE_MODCACHE" ;;
  install)
    echo started >>"$FAKE_LOG"
    while [ ! -e "$FAKE_RELEASE" ]; do sleep 0.02; done
    printf '#!/bin/sh\\n' >"$GOBIN/kwok" && chmod +x "$GOBIN/kwok" ;;
  *) exit 0 ;;
esac
"""


@pytest.fixture
def fake_go(tmp_path: Path) -> dict[str, str]:
    bin_dir, modcache = tmp_path / "fakebin", tmp_path / "modcache"
    bin_dir.mkdir()
    (bin_dir / "go").write_text(FAKE_GO)
    (bin_dir / "go").chmod(0o755)
    stage = modcache / "sigs.k8s.io" / f"kwok@{KWOK}" / "kustomize" / "stage" / "pod"
    stage.mkdir(parents=True)
    (stage / "pod-ready.yaml").write_text("kind: Stage\n")
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DEVLOOP_CACHE_DIR": str(tmp_path / "cache"),
        "KWOK_VERSION": KWOK,
        "FAKE_MODCACHE": str(modcache),
        "FAKE_LOG": str(tmp_path / "go.log"),
        "FAKE_RELEASE": str(tmp_path / "release"),
    }


def start_build(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    argv = [str(BUILD), *args, "kwok"]
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def wait_for_lines(path: Path, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= count):
        assert time.monotonic() < deadline, f"{path} never reached {count} lines"
        time.sleep(0.02)  # polling a file the fake writes, not ordering the test


def test_two_concurrent_builds_build_once_and_both_print_the_same_directory(
    fake_go: dict[str, str],
) -> None:
    log = Path(fake_go["FAKE_LOG"])
    first = start_build(fake_go)
    wait_for_lines(log, 1)  # the first holds the lock, inside its build
    second = start_build(fake_go)
    Path(fake_go["FAKE_RELEASE"]).touch()
    outputs = [proc.communicate(timeout=60) for proc in (first, second)]

    assert [proc.returncode for proc in (first, second)] == [0, 0], outputs
    expected = f"kwok={fake_go['DEVLOOP_CACHE_DIR']}/bin/kwok-{KWOK}\n"
    assert [out for out, _ in outputs] == [expected, expected]
    assert log.read_text().splitlines() == ["started"]


def test_a_killed_build_leaves_nothing_in_place_and_the_next_run_builds_it(
    fake_go: dict[str, str],
) -> None:
    log, bin_dir = Path(fake_go["FAKE_LOG"]), Path(fake_go["DEVLOOP_CACHE_DIR"]) / "bin"
    killed = start_build(fake_go)
    wait_for_lines(log, 1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)

    assert not (bin_dir / f"kwok-{KWOK}").exists()
    cached = subprocess.run(
        [str(BUILD), "--cached", "kwok"], env=fake_go, capture_output=True, text=True, timeout=30
    )
    assert cached.returncode == 1
    assert "run scripts/dev-env" in cached.stderr

    Path(fake_go["FAKE_RELEASE"]).touch()
    again = start_build(fake_go)
    again.communicate(timeout=60)
    assert again.returncode == 0
    assert (bin_dir / f"kwok-{KWOK}" / "kwok").is_file()
    assert (bin_dir / f"kwok-{KWOK}" / "stage" / "pod" / "pod-ready.yaml").is_file()
    assert not (bin_dir / f"kwok-{KWOK}.tmp").exists()
    assert len(log.read_text().splitlines()) == 2


def run_steps(tmp_path: Path, script: str, steps: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEVLOOP_CACHE_DIR": str(tmp_path / "cache"), "STEPS": steps}
    text = f"set -euo pipefail\nsource {STEP}\n{script}"
    return subprocess.run(
        ["bash", "-c", text], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_step_prints_one_line_with_its_time_and_keeps_its_output_in_a_log(
    tmp_path: Path,
) -> None:
    done = run_steps(tmp_path, "say() { echo built it; }\nstep say-hello say\necho after")

    assert done.returncode == 0
    assert done.stdout == "after\n"
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("dev-env: say-hello ... ")
    assert lines[0].endswith(" s")
    assert (tmp_path / "cache/logs/dev-env-say-hello.log").read_text() == "built it\n"


def test_a_failing_step_shows_its_last_lines_and_stops_what_follows(tmp_path: Path) -> None:
    script = "broken() { echo the cause; false; echo never; }\nstep broken broken\necho after"

    done = run_steps(tmp_path, script)

    assert done.returncode == 1
    assert "the cause" in done.stderr
    assert "never" not in done.stderr
    assert "dev-env: broken failed (exit 1)" in done.stderr
    assert done.stdout == ""


def test_steps_not_named_in_steps_are_skipped(tmp_path: Path) -> None:
    done = run_steps(tmp_path, "step one true\nstep two false", steps="one")

    assert done.returncode == 0
    assert "dev-env: one ..." in done.stderr
    assert "two" not in done.stderr


def test_a_step_does_not_hand_its_lock_to_what_it_leaves_running(tmp_path: Path) -> None:
    # A step that starts a daemon (dockerd) must not keep the step's lock held through it.
    script = "spawn() { sleep 30 & echo $! >>pids; }\nstep spawn spawn\nstep spawn spawn"
    (tmp_path / "cache").mkdir()
    done = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\nsource {STEP}\n{script}"],
        env={**os.environ, "DEVLOOP_CACHE_DIR": str(tmp_path / "cache")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    for pid in (tmp_path / "pids").read_text().split():
        os.kill(int(pid), signal.SIGKILL)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("dev-env: spawn ...") == 2


def test_a_step_whose_command_takes_a_lock_of_the_same_name_does_not_wait_for_itself(
    tmp_path: Path,
) -> None:
    # scripts/docker-cli-image locks $DEVLOOP_CACHE_DIR/locks/docker-cli-image.lock itself.
    lock = tmp_path / "cache" / "locks" / "same.lock"
    done = run_steps(tmp_path, f"step same flock {lock} true")

    assert done.returncode == 0, done.stderr
