"""Docker builds and pushes, kbld's way: through the one engine connection (`engine.py`).

The functions block; the async layers call them in worker threads and pass a `cancelled` probe.
A build runs through BuildKit when the docker CLI has the buildx plugin (`buildx.py`), else
through the engine's HTTP API (the classic builder, which honours `.dockerignore` through the
SDK's context tarball, but knows no `RUN --mount`, heredoc or build secret); either way its
output goes out line by line as `<image> | <line>`. Tags follow kbld exactly, so references
written by kbld and by devloop are interchangeable: a random temporary tag during the build, then
the stable `kbld:<image>-sha256-<id>` tag, and no temporary tag left behind even on failure or
cancel.

Cancelling must really stop the build, also during a step that prints nothing for minutes, when
the thread would sit in a blocking socket read. So the stream is read by a helper thread and the
calling thread waits on a queue, probing `cancelled`; on cancel it shuts the socket down, which
wakes the reader and tells the engine the client is gone (the classic builder then kills the
step's container).
"""

from __future__ import annotations

import queue
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from devloop.errors import (
    AuthError,
    BuildCancelled,
    BuildError,
    ConfigError,
    EngineUnavailable,
    RegistryError,
    RegistryUnavailable,
)
from devloop.kbld import buildx
from devloop.kbld.engine import Engine, first_line
from devloop.kbld.model import Source
from devloop.logs import LineSink, LineSplitter

# Must match kbld: users and tools parse these (e.g. clean-ups of `kbld:` images).
TAG_REPO = "kbld"
TAG_PART_MAX = 50  # characters of the cleaned image name in a tag
TAIL_LINES = 20  # lines of build output carried by a BuildError

BUILD_READ_TIMEOUT_S = 3600.0  # longest silence in a build's output before giving up on it
CANCEL_POLL_S = 0.1  # how often a waiting build probes `cancelled`
READER_JOIN_S = 10.0  # how long a cancelled build waits for its reader thread to end

_UNCLEAN = re.compile(r"[^a-zA-Z0-9-]+")


# -- kbld's tag names (pkg/kbld/builder/tag_builder.go) --------------------------------------
def clean_str(text: str) -> str:
    """Every run of characters outside `[a-zA-Z0-9-]` becomes one `-`."""
    return _UNCLEAN.sub("-", text)


def trim_str(text: str, max_length: int = TAG_PART_MAX) -> str:
    """At most `max_length` characters; a trailing `-` becomes `e` (a tag cannot end in it)."""
    text = text[:max_length]
    return text[:-1] + "e" if text.endswith("-") else text


def random_str50() -> str:
    """`rand-<UTC unix nanos>-<5 random bytes as decimals>`, at most 50 characters."""
    digits = "".join(str(b) for b in secrets.token_bytes(5))
    return f"rand-{time.time_ns()}-{digits}"[:50]


def temp_tag(image: str) -> str:
    """The build's temporary tag, unique per build: `kbld:rand-<nanos>-<digits>-<image>`."""
    return f"{TAG_REPO}:{random_str50()}-{trim_str(clean_str(image))}"


def stable_tag(image: str, image_id: str) -> str:
    """The result's tag: `kbld:<image>-sha256-<hex>`, the same for the same image and content."""
    return f"{TAG_REPO}:{trim_str(clean_str(image))}-{clean_str(image_id)}"


@dataclass(frozen=True)
class BuildResult:
    image_id: str  # sha256:<64 hex>
    tag: str  # the stable kbld:... tag


# -- build ---------------------------------------------------------------------------------------
HINT = buildx.INSTALL_HINT


def build_image(
    engine: Engine,
    source: Source,
    image: str,
    out: LineSink,
    cancelled: Callable[[], bool] | None = None,
) -> BuildResult:
    """Build `source` as kbld's docker builder does; `image` is the reference's repository."""
    _check_directory(source)
    found = engine.buildx(out)
    if found is not None:
        return _build_with_buildx(engine, found, source, image, out, cancelled or _never)
    _check_classic(source, image)
    tmp = temp_tag(image)
    out.line(image, f"starting build (using Docker): {source.path} -> {tmp}")
    build = _Build(engine, image, out)
    try:
        image_id = build.run(_build_kwargs(source, tmp), cancelled or _never)
        result = BuildResult(image_id, stable_tag(image, image_id))
        engine.api.tag(image_id, result.tag)
        engine.replace_stage_images(image, build.stage_images(), build.step_images)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise build.failed(e) from e
    finally:
        _remove_tag(engine, tmp, out, image)
    out.line(image, "finished build (using Docker)")
    return result


def _build_with_buildx(
    engine: Engine,
    found: buildx.Buildx,
    source: Source,
    image: str,
    out: LineSink,
    cancelled: Callable[[], bool],
) -> BuildResult:
    tmp = temp_tag(image)
    on = f" on builder {found.builder}" if found.builder else ""
    out.line(image, f"starting build (using BuildKit{on}): {source.path} -> {tmp}")
    options = buildx.BuildOptions(
        context=source.path,
        file=source.docker.file,
        target=source.docker.target,
        pull=source.docker.pull,
        no_cache=source.docker.no_cache,
        platform=source.docker.platform,
        build_args=source.docker.build_args,
        extra=source.docker.buildkit_options,
    )
    try:
        image_id = buildx.run_build(found, options, image, tmp, out, cancelled)
        result = BuildResult(image_id, stable_tag(image, image_id))
        engine.api.tag(image_id, result.tag)
    except BuildError as e:
        engine.ping()  # the engine gone away is worth a retry, not a failed build
        raise e
    except requests.exceptions.ConnectionError as e:
        raise engine.unavailable(e) from e
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise BuildError(image, _api_reason(e)) from e
    finally:
        _remove_tag(engine, tmp, out, image)
    out.line(image, "finished build (using BuildKit)")
    return result


def _check_classic(source: Source, image: str) -> None:
    """Options only BuildKit understands fail before the classic builder starts."""
    if source.docker.buildx:
        raise BuildError(image, f"the Source uses docker.buildx; {HINT}")
    if source.docker.buildkit_options:
        names = sorted({word.split("=")[0] for word in source.docker.buildkit_options})
        names = [name for name in names if name.startswith("-")] or ["rawOptions"]
        raise BuildError(image, f"rawOptions {', '.join(names)} need BuildKit; {HINT}")


def _check_directory(source: Source) -> None:
    if not Path(source.path).is_dir():
        where = f"{source.where}: path" if source.where else "path"
        raise ConfigError(
            where,
            f"expected '{source.path}' to be a directory, but it is not "
            f"(looked in {Path(source.path).absolute()})",
            "Source paths are relative to the directory devloop runs in",
        )


def _build_kwargs(source: Source, tag: str) -> dict[str, Any]:
    options = source.docker
    return {
        "path": source.path,
        "dockerfile": options.file,
        "target": options.target,
        "pull": options.pull,
        "nocache": options.no_cache,
        "buildargs": dict(options.build_args),
        "platform": options.platform,
        "tag": tag,
        "rm": True,
        "forcerm": True,  # remove intermediate containers of failed steps too
        "decode": True,
        "timeout": BUILD_READ_TIMEOUT_S,
    }


_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")
_FROM_STEP = re.compile(r"^Step \d+/\d+ : FROM ", re.IGNORECASE)


class _Build:
    """One build's output: lines to `out`, the last ones kept for the error message."""

    def __init__(self, engine: Engine, image: str, out: LineSink) -> None:
        self.engine, self.image, self.out = engine, image, out
        self.splitter = LineSplitter()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.image_id: str | None = None
        self.error: str | None = None
        self.step_images: list[str] = []  # " ---> <id>" of every step, in order
        self._stage_ends: list[str] = []  # the last step image of each stage but the final one

    def run(self, kwargs: Mapping[str, Any], cancelled: Callable[[], bool]) -> str:
        tag = kwargs["tag"]
        try:
            for item in _pump(lambda: self.engine.api.build(**kwargs), cancelled, self._stop(tag)):
                self.take(item)
        finally:
            self.engine.take_response(tag)  # only needed while the build runs
        self.emit(self.splitter.finish())
        if self.error is not None:
            raise BuildError(self.image, _classic_reason(self.error), list(self.tail))
        return self.image_id or self.engine.api.inspect_image(tag)["Id"]

    def take(self, item: Mapping[str, Any]) -> None:
        if "stream" in item:
            self.emit(self.splitter.feed(str(item["stream"])))
        elif "error" in item or "errorDetail" in item:
            self.error = _error_text(item)
            self.emit([*self.splitter.finish(), self.error])
        elif isinstance(item.get("aux"), Mapping) and "ID" in item["aux"]:
            self.image_id = str(item["aux"]["ID"])
        else:
            self.emit(_status_lines(item))

    def _note_step(self, text: str) -> None:
        """Remember step images; a FROM step closes the previous stage at its last image."""
        if _FROM_STEP.match(text) and self.step_images:
            self._stage_ends.append(self.step_images[-1])
        elif match := _STEP_IMAGE.match(text):
            self.step_images.append(match.group(1))

    def stage_images(self) -> list[str]:
        return list(self._stage_ends)

    def emit(self, lines: list[str]) -> None:
        for text in lines:
            self._note_step(text)
            self.out.line(self.image, text)
            self.tail.append(f"{self.image} | {text}")

    def failed(self, error: BaseException) -> BuildError | EngineUnavailable:
        if isinstance(error, requests.exceptions.ConnectionError):
            return self.engine.unavailable(error)
        return BuildError(self.image, _api_reason(error), list(self.tail))

    def _stop(self, tag: str) -> Callable[[], bool]:
        def stop() -> bool:
            """Shut the build's socket; False while its response has not arrived yet."""
            response = self.engine.take_response(tag)
            if response is None:
                return False
            _shutdown(response)
            return True

        return stop


def _remove_tag(engine: Engine, tag: str, out: LineSink, prefix: str) -> None:
    try:
        engine.api.remove_image(tag, noprune=True)
    except docker.errors.NotFound:
        return  # the build failed or was cancelled before tagging
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        out.line(prefix, f"could not remove temporary tag {tag}: {first_line(str(e))}")
        return
    out.line(prefix, f"Untagged: {tag}")


# -- push -----------------------------------------------------------------------------------------
def push_image(
    engine: Engine, tag: str, new_image: str, out: LineSink, push_tag: str | None = None
) -> str:
    """Push the local `tag` to the repository `new_image` (as `push_tag`, random by default, as
    kbld does); `<new_image>@sha256:...` it holds. The engine sends only the layers it lacks."""
    push_tag = push_tag or f"kbld-{random_str50()}"
    target = f"{new_image}:{push_tag}"
    out.line(new_image, f"starting push (using Docker): {tag} -> {target}")
    try:
        engine.api.tag(tag, new_image, push_tag)
        digest = _push(engine, new_image, push_tag, out)
    except requests.exceptions.ConnectionError as e:
        raise engine.unavailable(e) from e
    except docker.errors.DockerException as e:
        raise _registry_error(new_image, _api_reason(e)) from e
    finally:
        _remove_tag(engine, target, out, new_image)
    out.line(new_image, "finished push (using Docker)")
    return f"{new_image}@{digest}"


def _push(engine: Engine, repository: str, push_tag: str, out: LineSink) -> str:
    digest = None
    for item in engine.api.push(repository, push_tag, stream=True, decode=True):
        if "error" in item or "errorDetail" in item:
            raise _registry_error(repository, _error_text(item))
        aux = item.get("aux")
        if isinstance(aux, Mapping) and aux.get("Digest"):
            digest = str(aux["Digest"])
        for text in _status_lines(item):
            out.line(repository, text)
    if digest is None:
        raise RegistryError(f"pushing {repository}: the engine reported no repo digest")
    return digest


# -- load into a node container ------------------------------------------------------------------
LOAD_CHUNK = 1 << 20  # bytes of the image archive sent at a time


def exec_output(engine: Engine, container: str, command: list[str]) -> tuple[int, str]:
    """Run `command` in `container`; its exit code and output (stdout and stderr)."""
    try:
        created = engine.api.exec_create(container, command, stdout=True, stderr=True)
        output = engine.api.exec_start(created["Id"])
        code = engine.api.exec_inspect(created["Id"]).get("ExitCode")
    except requests.exceptions.ConnectionError as e:
        raise engine.unavailable(e) from e
    except docker.errors.DockerException as e:
        return 1, _api_reason(e)
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    return int(code if code is not None else 1), text


def load_image(
    engine: Engine, tag: str, container: str, command: list[str], cancelled: Callable[[], bool]
) -> None:
    """Stream `docker save <tag>` into `command`'s stdin inside `container` (a kind or k3d node),
    as `kind load docker-image` does, without the archive ever touching the disk."""
    try:
        created = engine.api.exec_create(container, command, stdin=True, stdout=True, stderr=True)
        sock = engine.api.exec_start(created["Id"], socket=True)
        raw = getattr(sock, "_sock", sock)
        try:
            for chunk in engine.api.get_image(tag, chunk_size=LOAD_CHUNK):
                if cancelled():
                    raise BuildCancelled(f"loading {tag} into {container} was cancelled")
                raw.sendall(chunk)
            raw.shutdown(socket.SHUT_WR)
            output = _drain(raw)
        finally:
            sock.close()
        code = engine.api.exec_inspect(created["Id"]).get("ExitCode")
    except requests.exceptions.ConnectionError as e:
        raise engine.unavailable(e) from e
    except (docker.errors.DockerException, OSError) as e:
        raise RegistryError(f"loading {tag} into node {container} failed: {_api_reason(e)}") from e
    if code != 0:
        tail = first_line(output.strip().splitlines()[-1] if output.strip() else f"exit {code}")
        raise RegistryError(f"loading {tag} into node {container} failed: {tail}")


def _drain(raw: socket.socket) -> str:
    """What the exec wrote, its stream headers (8 bytes a frame) dropped."""
    data = b""
    while chunk := raw.recv(65536):
        data += chunk
    text, at = [], 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4 : at + 8], "big")
        text.append(data[at + 8 : at + 8 + size])
        at += 8 + size
    return b"".join(text).decode(errors="replace")


# How the engine words refusals; it relays the registry's errors as plain text.
_AUTH_WORDS = ("unauthorized", "authentication required", "denied", "no basic auth credentials")


def _registry_error(repository: str, reason: str) -> RegistryError:
    message = f"pushing {repository} failed: {reason}"
    lowered = reason.lower()
    if any(word in lowered for word in _AUTH_WORDS):
        return AuthError(f"{message}; log in with `docker login` for that registry")
    if any(word in lowered for word in ("connection refused", "no such host", "dial tcp")):
        return RegistryUnavailable(f"{message}; is the registry running?")
    return RegistryError(message)


# -- streaming --------------------------------------------------------------------------------
_DONE = object()


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _pump(
    start: Callable[[], Iterator[Any]], cancelled: Callable[[], bool], stop: Callable[[], bool]
) -> Iterator[Any]:
    """The items of `start()`, read in a helper thread so that `cancelled` is probed meanwhile.

    On cancel `stop` is called until it reports the stream stopped (or the reader ends), the
    reader thread is joined, and `BuildCancelled` is raised.
    """
    items: queue.Queue[Any] = queue.Queue()
    reader = threading.Thread(target=_read, args=(start, items), name="devloop-build-reader")
    reader.start()
    try:
        while (item := _next(items, cancelled)) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    except _Cancelled:
        _stop_reader(reader, stop)
        raise BuildCancelled("the build was cancelled") from None
    except BaseException:
        _stop_reader(reader, stop)  # a failing probe, or the consumer gave up: no orphan reader
        raise
    reader.join()


class _Cancelled(Exception):
    pass


def _next(items: queue.Queue[Any], cancelled: Callable[[], bool]) -> Any:
    while True:
        if cancelled():
            raise _Cancelled
        try:
            return items.get(timeout=CANCEL_POLL_S)
        except queue.Empty:
            continue


def _read(start: Callable[[], Iterator[Any]], items: queue.Queue[Any]) -> None:
    try:
        for item in start():
            items.put(item)
    except BaseException as e:  # handed to the consuming thread, which raises it
        items.put(_Failure(e))
    finally:
        items.put(_DONE)


def _stop_reader(reader: threading.Thread, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READER_JOIN_S
    while reader.is_alive() and not stop() and time.monotonic() < deadline:
        reader.join(CANCEL_POLL_S)  # the request is still being sent: no response to shut yet
    reader.join(max(0.0, deadline - time.monotonic()))


def _shutdown(response: Any) -> None:
    """Wake a reader blocked on `response` and close the connection (the engine sees EOF)."""
    try:
        raw = response.raw._fp.fp.raw
        sock = getattr(raw, "_sock", raw)
        sock.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError):
        pass  # already closed: the stream ended on its own
    response.close()


# -- messages -------------------------------------------------------------------------------
def _status_lines(item: Mapping[str, Any]) -> list[str]:
    """A status message as a line, as `docker` prints it without a terminal (no progress bars)."""
    status = item.get("status")
    if not status or item.get("progressDetail"):
        return []
    return [f"{item['id']}: {status}" if item.get("id") else str(status)]


def _error_text(item: Mapping[str, Any]) -> str:
    detail = item.get("errorDetail")
    if isinstance(detail, Mapping) and detail.get("message"):
        return str(detail["message"]).strip()
    return str(item.get("error", "unknown error")).strip()


def _api_reason(error: BaseException) -> str:
    explanation = getattr(error, "explanation", None)
    return first_line(str(explanation or error))


def _classic_reason(error: str) -> str:
    """The classic builder's error, with what to install when BuildKit would have built it."""
    if "requires BuildKit" in error or "unknown instruction" in error.lower():
        return f"{error} (the classic builder is in use: {HINT})"
    return error


def _never() -> bool:
    return False
