"""Origins of built images, against real temporary git repositories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devloop.kbld.origins import NO_COMMITS, UNKNOWN_REMOTE, local_and_git_origins, redact_url


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit of app/main.go."""
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.go").write_text("package main\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def git_details(path: Path) -> dict[str, object]:
    origins = local_and_git_origins(str(path))
    assert len(origins) == 2
    details = origins[1]["git"]
    assert isinstance(details, dict)
    return details


def test_a_directory_outside_git_has_only_its_absolute_local_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert local_and_git_origins("app") == ({"local": {"path": str(tmp_path / "app")}},)


def test_a_clean_checkout_records_head_and_no_tags(repo: Path) -> None:
    details = git_details(repo / "app")
    assert details == {
        "remoteURL": UNKNOWN_REMOTE,
        "sha": git(repo, "rev-parse", "HEAD"),
        "dirty": False,
    }


def test_an_edited_file_makes_the_origin_dirty(repo: Path) -> None:
    (repo / "app" / "main.go").write_text("package main // edited\n")
    assert git_details(repo / "app")["dirty"] is True


def test_an_untracked_file_makes_the_origin_dirty(repo: Path) -> None:
    (repo / "app" / "new.go").write_text("package main\n")
    assert git_details(repo / "app")["dirty"] is True


def test_a_repository_without_commits_says_so(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    details = git_details(tmp_path)
    assert details["sha"] == NO_COMMITS
    assert details["dirty"] is False


def test_tags_on_head_are_listed(repo: Path) -> None:
    git(repo, "tag", "v1.2.3")
    assert git_details(repo)["tags"] == ["v1.2.3"]


def test_credentials_in_the_remote_url_are_redacted(repo: Path) -> None:
    git(repo, "remote", "add", "origin", "https://alice:s3cret@git.example.com/team/app.git")
    details = git_details(repo)
    assert details["remoteURL"] == "https://_redacted_@git.example.com/team/app.git"
    assert "s3cret" not in repr(local_and_git_origins(str(repo)))


def test_git_complaints_do_not_reach_the_terminal(
    repo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    local_and_git_origins(str(repo))  # `describe --exact-match` fails: HEAD has no tag
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@h.example/x", "https://_redacted_@h.example/x"),
        ("https://token@h.example:8443/x", "https://_redacted_@h.example:8443/x"),
        ("https://h.example/x", "https://h.example/x"),
        ("git@github.com:org/app.git", "git@github.com:org/app.git"),
        ("ssh://git@h.example/x", "ssh://_redacted_@h.example/x"),
    ],
)
def test_remote_urls_lose_their_credentials_but_keep_their_shape(url: str, expected: str) -> None:
    assert redact_url(url) == expected
