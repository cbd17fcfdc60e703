"""Differential: the files devloop hashes for a build are the files BuildKit sends.

An image copies its whole context and lists it during the build; the listing must equal
devloop's own context file set (`inputs.context_files`, which the watcher and the input digest
use) over tricky `.dockerignore` patterns, on the engine's BuildKit and on a current one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from devloop.kbld.building import Engine, build_image
from devloop.kbld.model import DockerBuild, ImageRef, Source
from devloop.loop.inputs import context_files
from tests.fixtures.buildkit import RemoteBuilder, buildx_plugin
from tests.fixtures.engine import Leftovers

pytestmark = pytest.mark.docker

FILES = (
    *("a.log", "keep/x.log", "keep/deep/y.log", "sub/z.log", "anchored.txt", "sub/anchored.txt"),
    *("build/out.bin", "build/sub/o2", "docs/a.md", "docs/README.md", "docs/sub/README.md"),
    *("x/tmp", "x/y/tmp", "node_modules/pkg/index.js", "src/main.go", ".hidden", "src/notes.txt"),
    *("only-here.txt", "deep/er/only-here.txt"),
)
IGNORE = """# tricky on purpose
**/*.log
!keep/**/*.log
/anchored.txt
build/
docs/**
!docs/README.md
*/tmp
node_modules
**/only-here.txt
!deep/**
"""
SPECIFIC = "src/\n*.txt\n"  # app.Dockerfile.dockerignore: replaces .dockerignore for app.Dockerfile
LISTING = re.compile(r"^#\d+ listed:\./(.+)$")


class Lines:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def line(self, prefix: str, text: str) -> None:
        self.texts.append(text)


def make_context(root: Path, dockerfile: str, name: str = "Dockerfile") -> Path:
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / "link").symlink_to("src/main.go")
    (root / ".dockerignore").write_text(IGNORE)
    (root / "app.Dockerfile.dockerignore").write_text(SPECIFIC)
    (root / name).write_text(dockerfile)
    return root


def listed(engine: Engine, source: Source, image: str) -> list[str]:
    out = Lines()
    build_image(engine, source, image, out)
    found = [m[1] for text in out.texts if (m := LISTING.match(text))]
    return sorted(found)


def dockerfile(base: str, token: str) -> str:
    # COPY leaves out the Dockerfile and ignore files when the patterns exclude them (they are
    # still sent, and devloop counts them), so the comparison sets them aside on both sides.
    return (
        f"FROM {base}\nCOPY . /ctx\n"
        f"RUN cd /ctx && find . -type f -o -type l | sort | sed 's/^/listed:/'  # {token}\n"
    )


AFFIX = {"Dockerfile", "app.Dockerfile", ".dockerignore", "app.Dockerfile.dockerignore"}


@pytest.fixture(params=["engine-buildkit", "current-buildkit"])
def builder(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Engine, str]:
    """(an engine building with BuildKit, the base image reference its builder can reach)."""
    if request.param == "current-buildkit":
        remote: RemoteBuilder = request.getfixturevalue("remote_builder")
        return remote.engine(), "busybox"
    config = tmp_path_factory.mktemp("docker-config")
    (config / "cli-plugins").mkdir()
    (config / "cli-plugins" / "docker-buildx").symlink_to(buildx_plugin())
    request.getfixturevalue("base_images")
    return Engine(env={**os.environ, "DOCKER_CONFIG": str(config)}), "devloop.local/busybox:1"


@pytest.mark.parametrize("file", [None, "app.Dockerfile"])
def test_buildkit_sends_exactly_the_files_devloop_hashes(
    builder: tuple[Engine, str], file: str | None, tmp_path: Path, leftovers: Leftovers
) -> None:
    engine, base = builder
    root = make_context(tmp_path / "ctx", dockerfile(base, leftovers.token), file or "Dockerfile")
    source = Source(ImageRef(image="app"), str(root), DockerBuild(file=file))
    mine = sorted(set(context_files(source)) - AFFIX)
    theirs = sorted(set(listed(engine, source, leftovers.image)) - AFFIX)
    assert theirs == mine
    if file is None:  # the patterns did something
        assert "keep/deep/y.log" in mine and "a.log" not in mine
    else:  # and the Dockerfile's own ignore file replaced .dockerignore
        assert "a.log" in mine and "src/main.go" not in mine and "only-here.txt" not in mine
    engine.close()
