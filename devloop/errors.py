"""The exceptions devloop raises on purpose.

Every expected failure is a `DevloopError`: the CLI prints its message (one clear line, or a few
for build output) and exits 1, and the daemon logs it and carries on. Anything else is a bug.
Messages are composed here so that every raiser says what happened, where, and what to do.
"""

from __future__ import annotations


class DevloopError(Exception):
    """An expected failure with a message meant for the user."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def in_context(self, prefix: str) -> DevloopError:
        """The same error (same class, so still retryable or not) with `prefix` before its text."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.message = prefix + self.message
        clone.args = (clone.message,)
        return clone


class TemporaryError(DevloopError):
    """A failure that may go away by itself (engine or cluster down); the daemon retries."""

    retryable = True


class PermanentError(DevloopError):
    """A failure that needs the user to change something before a retry can succeed."""


class InputError(PermanentError):
    """Bad user input: a manifest, a config document or a flag.

    `where` names the place, e.g. ``build.yml, document 2: sources[0].path``.
    """

    def __init__(self, where: str, problem: str, hint: str = "") -> None:
        self.where = where
        self.problem = problem
        self.hint = hint
        text = f"{where}: {problem}" if where else problem
        super().__init__(f"{text}. {hint}" if hint else text)


def trimmed(text: str, limit: int = 300) -> str:
    """A server's or tool's message for one of ours: whitespace collapsed, cut at `limit`."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def location(file: str, document: int | None = None, key: str = "") -> str:
    """The canonical place string: ``file, document N: key`` (document counted from 1)."""
    where = file
    if document is not None:
        where += f", document {document}"
    if key:
        where += f": {key}"
    return where


class ConfigError(InputError):
    """A kbld/devloop config document is wrong."""


class ManifestError(InputError):
    """A manifest cannot be read or is not valid YAML."""


class ImageReferenceError(InputError):
    """An image reference is malformed (bad digest, bad name)."""


class BuildError(PermanentError):
    """A docker build failed; `tail` holds the last lines of its output (already prefixed)."""

    def __init__(self, image: str, reason: str, tail: list[str] | None = None) -> None:
        self.image = image
        self.tail = list(tail or [])
        message = f"building {image} failed: {reason}"
        if self.tail:
            message += "\n" + "\n".join(self.tail)
        super().__init__(message)


class BuildCancelled(DevloopError):
    """A build stopped because a newer change (or shutdown) cancelled it; not a failure."""


class EngineUnavailable(TemporaryError):
    """The Docker engine cannot be reached."""


class RegistryError(DevloopError):
    """A registry refused or failed a request."""


class RegistryUnavailable(RegistryError, TemporaryError):
    """The registry cannot be reached."""


class AuthError(RegistryError, PermanentError):
    """The registry rejected our credentials (or lack of them)."""


class ClusterUnavailable(TemporaryError):
    """The Kubernetes API server cannot be reached."""


class ApplyError(PermanentError):
    """The API server rejected an object."""


class RolloutError(PermanentError):
    """A workload did not roll out: the reason and what to do are in the message."""


class DeliveryError(PermanentError):
    """No way to get the built images into the cluster, or the chosen way failed."""
