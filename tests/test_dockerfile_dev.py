"""Dockerfile.dev: devloop's own image runs devloop against the host engine through its socket.

The image is built from this checkout as the README says, with two differences forced by a
machine that reaches no registry: its base images are the local stand-ins scripts/dev-env makes
under the public names, and pip installs offline from the wheels dev-env downloaded, served on
127.0.0.1 (the build runs on the host network to reach them). Nothing here builds those: a
missing one fails at once with "run scripts/dev-env".
"""

from __future__ import annotations

import functools
import http.server
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

import devloop
from devloop.kbld.building import Engine
from tests.fixtures.engine import ROOT, Leftovers, tiny_context

pytestmark = pytest.mark.docker
CACHE = Path(os.environ.get("DEVLOOP_CACHE_DIR") or Path.home() / ".cache" / "devloop")
WHEELS = CACHE / "wheels"
BASES = ("python:3.11-slim-bookworm", "docker:28-cli")  # Dockerfile.dev's default build args
RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def wheel_index() -> Iterator[str]:
    """An HTTP directory listing of the wheels on a free 127.0.0.1 port: pip's --find-links."""
    if not any(WHEELS.glob("*.whl")):
        pytest.fail(f"no wheels in {WHEELS}: run scripts/dev-env", pytrace=False)
    handler = functools.partial(_QuietHandler, directory=str(WHEELS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def dev_image(engine: Engine, wheel_index: str) -> Iterator[str]:
    for base in BASES:
        try:
            engine.api.inspect_image(base)
        except docker.errors.ImageNotFound:
            pytest.fail(f"the base image {base} is missing: run scripts/dev-env", pytrace=False)
    tag = f"devloop.test/{secrets.token_hex(5)}-devloop-dev:latest"
    output = list(
        engine.api.build(
            path=str(ROOT),
            dockerfile="Dockerfile.dev",
            tag=tag,
            rm=True,
            forcerm=True,
            network_mode="host",
            buildargs={"PIP_OPTIONS": f"--no-index --find-links {wheel_index}"},
            decode=True,
        )
    )
    errors = [chunk["error"] for chunk in output if "error" in chunk]
    if errors:
        tail = "".join(chunk.get("stream", "") for chunk in output)[-3000:]
        pytest.fail(f"building Dockerfile.dev failed: {errors[0]}\n{tail}", pytrace=False)
    yield tag
    engine.api.remove_image(tag, noprune=False)


def docker_run(
    image: str, *args: str, mounts: tuple[str, ...] = (), cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    workdir = ("-v", f"{cwd}:{cwd}", "-w", str(cwd)) if cwd else ()
    argv = ["docker", "run", "--rm", *mounts, *workdir, image, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


def engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert host.startswith("unix://"), "these tests mount the engine's unix socket"
    return host.removeprefix("unix://")


def test_the_image_runs_devloop_version(dev_image: str) -> None:
    done = docker_run(dev_image, "version")

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"devloop version {devloop.__version__}\n"


def test_the_image_has_the_docker_cli_and_reaches_the_host_engine(dev_image: str) -> None:
    sock = engine_socket()
    mounts = ("-v", f"{sock}:/var/run/docker.sock", "--entrypoint", "docker")

    done = docker_run(dev_image, "version", "--format", "{{.Server.Version}}", mounts=mounts)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_the_image_has_buildx_when_the_cli_image_has_it(dev_image: str, engine: Engine) -> None:
    labels = engine.api.inspect_image(BASES[1])["Config"].get("Labels") or {}
    if labels.get("devloop.buildx", "yes") == "no":
        pytest.skip(f"{BASES[1]} was made without a buildx plugin (none on this host)")
    mounts = ("--entrypoint", "docker")

    done = docker_run(dev_image, "buildx", "version", mounts=mounts)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("github.com/docker/buildx ")


def test_resolve_in_the_image_builds_a_source_through_the_host_engine(
    dev_image: str, engine: Engine, leftovers: Leftovers, tmp_path: Path
) -> None:
    tiny_context(tmp_path / "app")
    (tmp_path / "build.yml").write_text(
        "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\n"
        f"sources:\n- image: {leftovers.image}\n  path: app\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        f"spec:\n  containers:\n  - name: c\n    image: {leftovers.image}\n"
    )
    mounts = ("-v", f"{engine_socket()}:/var/run/docker.sock")

    done = docker_run(dev_image, "resolve", "-f", "build.yml", mounts=mounts, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    built = next(line.split()[-1] for line in done.stdout.splitlines() if "image: kbld:" in line)
    assert engine.api.inspect_image(built)["Id"].startswith("sha256:")  # in the host's engine
    assert f"resolve | final: {leftovers.image} -> {built}" in done.stderr
