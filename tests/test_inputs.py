"""Input digests change exactly when what Docker would build from changes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from devloop.errors import InputError
from devloop.kbld.model import DockerBuild, ImageRef, Source
from devloop.loop import inputs
from devloop.loop.inputs import context_files, input_digest

AN_HOUR_AGO = 3600


def make_context(root: Path) -> Source:
    files = {
        "Dockerfile": "FROM scratch\nCOPY . /app\n",
        ".dockerignore": "node_modules\n*.log\n",
        "main.go": "package main\n",
        "pkg/util.go": "package pkg\n",
        "node_modules/dep/index.js": "module.exports = 1\n",
        "debug.log": "noise\n",
    }
    for rel, text in files.items():
        write_old(root / "app" / rel, text)
    return Source(ImageRef(image="app"), str(root / "app"), where="build.yml, document 1")


def write_old(path: Path, text: str) -> None:
    """Write a file whose mtime is an hour old, so its content hash may be cached."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    past = path.stat().st_mtime - AN_HOUR_AGO
    os.utime(path, (past, past))


@pytest.fixture
def source(tmp_path: Path) -> Source:
    return make_context(tmp_path)


def test_context_files_are_what_docker_sends(source: Source) -> None:
    assert context_files(source) == [".dockerignore", "Dockerfile", "main.go", "pkg/util.go"]


def test_rewriting_a_file_with_the_same_content_keeps_the_digest(source: Source) -> None:
    before = input_digest(source)
    (Path(source.path) / "main.go").write_text("package main\n")
    assert input_digest(source) == before


def test_a_real_edit_changes_the_digest(source: Source) -> None:
    before = input_digest(source)
    (Path(source.path) / "pkg/util.go").write_text("package pkg // edited\n")
    assert input_digest(source) != before


def test_a_same_size_edit_that_restores_the_mtime_still_changes_the_digest(
    source: Source,
) -> None:
    path = Path(source.path) / "main.go"
    before = input_digest(source)
    times = (path.stat().st_atime, path.stat().st_mtime)
    path.write_text("package mayn\n")
    os.utime(path, times)
    assert input_digest(source) != before


def test_ignored_files_do_not_change_the_digest(source: Source) -> None:
    before = input_digest(source)
    (Path(source.path) / "debug.log").write_text("more noise\n")
    (Path(source.path) / "node_modules/dep/index.js").write_text("module.exports = 2\n")
    (Path(source.path) / "node_modules/new.js").write_text("new\n")
    assert input_digest(source) == before


def test_new_deleted_and_renamed_files_change_the_digest(source: Source) -> None:
    root = Path(source.path)
    digests = {input_digest(source)}
    (root / "new.go").write_text("package main\n")
    digests.add(input_digest(source))
    (root / "new.go").rename(root / "renamed.go")
    digests.add(input_digest(source))
    (root / "renamed.go").unlink()
    assert input_digest(source) in digests and len(digests) == 3


def test_the_executable_bit_changes_the_digest(source: Source) -> None:
    before = input_digest(source)
    (Path(source.path) / "main.go").chmod(0o755)
    assert input_digest(source) != before


def test_build_options_change_the_digest(source: Source) -> None:
    with_args = Source(source.ref, source.path, DockerBuild(build_args={"VERSION": "2"}))
    with_target = Source(source.ref, source.path, DockerBuild(target="debug"))
    digests = {input_digest(s) for s in (source, with_args, with_target)}
    assert len(digests) == 3


def test_an_ignored_dockerfile_still_counts(source: Source) -> None:
    root = Path(source.path)
    (root / ".dockerignore").write_text("node_modules\n*.log\nDockerfile\n")
    before = input_digest(source)
    (root / "Dockerfile").write_text("FROM scratch\nCOPY main.go /\n")
    assert input_digest(source) != before


def test_a_dockerfile_outside_the_context_counts(tmp_path: Path, source: Source) -> None:
    write_old(tmp_path / "docker" / "app.Dockerfile", "FROM scratch\n")
    outside = Source(source.ref, source.path, DockerBuild(file="../docker/app.Dockerfile"))
    before = input_digest(outside)
    (tmp_path / "docker" / "app.Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    assert input_digest(outside) != before


def test_a_missing_context_is_reported_with_its_place(tmp_path: Path) -> None:
    missing = Source(ImageRef(image="x"), str(tmp_path / "nope"), where="build.yml, document 2")
    with pytest.raises(InputError, match=r"^build.yml, document 2: the build context .*nope"):
        input_digest(missing)


def test_excluded_directories_are_never_listed(
    source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed: list[str] = []
    real_scandir: Callable[[str], object] = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(path) or real_scandir(path))
    input_digest(source)
    assert sorted(Path(p).name for p in listed) == ["app", "pkg"]


def test_a_no_op_save_rereads_only_the_saved_file_and_the_dockerfile(
    source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    input_digest(source)
    (Path(source.path) / "main.go").touch()  # a save that changes nothing
    opened: list[str] = []
    real_hash = inputs._hash_file
    monkeypatch.setattr(inputs, "_hash_file", lambda path: opened.append(path) or real_hash(path))
    input_digest(source)
    assert sorted(Path(p).name for p in opened) == ["Dockerfile", "main.go"]
    opened.clear()
    input_digest(source)
    assert sorted(Path(p).name for p in opened) == ["Dockerfile", "main.go"]
