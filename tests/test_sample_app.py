"""The sample app builds offline from the local base images and greets with HELLO_MSG."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devloop.kbld.building import BuildResult, Engine, build_image
from devloop.kbld.model import ImageRef, Source
from tests.fixtures.engine import ROOT, BaseImages, Leftovers

APP = ROOT / "sample-app-go"
GO = shutil.which("go") or "/usr/local/go/bin/go"
READY_S = 30.0  # how long the started container may take to answer HTTP


class Collect:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, prefix: str, text: str) -> None:
        self.lines.append(text)


@pytest.fixture
def built(engine: Engine, base_images: BaseImages, leftovers: Leftovers) -> Iterator[BuildResult]:
    out = Collect()
    source = Source(ImageRef(image="ghcr.io/devloop-dev/sample-app-go"), str(APP))
    yield build_image(engine, source, leftovers.image, out)
    assert not [line for line in out.lines if "go: downloading" in line]


def test_the_go_sources_pass_their_own_tests() -> None:
    done = subprocess.run(
        [GO, "test", "./..."], cwd=APP, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/local/go/bin:/usr/bin:/bin", "HOME": "/tmp", "GOTOOLCHAIN": "local",
             "GOPROXY": "off", "GOCACHE": "/tmp/devloop-gocache", "CGO_ENABLED": "0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.docker
def test_the_image_is_a_non_root_static_binary_on_scratch(
    engine: Engine, built: BuildResult
) -> None:
    config = engine.api.inspect_image(built.image_id)["Config"]
    assert config["User"] == "1000"
    assert config["Entrypoint"] == ["/app"]
    assert "8080/tcp" in config["ExposedPorts"]
    history = engine.api.history(built.image_id)
    assert not [step for step in history if "golang" in str(step.get("Tags"))]


@pytest.mark.docker
def test_the_built_app_greets_with_hello_msg(
    engine: Engine, built: BuildResult, leftovers: Leftovers
) -> None:
    container = engine.api.create_container(
        built.tag,
        environment={"HELLO_MSG": leftovers.token},
        ports=[8080],
        host_config=engine.api.create_host_config(port_bindings={8080: ("127.0.0.1", None)}),
    )
    try:
        engine.api.start(container)
        port = engine.api.port(container, 8080)[0]["HostPort"]
        assert get(f"http://127.0.0.1:{port}/") == f"Hello {leftovers.token}!\n"
    finally:
        engine.api.remove_container(container, force=True)


def get(url: str) -> str:
    """The body of `url` once the server answers (it starts asynchronously)."""
    deadline = time.monotonic() + READY_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # polling a server's readiness, not ordering the test


def test_the_build_config_points_at_the_sample_app() -> None:
    text = (ROOT / "config" / "build.yml").read_text()
    assert "path: sample-app-go" in text
    assert Path(ROOT / "sample-app-go" / "Dockerfile").is_file()
