"""Image reference parsing, the way go-containerregistry (and so kbld) reads names.

Pure functions over strings: split a reference into registry, repository, tag and digest,
validate digests, and normalise Docker Hub names to ``index.docker.io/library/...``.
Matchers (`imageRepo`) deliberately use `repo_of`, which does no normalisation, as kbld does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from devloop.errors import ImageReferenceError

DEFAULT_REGISTRY = "index.docker.io"
DEFAULT_TAG = "latest"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HEX = re.compile(r"^[a-f0-9]+$")
# An RFC 3986 authority as go-containerregistry accepts one: a host name or IPv4 address, or an
# IPv6 address in brackets, and an optional port.
_REGISTRY = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d+)?$"
)
# kbld's matcher regex: the repository is everything before an optional :tag and @algo:hex.
_REPO_PART = re.compile(
    r"^(.+?)(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


@dataclass(frozen=True)
class Reference:
    """A parsed image reference, the registry and repository normalised."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repo(self) -> str:
        """The normalised repository name, e.g. ``index.docker.io/library/nginx``."""
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: str) -> str:
        return f"{self.repo}@{digest}"

    def __str__(self) -> str:
        if self.digest:
            return self.with_digest(self.digest)
        return f"{self.repo}:{self.tag or DEFAULT_TAG}"


def repo_of(url: str) -> str:
    """The repository part of `url` as written (no normalisation), for `imageRepo` matching."""
    match = _REPO_PART.match(url)
    return match.group(1) if match else url


def is_digest(url: str) -> bool:
    return "@" in url


def validate_digest(digest: str) -> str:
    """Return the digest's problem in go-containerregistry's words, or "" when it is valid."""
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256":
        return f"unsupported digest algorithm: {digest}"
    if len(hex_part) != 64:
        return "invalid checksum digest length"
    if not _HEX.match(hex_part):
        return "invalid checksum digest format"
    return ""


def parse_reference(url: str) -> Reference:
    """Parse `url`; raise ImageReferenceError with kbld's wording when it is malformed."""
    base, digest = url, None
    if "@" in url:
        base, _, digest = url.partition("@")
        problem = "a digest must contain exactly one '@'" if "@" in digest else ""
        problem = problem or validate_digest(digest)
        if problem:
            raise ImageReferenceError(
                f"image '{url}'",
                f"Expected valid digest reference, but found '{url}', reason: {problem}",
                "Use a reference of the form repo@sha256:<64 hex characters>",
            )
    registry, repository, tag = _split_name(url, base)
    return Reference(registry, repository, tag, digest)


def _split_name(url: str, base: str) -> tuple[str, str, str | None]:
    tag = None
    slash, colon = base.rfind("/"), base.rfind(":")
    if colon > slash:
        base, tag = base[:colon], base[colon + 1 :]
        if not _TAG.match(tag):
            raise _bad_name(url, f"invalid tag '{tag}'")
    first, _, rest = base.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DEFAULT_REGISTRY, base
    if not _REGISTRY.match(registry):
        raise _bad_name(url, f"invalid registry '{registry}'")
    if registry in ("docker.io", "registry-1.docker.io"):
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if not all(_COMPONENT.match(part) for part in repository.split("/")):
        raise _bad_name(url, "repository must be lowercase letters, digits and separators")
    return registry, repository, tag


def _bad_name(url: str, problem: str) -> ImageReferenceError:
    return ImageReferenceError(
        f"image '{url}'", f"not a valid image reference: {problem}", "Fix the image value"
    )


NAME_MAX = 255  # characters of a repository name under a default repo, as Skaffold truncates
_UNSAFE = re.compile(r"[/:@]")


def repository_in(registry: str, image: str) -> str:
    """`image`'s repository under `registry` (a defaultRepo), escaped as Tilt does: `/ : @`
    become `_`. A name already under `registry` is left as it is (tilt#4911, skaffold#7431)."""
    registry = registry.rstrip("/")
    repo = repo_of(image)
    if repo == registry or repo.startswith(registry + "/"):
        return repo
    return f"{registry}/{_UNSAFE.sub('_', repo)}"[:NAME_MAX]
