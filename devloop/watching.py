"""The watcher: file events in, one attributed batch of changes out per quiet period.

Three concerns, each pure except the last:
- `Debouncer` decides when a burst of events is over: after a quiet period (default 100 ms),
  or at the latest a cap after the burst began (default 2 s), so a file that never stops
  changing (a log inside a context) cannot starve the loop. Tilt uses 200 ms / 10 s; we wait
  less because builds are cancellable: a second event after an early batch supersedes the
  build it started instead of queueing behind it. `--debounce-ms` and `--max-wait-ms` set them.
- `WatchSet.classify` attributes each path: to every image whose context holds it and whose
  .dockerignore keeps it, to the manifests (re-render, no build), or to the config (reload).
  .git, editor swap files and dockerignored paths are `ignored`: they never start a batch.
- `watcher` runs watchfiles. Excluded directories are pruned BEFORE watches are added: every
  kept directory gets its own non-recursive watch, and when a kept directory appears or goes the
  watch is restarted (the new one is in place before the old one stops, and files already in a
  new directory are reported). Recursive watching would put an inotify watch on every directory
  of node_modules; see bench/watch.py for both measured.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from devloop import dockerignore, inputs
from devloop.errors import InputError, PermanentError
from devloop.model import Source

DEFAULT_QUIET_S = 0.1  # quiet period after the last event, seconds (--debounce-ms)
DEFAULT_MAX_WAIT_S = 2.0  # cap from the first event of a burst, seconds (--max-wait-ms)
# watchfiles returns a group of events once none arrived for this long, and wakes up this often
# when idle: 10 ms gives a 21 ms save-to-batch floor for 0.3% idle CPU (20 ms: 41 ms, 0.23%).
STEP_MS = 10
RUST_TIMEOUT_MS = 5_000  # watchfiles returns to Python this often when idle
MANIFEST_SUFFIXES = (".yml", ".yaml", ".json")  # what a manifest directory's loader reads

RawBatch = set[tuple[Any, str]]  # watchfiles' (Change, path) pairs


# The seam: `watchfiles.awatch`, or a scripted async generator in tests.
AWatch = Callable[..., AsyncIterator[RawBatch]]


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


class Debouncer:
    """Collects changes until a quiet period passes or the cap since the first one is hit.

    With `leading`, the first change after a quiet period is due at once (a single save starts
    its build within the watcher's own ~20 ms), and the rest of a burst is collected as usual
    into one trailing batch: a burst costs at most two builds, the first of which the trailing
    batch cancels when its inputs differ.
    Pure: the caller passes the time, so tests drive it with made-up clocks.
    """

    def __init__(
        self,
        quiet: float = DEFAULT_QUIET_S,
        max_wait: float = DEFAULT_MAX_WAIT_S,
        leading: bool = False,
    ):
        self.quiet, self.max_wait, self.leading = quiet, max_wait, leading
        self._pending: Changes | None = None
        self._first = self._last = 0.0
        self._previous: float | None = None  # the time of the newest change, taken or not
        self._now = False  # the pending batch is a leading edge: due at once

    def add(self, changes: Changes, now: float) -> None:
        if not changes:
            if self._pending is not None:
                self._pending.merge(changes)  # ignored paths ride along for the record
            return
        if self._pending is None:
            idle = self._previous is None or now - self._previous >= self.quiet
            self._pending, self._first, self._now = Changes(), now, self.leading and idle
        self._pending.merge(changes)
        self._last = self._previous = now

    def deadline(self) -> float | None:
        if self._pending is None:
            return None
        if self._now:
            return self._first
        return min(self._last + self.quiet, self._first + self.max_wait)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self) -> Changes:
        taken, self._pending = self._pending or Changes(), None
        return taken


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

    def explain(self, path: str) -> str:
        """Why a change to `path` is ignored, naming the rule: for "why didn't it rebuild?"."""
        path = os.path.abspath(path)
        if is_ignored_path(path):
            return "a .git or editor temporary file"
        reasons = [
            f"excluded from {c.key} by {_relative(str(c.ignore_file), self.base)} line "
            f"{c.matcher.rule_for(rel)!r}"
            for c in self.contexts
            if (rel := _inside(path, c.root)) and c.matcher.excluded(rel)
        ]
        return "; ".join(reasons) or "outside every build context, manifest and config file"

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


def inotify_watch_count(pid: int | str = "self") -> int:
    """The inotify watches a process holds (Linux; 0 elsewhere), for the watch-budget report."""
    count = 0
    try:
        fds = os.scandir(f"/proc/{pid}/fdinfo")
    except OSError:
        return 0
    for entry in fds:
        try:
            with open(entry.path) as info:
                count += sum(line.startswith("inotify wd:") for line in info)
        except OSError:
            continue
    return count


# -- the watcher task ----------------------------------------------------------------------


class _ReadyProbe:
    """Given to awatch as its stop event. watchfiles calls `is_set()` from its worker thread
    every step once the OS watches exist, so the first call says the watches are in place."""

    def __init__(self) -> None:
        self.ready = anyio.Event()
        self.stopped = False
        self._fired = False
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()

    def is_set(self) -> bool:
        if not self._fired:
            self._fired = True
            if threading.get_ident() == self._loop_thread:
                self.ready.set()
            else:
                anyio.from_thread.run_sync(self.ready.set, token=self._token)
        return self.stopped

    def set(self) -> None:
        self.stopped = True


@dataclass(frozen=True)
class _Options:
    awatch: AWatch
    rust_debounce_ms: int


async def _pump(
    options: _Options,
    dirs: Sequence[Path],
    out: MemoryObjectSendStream[RawBatch | None],
    *,
    task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Forward one awatch generator's batches; report ready once its watches are in place.

    A natural end of the generator is passed on as None (the watcher then finishes).
    """
    probe = _ReadyProbe()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_forward, options, dirs, probe, out)
            tg.start_soon(_stop_when_cancelled, probe)
            await probe.ready.wait()
            task_status.started(scope)


async def _forward(
    options: _Options,
    dirs: Sequence[Path],
    probe: _ReadyProbe,
    out: MemoryObjectSendStream[RawBatch | None],
) -> None:
    batches = options.awatch(
        *(str(d) for d in dirs),
        watch_filter=None,  # we classify everything ourselves
        debounce=options.rust_debounce_ms,
        step=STEP_MS,
        stop_event=probe,
        rust_timeout=RUST_TIMEOUT_MS,
        recursive=False,
        force_polling=False,
    )
    try:
        async for batch in batches:
            probe.ready.set()  # a scripted generator never calls is_set()
            await out.send(batch)
        await out.send(None)
    except OSError as error:
        raise _watch_failed(len(dirs), error) from error
    finally:
        probe.ready.set()


def _watch_failed(count: int, error: OSError) -> PermanentError:
    return PermanentError(
        f"cannot watch {count} directories: {error}. If the inotify limits are reached, raise "
        "them (sysctl fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512) "
        "or exclude large directories in .dockerignore"
    )


async def _stop_when_cancelled(probe: _ReadyProbe) -> None:
    """Cancelling awatch waits for its worker thread, which only stops when told via the stop
    event: without this, every restart and shutdown would take up to RUST_TIMEOUT_MS."""
    try:
        await anyio.sleep_forever()
    finally:
        probe.set()


class _Timeout:
    """Marks "the deadline passed before anything arrived"."""


async def _receive(
    raw: MemoryObjectReceiveStream[RawBatch | None], deadline: float | None, clock: Clock
) -> RawBatch | _Timeout | None:
    if deadline is None:
        return await raw.receive()
    with anyio.move_on_after(max(0.0, deadline - clock())):
        return await raw.receive()
    return _Timeout()


Clock = Callable[[], float]


@dataclass
class _Watch:
    """The watcher's mutable state: the watch set, the watched directories, the live pump."""

    watchset: WatchSet
    options: _Options
    raw_send: MemoryObjectSendStream[RawBatch | None]
    dirs: set[Path] = field(default_factory=set)
    scope: anyio.CancelScope | None = None

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self.dirs = set(watch_roots(self.watchset))
        self.scope = await tg.start(_pump, self.options, sorted(self.dirs), self.raw_send)

    async def on_batch(self, tg: anyio.abc.TaskGroup, batch: RawBatch) -> Changes:
        paths = {path for _, path in batch}
        changes = self.watchset.classify(paths)
        if self.watchset.touches_ignore_rules(paths):
            self.watchset = self.watchset.reloaded()
        if any(self._may_change_dirs(path) for path in paths):
            changes.merge(await self._rewatch(tg))
        return changes

    def _may_change_dirs(self, path: str) -> bool:
        return (
            Path(path) in self.dirs
            or os.path.isdir(path)
            or self.watchset.touches_ignore_rules([path])
        )

    async def _rewatch(self, tg: anyio.abc.TaskGroup) -> Changes:
        """Restart the watch if the directories changed; report files in new directories."""
        old_dirs, old_scope = self.dirs, self.scope
        if set(watch_roots(self.watchset)) == old_dirs:
            return Changes()
        await self.start(tg)  # the new watch is live before the old one stops: no gap
        if old_scope is not None:
            old_scope.cancel()
        return self.watchset.classify(_files_in(self.dirs - old_dirs))


def _files_in(dirs: Iterable[Path]) -> list[str]:
    found = []
    for directory in dirs:
        try:
            found += [e.path for e in os.scandir(directory) if not e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
    return found


async def watcher(
    watchset: WatchSet,
    send: MemoryObjectSendStream[Changes],
    *,
    quiet: float = DEFAULT_QUIET_S,
    max_wait: float = DEFAULT_MAX_WAIT_S,
    leading: bool = False,
    clock: Clock = anyio.current_time,
    awatch: AWatch | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Send one `Changes` per quiet period (or cap) until the watch ends; then close `send`.

    `task_status.started()` is called once the OS watches are in place, so a file written after
    `await tg.start(watcher, ...)` returns is seen.
    """
    if awatch is None:
        from watchfiles import awatch as real_awatch  # imported late: 0.13 s at start-up

        awatch = real_awatch
    options = _Options(awatch, rust_debounce_ms=max(STEP_MS, round(quiet * 1000)))
    raw_send, raw_receive = anyio.create_memory_object_stream[RawBatch | None](0)
    debouncer = Debouncer(quiet, max_wait, leading)
    async with send, raw_send, raw_receive, anyio.create_task_group() as tg:
        state = _Watch(watchset, options, raw_send)
        await state.start(tg)
        task_status.started()
        await _loop(state, tg, raw_receive, debouncer, send, clock)
        tg.cancel_scope.cancel()


async def _loop(
    state: _Watch,
    tg: anyio.abc.TaskGroup,
    raw: MemoryObjectReceiveStream[RawBatch | None],
    debouncer: Debouncer,
    send: MemoryObjectSendStream[Changes],
    clock: Clock,
) -> None:
    while True:
        if debouncer.due(clock()):
            await send.send(debouncer.take())
        batch = await _receive(raw, debouncer.deadline(), clock)
        if batch is None:
            break
        if not isinstance(batch, _Timeout):
            debouncer.add(await state.on_batch(tg, batch), clock())
    if debouncer.deadline() is not None:
        await send.send(debouncer.take())
