"""BuildKit builds through `docker buildx build`: the CLI is the only working BuildKit client.

docker-py speaks only the classic builder's API (BuildKit needs a gRPC session the SDK cannot
serve), so `RUN --mount`, heredocs, `COPY --chmod` and build secrets need the docker CLI with
the buildx plugin, as kbld, compose, Skaffold and Tilt use. This module runs it as a subprocess
in its own process group and turns `--progress=rawjson` (one BuildKit `SolveStatus` per line)
into whole `<image> | <line>` lines. The image ID comes from `--iidfile`, never from scraping.

It never imports the Docker SDK: `building.py` picks this builder or the classic one, and tags.

Cancelling sends SIGINT to the process group, which makes buildx cancel the solve (the engine's
or a remote BuildKit's); SIGKILL follows if it has not exited within `CANCEL_GRACE_S`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from devloop.errors import BuildCancelled, BuildError
from devloop.logs import LineSink, LineSplitter

INSTALL_HINT = (
    "install the docker buildx plugin (scripts/build-buildkit builds it, or install your "
    "distribution's docker-buildx package) to build with BuildKit"
)
TAIL_LINES = 20  # lines of the failing step carried by a BuildError
VERSION_TIMEOUT_S = 20.0  # `docker buildx version`
CANCEL_POLL_S = 0.05  # how often a waiting build probes `cancelled`
CANCEL_GRACE_S = 0.7  # SIGINT to SIGKILL
READER_JOIN_S = 5.0


@dataclass(frozen=True)
class Buildx:
    """How to run buildx: the docker CLI, its environment and the builder to hand builds to."""

    docker: str  # the docker CLI's path
    version: str  # first line of `docker buildx version`
    env: Mapping[str, str]
    builder: str | None = None  # a buildx builder name (`--builder`); None: buildx's current one


def find_buildx(env: Mapping[str, str], builder: str | None = None) -> Buildx | None:
    """The buildx plugin reachable through `env`, or None (no docker CLI, or no plugin)."""
    docker = shutil.which("docker", path=env.get("PATH"))
    if docker is None:
        return None
    try:
        done = subprocess.run(
            [docker, "buildx", "version"],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return Buildx(docker, done.stdout.strip().splitlines()[0], env, builder)


def build_command(
    buildx: Buildx, options: BuildOptions, tag: str, iidfile: str, metadata: str
) -> list[str]:
    """The `docker buildx build` argv for one build (pure)."""
    argv = [buildx.docker, "buildx", "build", "--progress=rawjson", "--provenance=false"]
    if buildx.builder:
        argv += ["--builder", buildx.builder]
    argv += ["--iidfile", iidfile, "--metadata-file", metadata, "--tag", tag, "--load"]
    if options.file:
        argv += ["--file", str(Path(options.context) / options.file)]
    if options.target:
        argv += ["--target", options.target]
    if options.pull:
        argv.append("--pull")
    if options.no_cache:
        argv.append("--no-cache")
    if options.platform:
        argv += ["--platform", options.platform]
    for key, value in sorted(options.build_args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    return [*argv, *options.extra, options.context]


@dataclass(frozen=True)
class BuildOptions:
    """What one build needs from its Source (`building.py` makes it)."""

    context: str  # the Source's path
    file: str | None = None  # relative to the context
    target: str | None = None
    pull: bool = False
    no_cache: bool = False
    platform: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    extra: Sequence[str] = ()  # rawOptions but --build-arg, as written


def run_build(
    buildx: Buildx,
    options: BuildOptions,
    image: str,
    tag: str,
    out: LineSink,
    cancelled: Callable[[], bool],
) -> str:
    """Build and load into the engine as `tag`; the image ID (`sha256:...`)."""
    with tempfile.TemporaryDirectory(prefix="devloop-buildx-") as tmp:
        iidfile, metadata = str(Path(tmp) / "iid"), str(Path(tmp) / "metadata.json")
        argv = build_command(buildx, options, tag, iidfile, metadata)
        progress = Progress()
        take = lambda line: _emit(out, image, progress.feed(line))  # noqa: E731
        code = _run(argv, buildx.env, take, cancelled)
        _emit(out, image, progress.finish())
        if code != 0:
            raise BuildError(image, progress.reason(code), progress.tail(image))
        return _image_id(iidfile, metadata, image)


def _emit(out: LineSink, image: str, lines: list[str]) -> None:
    for text in lines:
        out.line(image, text)


def _image_id(iidfile: str, metadata: str, image: str) -> str:
    with contextlib.suppress(OSError):
        found = Path(iidfile).read_text().strip()
        if found:
            return found
    with contextlib.suppress(OSError, ValueError, AttributeError):
        found = json.loads(Path(metadata).read_text()).get("containerimage.config.digest")
        if found:
            return str(found)
    raise BuildError(image, "buildx reported no image ID (--iidfile and --metadata-file empty)")


# -- the process ----------------------------------------------------------------------------
def _run(
    argv: list[str],
    env: Mapping[str, str],
    take: Callable[[str], None],
    cancelled: Callable[[], bool],
) -> int:
    """Run `argv` in a new process group, handing each stderr line to `take`; its exit code."""
    # stdout carries nothing we need with rawjson; stderr is the progress stream.
    proc = subprocess.Popen(
        argv,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(
        target=_read, args=(proc.stderr, lines), name="devloop-buildx-reader", daemon=True
    )
    reader.start()
    try:
        while (line := _next(lines, cancelled)) is not None:
            take(line)
    except BaseException:
        stop(proc)
        reader.join(READER_JOIN_S)
        raise
    reader.join(READER_JOIN_S)
    return proc.wait()


def _read(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    try:
        for raw in stream:
            lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
    finally:
        stream.close()
        lines.put(None)


def _next(lines: queue.Queue[str | None], cancelled: Callable[[], bool]) -> str | None:
    while True:
        if cancelled():
            raise BuildCancelled("the build was cancelled")
        try:
            return lines.get(timeout=CANCEL_POLL_S)
        except queue.Empty:
            continue


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT the build's process group (buildx cancels the solve), SIGKILL after the grace."""
    for sig, wait_s in ((signal.SIGINT, CANCEL_GRACE_S), (signal.SIGKILL, READER_JOIN_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything buildx left in its group


# -- rawjson progress -------------------------------------------------------------------------
class Progress:
    """BuildKit `SolveStatus` JSON lines in, plain-progress-style text lines out.

    Steps are numbered in order of appearance (`#3 [builder 2/4] RUN go build`), their output
    follows as `#3 <line>`, then `#3 CACHED`, `#3 DONE 0.4s` or `#3 ERROR: ...`. The last lines
    of every step are kept so that a failure can show the failing step's own output.
    """

    def __init__(self) -> None:
        self._numbers: dict[str, int] = {}
        self._names: dict[str, str] = {}
        self._said: dict[str, set[str]] = {}  # digest -> the states already printed
        self._splitters: dict[str, LineSplitter] = {}
        self._tails: dict[str, deque[str]] = {}
        self._failed: str | None = None
        self._plain: deque[str] = deque(maxlen=TAIL_LINES)  # stderr lines that are not JSON

    def feed(self, line: str) -> list[str]:
        try:
            status = json.loads(line)
        except ValueError:
            status = None
        if not isinstance(status, dict):
            if line.strip():
                self._plain.append(line)
                return [line]
            return []
        out: list[str] = []
        for vertex in status.get("vertexes") or ():
            out += self._vertex(vertex)
        for log in status.get("logs") or ():
            out += self._log(log)
        for warning in status.get("warnings") or ():
            out += [f"WARNING: {_b64(warning.get('short')).strip()}"]
        return out

    def finish(self) -> list[str]:
        out: list[str] = []
        for digest, splitter in self._splitters.items():
            out += self._step_lines(digest, splitter.finish())
        return out

    def reason(self, code: int) -> str:
        for line in reversed(self._plain):
            if line.startswith("ERROR:"):
                return line.removeprefix("ERROR:").strip()
        if self._plain:
            return self._plain[-1]
        return f"docker buildx build exited with code {code}"

    def tail(self, image: str) -> list[str]:
        """The failing step's name and last lines (else the last plain lines), prefixed."""
        lines = list(self._plain)
        if self._failed is not None:
            step = self._failed
            lines = [f"#{self._numbers[step]} {self._names[step]}", *self._tails.get(step, ())]
            lines += [line for line in self._plain if line.startswith("ERROR")]
        return [f"{image} | {line}" for line in lines[-TAIL_LINES:]]

    def _vertex(self, vertex: Mapping[str, Any]) -> list[str]:
        digest = str(vertex.get("digest", ""))
        if not digest or not vertex.get("name"):
            return []
        said = self._said.setdefault(digest, set())
        number = self._numbers.setdefault(digest, len(self._numbers) + 1)
        self._names[digest] = str(vertex["name"])
        out = []
        if "start" not in said and (vertex.get("started") or vertex.get("cached")):
            said.add("start")
            out.append(f"#{number} {vertex['name']}")
        for state, text in _end_states(vertex):
            if state not in said and "end" not in said:
                said.update((state, "end"))
                out.append(f"#{number} {text}")
                if state == "error":
                    self._failed = digest
        return out

    def _log(self, log: Mapping[str, Any]) -> list[str]:
        digest = str(log.get("vertex", ""))
        splitter = self._splitters.setdefault(digest, LineSplitter())
        return self._step_lines(digest, splitter.feed(_b64(log.get("data"))))

    def _step_lines(self, digest: str, lines: list[str]) -> list[str]:
        number = self._numbers.setdefault(digest, len(self._numbers) + 1)
        tail = self._tails.setdefault(digest, deque(maxlen=TAIL_LINES))
        tail.extend(lines)
        return [f"#{number} {line}" for line in lines]


def _end_states(vertex: Mapping[str, Any]) -> list[tuple[str, str]]:
    if vertex.get("error"):
        return [("error", f"ERROR: {vertex['error']}")]
    if vertex.get("cached"):
        return [("cached", "CACHED")]
    if vertex.get("completed"):
        return [("done", f"DONE {_seconds(vertex.get('started'), vertex['completed'])}")]
    return []


def _seconds(started: Any, completed: Any) -> str:
    try:
        took = datetime.fromisoformat(str(completed)) - datetime.fromisoformat(str(started))
    except ValueError:
        return ""
    return f"{took.total_seconds():.1f}s"


def _b64(data: Any) -> str:
    if not data:
        return ""
    try:
        return base64.b64decode(str(data)).decode("utf-8", "replace")
    except ValueError:
        return str(data)
