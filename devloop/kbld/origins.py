"""Where a built image came from, recorded in the `kbld.k14s.io/images` annotation.

kbld records the source directory and, when it sits in a git work tree, the commit, remote,
dirtiness and exact tags, so `kbld inspect` (and `devloop inspect`) can answer "what code is this
pod running?". We produce the same origins in kbld's current format, with two fixes: git's
complaints ("fatal: No names found") are captured instead of leaking to the terminal, and
credentials in a remote URL are redacted before they can reach a cluster.
"""

from __future__ import annotations

import os
import subprocess
from urllib.parse import urlsplit, urlunsplit

from devloop.kbld.model import Origin

NO_COMMITS = "<no commits>"
UNKNOWN_REMOTE = "<unknown>"
REDACTED = "_redacted_"
GIT_TIMEOUT_S = 10.0  # per git command; a hung credential helper must not hang a build

# No prompts (a remote needing a password must fail, not wait for a terminal), stable messages.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


def local_and_git_origins(path: str) -> tuple[Origin, ...]:
    """`{"local": ...}` for `path`, then `{"git": ...}` when it is inside a git work tree."""
    directory = os.path.abspath(path)
    local: Origin = {"local": {"path": directory}}
    git = git_origin(directory)
    return (local,) if git is None else (local, git)


def git_origin(directory: str) -> Origin | None:
    """The git origin of `directory`, or None when it is not in a work tree (or git is absent)."""
    if _git(directory, "rev-parse", "--git-dir") is None:
        return None
    details: dict[str, object] = {
        "remoteURL": redact_url(_git(directory, "ls-remote", "--get-url") or UNKNOWN_REMOTE),
        "sha": _git(directory, "rev-parse", "HEAD") or NO_COMMITS,
        "dirty": bool(_git(directory, "status", "--short")),
    }
    tags = (_git(directory, "describe", "--tags", "--exact-match", "HEAD") or "").split()
    if tags:
        details["tags"] = tags
    return {"git": details}


def redact_url(url: str) -> str:
    """`https://user:pw@host/x` -> `https://_redacted_@host/x`; scp-style `git@host:x` is kept."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))


def _git(directory: str, *args: str) -> str | None:
    """Stripped stdout of a successful git command; None when it fails or cannot run."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=directory,
            env={**os.environ, **_GIT_ENV},
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
