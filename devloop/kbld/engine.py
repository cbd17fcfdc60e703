"""The one connection to the Docker engine, and the one translation of its errors.

Builds (`building.py`) and the Docker target's containers (`targets/docker/containers.py`) use
the same client and say the same thing when the engine is away, so a user sees one wording, with
the host it tried and what to do.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

import docker
import docker.errors
import requests.exceptions

from devloop.errors import DevloopError, EngineUnavailable, trimmed
from devloop.kbld import buildx
from devloop.logs import LineSink

DEFAULT_HOST = "unix:///var/run/docker.sock"
CALL_TIMEOUT_S = 60.0  # any single engine call but a build
EXPLANATION_CHARS = 300  # engine error bodies are trimmed to this


class Engine:
    """The Docker engine, connected on first use; safe to share between threads."""

    def __init__(
        self,
        base_url: str | None = None,
        timeout_s: float = CALL_TIMEOUT_S,
        *,
        builder: str | None = None,
        use_buildx: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url  # None: DOCKER_HOST, else the default socket
        self.timeout_s = timeout_s
        self.builder = builder  # a buildx builder name (`--builder`); None: buildx's current one
        self.use_buildx = use_buildx  # False: always the classic builder
        self.env = dict(os.environ if env is None else env)  # for the docker CLI
        self._client: Any = None
        self._lock = threading.Lock()
        self._buildx_probed = False
        self._buildx: buildx.Buildx | None = None
        self._responses: dict[str, Any] = {}  # temp tag -> its build's streaming HTTP response
        self._stage_images: dict[str, list[str]] = {}  # image -> its last build's stage ends

    def replace_stage_images(self, image: str, stage_ends: list[str], steps: list[str]) -> None:
        """Forget the previous build of `image`: remove the images its earlier stages ended in
        when they are dangling and this build did not reuse them. A daemon that rebuilds on
        every save would otherwise keep one builder-stage image (and its layers) per edit."""
        with self._lock:
            previous = self._stage_images.get(image, [])
            self._stage_images[image] = list(stage_ends)
        for image_id in previous:
            if image_id not in steps:
                self._remove_if_dangling(image_id)

    def _remove_if_dangling(self, image_id: str) -> None:
        try:
            tags = self.api.inspect_image(image_id).get("RepoTags") or []
            if not [tag for tag in tags if tag != "<none>:<none>"]:
                self.api.remove_image(image_id, noprune=False)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            pass  # gone already, used by a container, or a parent of another image: keep it

    def buildx(self, out: LineSink) -> buildx.Buildx | None:
        """The buildx plugin to build with, looked up once; says once when there is none."""
        with self._lock:
            if self._buildx_probed:
                return self._buildx
            self._buildx_probed = True
            if not self.use_buildx:
                return None
            env = dict(self.env)
            if self.base_url:
                env["DOCKER_HOST"] = self.base_url
            self._buildx = buildx.find_buildx(env, self.builder)
        if self._buildx is None:
            out.line(
                "devloop",
                f"BuildKit is not available, using the classic builder: {buildx.INSTALL_HINT}",
            )
        return self._buildx

    @property
    def host(self) -> str:
        return self.base_url or os.environ.get("DOCKER_HOST") or DEFAULT_HOST

    @property
    def api(self) -> Any:
        """The SDK's low-level `docker.APIClient`."""
        return self.client.api

    def ping(self) -> None:
        """Raise `EngineUnavailable` unless the engine answers."""
        try:
            self.api.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self.unavailable(e) from e

    def unavailable(self, error: BaseException, doing: str = "") -> EngineUnavailable:
        """The one wording for an engine that does not answer."""
        reason = first_line(str(error))
        return EngineUnavailable(
            f"{doing + ': ' if doing else ''}cannot reach the Docker engine at {self.host}: "
            f"{reason}; start dockerd or point DOCKER_HOST at it"
        )

    @contextmanager
    def translated(self, doing: str) -> Iterator[None]:
        """SDK exceptions become ours; NotFound passes through for callers that expect it."""
        try:
            yield
        except docker.errors.NotFound:
            raise
        except docker.errors.APIError as error:
            said = trimmed(str(error.explanation or error), EXPLANATION_CHARS)
            raise DevloopError(f"{doing}: the Docker engine said: {said}") from error
        except (requests.exceptions.RequestException, docker.errors.DockerException) as error:
            raise self.unavailable(error, doing) from error

    @property
    def client(self) -> Any:
        """The SDK's `docker.DockerClient` (containers, networks, images)."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _connect(self) -> Any:
        try:
            if self.base_url:
                client = docker.DockerClient(base_url=self.base_url, timeout=self.timeout_s)
            else:
                client = docker.from_env(timeout=self.timeout_s)
        except docker.errors.DockerException as e:
            raise self.unavailable(e) from e
        # The SDK hides a build's HTTP response inside its generator; cancelling needs it.
        client.api.hooks["response"].append(self._remember_build_response)
        return client

    def _remember_build_response(self, response: Any, *_args: Any, **_kwargs: Any) -> None:
        url = urlsplit(response.request.url)
        tags = parse_qs(url.query).get("t")
        if url.path.endswith("/build") and tags:
            self._responses[tags[0]] = response

    def take_response(self, tag: str) -> Any:
        return self._responses.pop(tag, None)


@cache
def shared() -> Engine:
    """The process's engine for the Docker target (DOCKER_HOST, or the default socket)."""
    return Engine()


def first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "no details"
