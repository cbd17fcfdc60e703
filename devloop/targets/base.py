"""What the loop needs of the place the app runs: one protocol, two implementations.

The loop builds, renders and resolves; a `Target` gets the built images to where the app pulls
them (`deliver`, before rendering, so the manifests name what the cluster can pull), applies the
rendered objects and waits until they run, streams the app's output and exposes its ports for as
long as it is open, deletes the app, and says what it is. The daemon never asks which one it
drives. Both implementations report their own outcomes (`delivery.selected`, `apply.finished`,
`rollout.finished`), with the counts only they know.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from devloop.kbld.model import Resolved

APP_LABEL = "devloop.dev/app"  # on every object and container devloop creates for an app


@dataclass(frozen=True)
class ManifestObject:
    """One rendered document and where it came from (``file, document N``) for messages."""

    data: dict[str, Any]
    where: str = ""


@dataclass(frozen=True)
class Placement:
    """Where the app goes, as settled for this deploy (a reloaded Settings document may move it)."""

    app: str
    namespace: str | None = None  # None: the kubeconfig context's namespace
    rollout_timeout_s: float = 120.0


class Target(Protocol):
    name: str  # "kubernetes" or "docker": the `target` field of the events

    def describe(self) -> str:
        """What this target is, for the `target.selected` line (a server URL, the engine)."""
        ...

    async def ping(self) -> None:
        """Return when the target answers; a TemporaryError while it is away."""
        ...

    async def deliver(self, built: Mapping[str, Resolved]) -> Mapping[str, Resolved]:
        """Get the images the lanes built (by reference as found) to where the app pulls them;
        the references to render. Says once per run how (`delivery.selected`)."""
        ...

    async def deploy(self, objects: Sequence[ManifestObject], placement: Placement) -> None:
        """Make the app match `objects` and wait until it runs; DevloopError says what failed."""
        ...

    async def delete_app(self, placement: Placement) -> list[str]:
        """Remove everything of the app; returns what was removed (``Kind/name``)."""
        ...
