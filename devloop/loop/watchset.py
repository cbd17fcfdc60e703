"""What `devloop up` watches, and what a change to each path means.

`WatchSet.classify` attributes each changed path: to every image whose context holds it and
whose .dockerignore keeps it, to the manifests (re-render, no build), or to the config (reload).
.git, editor swap files and dockerignored paths are `ignored`: they never start a batch.
`watch_roots` lists the directories to watch, each non-recursively, with excluded trees pruned
before any watch exists. These are decisions over values plus reads of the ignore files and the
directory tree; no watch is held here (the watcher task is in `watching.py`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devloop.errors import InputError
from devloop.kbld import documents
from devloop.kbld.model import Source
from devloop.loop import dockerignore, inputs

MANIFEST_SUFFIXES = documents.EXTENSIONS  # what a manifest directory's loader reads


# -- what changed --------------------------------------------------------------------------


@dataclass
class Changes:
    """One batch: paths by what they affect. Image paths are relative to that image's context."""

    images: dict[str, set[str]] = field(default_factory=dict)
    manifests: set[str] = field(default_factory=set)
    config: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        """Whether anything here should make the loop act."""
        return bool(self.images or self.manifests or self.config)

    def merge(self, other: Changes) -> None:
        for key, paths in other.images.items():
            self.images.setdefault(key, set()).update(paths)
        self.manifests |= other.manifests
        self.config |= other.config
        self.ignored |= other.ignored


# Tilt's list (internal/ignore/ephemeral.go) plus macOS Finder files: editors write and delete
# these around every save; they are never build inputs.
_EPHEMERAL = re.compile(
    r"""(
        4913 | .*~ | \..*\.sw[pxon]          # vim: probe file, backups, swap files
      | \#.*\# | \.\#.*                      # emacs: autosave, lock files
      | .*___jb_(tmp|old)___                 # JetBrains safe-write
      | \..*\.kate-swp                       # kate
      | .*-go-tmp-umask                      # go's umask probe
      | \.DS_Store
    )$""",
    re.VERBOSE,
)
_IGNORED_DIRS = frozenset({".git", ".idea", ".devloop"})  # .devloop: our own logs


def is_ignored_path(path: str) -> bool:
    """True for .git contents and editor temporary files: never a reason to act."""
    parts = path.replace(os.sep, "/").split("/")
    return bool(_IGNORED_DIRS.intersection(parts)) or bool(_EPHEMERAL.match(parts[-1]))


# -- what is watched -----------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """One image's build context as the watcher sees it (absolute, resolved paths)."""

    key: str
    root: Path
    dockerfile: Path
    ignore_file: Path
    matcher: dockerignore.Matcher

    @classmethod
    def load(cls, key: str, source: Source, base: Path) -> Context:
        root, dockerfile = inputs.context_dir(source, base), inputs.dockerfile_path(source, base)
        ignore = dockerignore.ignore_file_for(root, dockerfile)
        return cls(key, root, dockerfile, ignore, dockerignore.load(root, dockerfile))

    @property
    def rule_files(self) -> frozenset[str]:
        """Both places BuildKit looks for ignore rules: creating either may change the rules."""
        specific = self.dockerfile.with_name(self.dockerfile.name + dockerignore.IGNORE_FILE)
        return frozenset(str(p) for p in (self.root / dockerignore.IGNORE_FILE, specific))

    def owns(self, path: str) -> str | None:
        """The context-relative path if a change to `path` changes this image's inputs."""
        if path == str(self.dockerfile) or path in self.rule_files:
            return os.path.relpath(path, self.root)  # may start with ../
        rel = _inside(path, self.root)
        if rel is None or (rel and self.matcher.excluded(rel)):
            return None
        return rel or "."


@dataclass(frozen=True)
class WatchSet:
    """Everything `devloop up` watches, and what a change to each path means."""

    base: Path
    sources: Mapping[str, Source]
    contexts: tuple[Context, ...]
    manifests: tuple[Path, ...] = ()  # manifest files and directories (-f)
    render_inputs: tuple[Path, ...] = ()  # what a render command reads: files or directories
    config: tuple[Path, ...] = ()  # files whose change reloads the config

    def classify(self, paths: Iterable[str]) -> Changes:
        changes = Changes()
        for path in paths:
            self._classify_one(os.path.abspath(path), changes)
        return changes

    def _classify_one(self, path: str, changes: Changes) -> None:
        shown = _relative(path, self.base)
        if is_ignored_path(path):
            changes.ignored.add(shown)
            return
        for context in self.contexts:
            rel = context.owns(path)
            if rel is not None:
                changes.images.setdefault(context.key, set()).add(rel)
        if self._is_manifest(path):
            changes.manifests.add(shown)
        if path in {str(p) for p in self.config}:
            changes.config.add(shown)
        if not changes.images and not changes.manifests and not changes.config:
            changes.ignored.add(shown)

    def _is_manifest(self, path: str) -> bool:
        for root in self.manifests + self.render_inputs:
            rel = _inside(path, root)
            if rel == "" or (
                rel and (root in self.render_inputs or rel.endswith(MANIFEST_SUFFIXES))
            ):
                return True
        return False

    def touches_ignore_rules(self, paths: Iterable[str]) -> bool:
        rules = frozenset().union(*(c.rule_files for c in self.contexts))
        return any(os.path.abspath(p) in rules for p in paths)

    def reloaded(self) -> WatchSet:
        """The same set with the ignore files read again; itself if one is now invalid (the
        image's next build reports the bad line, since the change counts for that image)."""
        try:
            return watch_set(
                self.sources, self.manifests, self.render_inputs, self.config, self.base
            )
        except InputError:
            return self


def watch_set(
    sources: Mapping[str, Source],
    manifests: Sequence[str | Path] = (),
    render_inputs: Sequence[str | Path] = (),
    config: Sequence[str | Path] = (),
    base: Path | None = None,
) -> WatchSet:
    """Build a WatchSet (reads each context's .dockerignore; raises InputError on bad lines)."""
    base = (base or Path.cwd()).resolve()
    contexts = tuple(Context.load(key, source, base) for key, source in sources.items())
    return WatchSet(
        base,
        dict(sources),
        contexts,
        _resolved(base, manifests),
        _resolved(base, render_inputs),
        _resolved(base, config),
    )


def watch_roots(watchset: WatchSet) -> list[Path]:
    """The directories to watch, each non-recursively; excluded trees are never listed."""
    dirs: set[Path] = set()
    for context in watchset.contexts:
        dirs |= _context_dirs(context)
        dirs |= {_existing(context.dockerfile.parent), _existing(context.ignore_file.parent)}
    for path in watchset.manifests + watchset.render_inputs:
        dirs |= _tree_dirs(path) if path.is_dir() else {_existing(path.parent)}
    dirs |= {_existing(path.parent) for path in watchset.config}
    return sorted(dirs)


def _context_dirs(context: Context) -> set[Path]:
    if not context.root.is_dir():
        return {_existing(context.root)}
    walked = dockerignore.walk(context.root, context.matcher, _pruned)
    return {context.root} | {Path(e.path) for _, e, _ in walked if e.is_dir(follow_symlinks=False)}


def _tree_dirs(root: Path) -> set[Path]:
    walked = dockerignore.walk(root, dockerignore.Matcher([]), _pruned)
    return {root} | {Path(e.path) for _, e, _ in walked if e.is_dir(follow_symlinks=False)}


def _pruned(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1] in _IGNORED_DIRS


def _existing(path: Path) -> Path:
    """`path`, or its nearest existing ancestor (whose events will show `path` appearing)."""
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def _resolved(base: Path, paths: Sequence[str | Path]) -> tuple[Path, ...]:
    return tuple((base / p).resolve() for p in paths)


def _inside(path: str, root: Path) -> str | None:
    """`path` relative to `root` ("" for root itself), or None when outside."""
    top = str(root)
    if path == top:
        return ""
    return path[len(top) + 1 :] if path.startswith(top.rstrip("/") + "/") else None


def _relative(path: str, root: Path) -> str:
    rel = _inside(path, root)
    return path if rel is None else (rel or ".")
