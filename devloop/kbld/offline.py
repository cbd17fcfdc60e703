"""The references that resolve without a build or a registry, decided without any I/O.

A preresolved override is final as written, and a digest reference that no Source matches only
needs normalising. When every reference of a run is one of these (the usual case for a
`ytt | devloop resolve` over pinned images), `devloop resolve` answers synchronously and never
imports anyio, the registry client or its TLS stack: start-up is most of such a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from devloop.errors import DevloopError, RegistryError
from devloop.kbld.model import Config, Override, Resolved
from devloop.kbld.references import is_digest, parse_reference


class ResolveErrors(DevloopError):
    """Several references failed; each line names the reference, as kbld's list does."""

    def __init__(self, failures: Mapping[str, DevloopError]) -> None:
        self.failures = dict(failures)
        self.retryable = all(error.retryable for error in failures.values())
        lines = [f"- Resolving image '{url}': {error}" for url, error in sorted(failures.items())]
        super().__init__("\n".join(lines))


def resolve_offline(config: Config, url: str) -> Resolved | None:
    """`url`'s resolution when it needs neither a build nor a registry, else None."""
    override = config.override_for(url)
    if override is not None:
        if override.preresolved:
            return _preresolved(override)
        url = override.new_image
    if not is_digest(url) or config.source_for(url) is not None:
        return None
    return Resolved(parse_reference(url).with_digest(url.rpartition("@")[2]))


def resolve_all_offline(config: Config, urls: Iterable[str]) -> dict[str, Resolved] | None:
    """Every url resolved offline, or None as soon as one needs a build or a registry.

    Failures are reported as the concurrent resolver reports them (`raise_failures`).
    """
    results: dict[str, Resolved] = {}
    failures: dict[str, DevloopError] = {}
    for url in sorted(set(urls)):
        try:
            resolved = resolve_offline(config, url)
        except DevloopError as error:
            failures[url] = error
            continue
        if resolved is None:
            return None
        results[url] = resolved
    raise_failures(failures)
    return results


def raise_failures(failures: Mapping[str, DevloopError]) -> None:
    """One failure as itself (naming the image when the registry failed), several as a list."""
    if len(failures) == 1:
        url, error = next(iter(failures.items()))
        if isinstance(error, RegistryError):  # it names the host; say which image too
            raise error.in_context(f"Resolving image '{url}': ") from error
        raise error
    if failures:
        raise ResolveErrors(failures)


def _preresolved(override: Override) -> Resolved:
    origins: list[Any] = list(override.origins)
    mine = {"preresolved": {"url": override.new_image}}
    if mine not in origins:
        origins.append(mine)
    return Resolved(override.new_image, tuple(origins))
