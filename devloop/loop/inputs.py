"""Input digests: one hash of everything a docker build of a Source reads.

The build lanes skip a build when the inputs equal those of the image they already have, so a
save that changes nothing (an editor rewriting the same bytes, a `touch`, a branch switch and
back) costs a directory walk instead of a build. Content is hashed, never trusted from mtimes
(Skaffold's and DevSpace's mtime checks cause spurious rebuilds); mtimes only decide whether a
cached content hash can be reused.

What counts: the files Docker sends (after .dockerignore, walking the way BuildKit walks), each
as (relative path, type and permission bits, content hash; a symlink by its target), plus the
Dockerfile even when it is ignored or outside the context, plus the build options.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from devloop.errors import InputError
from devloop.kbld.model import Source
from devloop.loop import dockerignore

DIGEST_VERSION = b"devloop-inputs/1\n"
# A file modified this recently may change again within the filesystem's timestamp granularity
# without its (size, mtime) changing, so its hash is not cached (git's "racy clean" problem).
RACY_NS = 1_000_000_000

StatKey = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


Hashes = dict[str, tuple[StatKey, str]]  # relative path -> (stat key, content hash)

# Per context directory: the hashes of the last walk. Replaced whole after each walk, so files
# that are gone are forgotten and concurrent walks (one thread per lane) never see a half-dict.
_caches: dict[str, Hashes] = {}
_caches_lock = threading.Lock()


@dataclass
class _Hasher:
    """Hashes one walk's entries, reusing the previous walk's hashes when the stat key matches."""

    previous: Hashes
    fresh: Hashes = field(default_factory=dict)

    def line(self, entry: os.DirEntry[str], rel: str) -> str:
        info = entry.stat(follow_symlinks=False)
        mode = f"{stat.S_IFMT(info.st_mode):o}:{stat.S_IMODE(info.st_mode):o}"
        if entry.is_symlink():
            return f"{mode} link:{os.readlink(entry.path)}"
        if not entry.is_file(follow_symlinks=False):
            return f"{mode} special"  # sockets, fifos: Docker sends them as empty entries
        key: StatKey = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
        return f"{mode} {self.content(entry.path, rel, key)}"

    def content(self, path: str, rel: str, key: StatKey) -> str:
        cached = self.previous.get(rel)
        if cached is not None and cached[0] == key:
            self.fresh[rel] = cached
            return cached[1]
        started = time.time_ns()
        content = _hash_file(path)
        if started - key[1] > RACY_NS:
            self.fresh[rel] = (key, content)
        return content


def context_dir(source: Source, base: Path | None = None) -> Path:
    """The absolute, symlink-free build context directory of `source`."""
    return ((base or Path.cwd()) / source.path).resolve()


def dockerfile_path(source: Source, base: Path | None = None) -> Path:
    """The Dockerfile; `docker.file` is relative to the context and may lie outside it."""
    return (context_dir(source, base) / (source.docker.file or "Dockerfile")).resolve()


def matcher_for(source: Source, base: Path | None = None) -> dockerignore.Matcher:
    return dockerignore.load(context_dir(source, base), dockerfile_path(source, base))


def context_files(source: Source, base: Path | None = None) -> list[str]:
    """The relative paths of the files and symlinks Docker sends for `source`, sorted."""
    root = _existing_context(source, base)
    walked = dockerignore.walk(root, matcher_for(source, base))
    return sorted(rel for rel, entry, excluded in walked if not excluded and not entry.is_dir())


def input_digest(source: Source, base: Path | None = None) -> str:
    """`sha256:<hex>` over the context files, the Dockerfile and the build options."""
    root = _existing_context(source, base)
    digest = hashlib.sha256(DIGEST_VERSION)
    digest.update(_options(source).encode() + b"\n")
    digest.update(b"dockerfile\0" + _dockerfile_hash(source, base).encode() + b"\n")
    with _caches_lock:
        hasher = _Hasher(_caches.get(str(root), {}))
    for rel, line in sorted(_entries(root, matcher_for(source, base), hasher)):
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + line + b"\n")
    with _caches_lock:
        _caches[str(root)] = hasher.fresh
    return "sha256:" + digest.hexdigest()


def _existing_context(source: Source, base: Path | None) -> Path:
    root = context_dir(source, base)
    if not root.is_dir():
        raise InputError(
            source.where or source.path,
            f"the build context {root} is not a directory",
            "Create it or fix the Source's path.",
        )
    return root


def _options(source: Source) -> str:
    build = source.docker
    return json.dumps(
        {
            "file": build.file or "Dockerfile",
            "target": build.target,
            "pull": build.pull,
            "no_cache": build.no_cache,
            "build_args": sorted(build.build_args.items()),
            "platform": build.platform,
            "raw_options": list(build.raw_options),
        },
        sort_keys=True,
    )


def _dockerfile_hash(source: Source, base: Path | None) -> str:
    path = dockerfile_path(source, base)
    try:
        return _hash_file(str(path))
    except (FileNotFoundError, IsADirectoryError):
        raise InputError(
            source.where or source.path,
            f"the Dockerfile {path} does not exist",
            "Create it or fix the Source's docker.build.file.",
        ) from None


def _entries(root: Path, matcher: dockerignore.Matcher, hasher: _Hasher) -> list[tuple[str, bytes]]:
    """(relative path, "type:mode content-hash") of every file and symlink Docker sends."""
    lines = []
    for rel, entry, excluded in dockerignore.walk(root, matcher):
        if excluded or entry.is_dir(follow_symlinks=False):
            continue
        try:
            lines.append((rel, hasher.line(entry, rel).encode()))
        except (FileNotFoundError, NotADirectoryError):
            continue  # deleted while we walked; its deletion event triggers another walk
    return lines


def _hash_file(path: str) -> str:
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except PermissionError:
        return "unreadable"  # docker build fails on it and says so; no need to fail here
