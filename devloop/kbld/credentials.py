"""Registry credentials, found the way kbld's keychain finds them.

Order: the KBLD_REGISTRY_* environment variables (each with an optional `_<suffix>` so several
registries can be given), then the Docker config (`$DOCKER_CONFIG/config.json`, else
`~/.docker/config.json`): `credHelpers[host]`, then `credsStore`, then `auths[host]`. A helper
that has nothing for the host does not hide an `auths` entry; Docker would stop at the store,
but being lenient here only finds credentials the user did write down.

Secrets never appear in reprs or messages: errors name the host and where we looked.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devloop.errors import AuthError, InputError

DOCKER_HUB = "index.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_HUB_SERVER = "https://index.docker.io/v1/"  # the key `docker login` writes for Docker Hub
_ENV_PREFIX = "KBLD_REGISTRY_"
_ENV_KEYS = ("HOSTNAME", "USERNAME", "PASSWORD", "IDENTITY_TOKEN", "REGISTRY_TOKEN")
_ENV_NAME = re.compile(rf"^{_ENV_PREFIX}({'|'.join(_ENV_KEYS)})(_.+)?$")
_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


@dataclass(frozen=True)
class Credentials:
    source: str  # where they came from, for messages, e.g. "KBLD_REGISTRY_*_2"
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # an OAuth2 refresh token
    registry_token: str = field(default="", repr=False)  # sent as-is as a Bearer token

    def basic(self) -> str:
        """The Basic Authorization header value."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()


def canonical_host(server: str) -> str:
    """`https://index.docker.io/v1/` -> `index.docker.io`: how config keys are compared."""
    host = server.split("://", 1)[-1].split("/", 1)[0].lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _CHALLENGE_PARAM.finditer(rest):
        quoted = match.group(2)
        params[match.group(1).lower()] = quoted if quoted is not None else match.group(3)
    return scheme.lower(), params


def env_credentials(environ: Mapping[str, str]) -> dict[str, Credentials]:
    """Credentials per canonical host from KBLD_REGISTRY_*; unknown names are an error."""
    groups: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(_ENV_PREFIX):
            continue
        match = _ENV_NAME.match(name)
        if not match:
            raise InputError(
                f"environment variable {name}",
                "unknown env variable",
                f"kbld-compatible names are {_ENV_PREFIX}{{{','.join(_ENV_KEYS)}}}[_<suffix>]",
            )
        groups.setdefault(match.group(2) or "", {})[match.group(1)] = value
    return dict(_env_group(suffix, group) for suffix, group in sorted(groups.items()))


def _env_group(suffix: str, group: dict[str, str]) -> tuple[str, Credentials]:
    if not group.get("HOSTNAME"):
        raise InputError(
            f"environment variable {_ENV_PREFIX}HOSTNAME{suffix}",
            "missing, but other variables with the same suffix are set",
            "Set it to the registry host, e.g. gcr.io",
        )
    credentials = Credentials(
        f"{_ENV_PREFIX}*{suffix} environment variables",
        group.get("USERNAME", ""),
        group.get("PASSWORD", ""),
        group.get("IDENTITY_TOKEN", ""),
        group.get("REGISTRY_TOKEN", ""),
    )
    return canonical_host(group["HOSTNAME"]), credentials


def docker_config_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


class Keychain:
    """Looks credentials up per host, once each; safe to share between threads."""

    def __init__(self, environ: Mapping[str, str], timeout: float = 30.0) -> None:
        self.env = env_credentials(environ)  # checked now: a bad variable fails at once
        self.config_path = docker_config_path(environ)
        self.timeout = timeout  # seconds a credential helper may take
        self._found: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()

    def lookup(self, host: str) -> Credentials | None:
        host = canonical_host(host)
        with self._lock:
            if host not in self._found:
                self._found[host] = self.env.get(host) or self._from_docker_config(host)
            return self._found[host]

    def searched(self) -> str:
        return f"the {_ENV_PREFIX}* environment variables and {self.config_path}"

    def rejected(self, host: str, credentials: Credentials | None, detail: str) -> AuthError:
        """The error for a 401/403 that our credentials (or their absence) did not get past."""
        reason = f" ({detail})" if detail else ""
        if credentials is None:
            return AuthError(
                f"registry {host} wants credentials{reason} and none were found in "
                f"{self.searched()}; run `docker login {host}` or set {_ENV_PREFIX}HOSTNAME, "
                f"{_ENV_PREFIX}USERNAME and {_ENV_PREFIX}PASSWORD"
            )
        who = f"user '{credentials.username}'" if credentials.username else "a token"
        return AuthError(
            f"registry {host} rejected the credentials for {who} from {credentials.source}"
            f"{reason}; fix them there (e.g. `docker login {host}`) or check the user's access"
        )

    def _from_docker_config(self, host: str) -> Credentials | None:
        config = self._read_config()
        helper = _entry(config.get("credHelpers"), host)
        if isinstance(helper, str) and helper:
            return self._from_helper(helper, host)
        found = None
        if isinstance(config.get("credsStore"), str) and config["credsStore"]:
            found = self._from_helper(config["credsStore"], host)
        return found or _from_auths(_entry(config.get("auths"), host), str(self.config_path))

    def _read_config(self) -> dict[str, Any]:
        try:
            data = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise InputError(
                str(self.config_path), f"cannot read the Docker config: {e}", "Fix or remove it"
            ) from e
        return data if isinstance(data, dict) else {}

    def _from_helper(self, name: str, host: str) -> Credentials | None:
        program = f"docker-credential-{name}"
        server = _HUB_SERVER if host == DOCKER_HUB else host
        try:
            done = subprocess.run(
                [program, "get"], input=server, capture_output=True, text=True, timeout=self.timeout
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AuthError(
                f"credential helper {program} (named in {self.config_path}) could not run: "
                f"{e.strerror if isinstance(e, OSError) else 'it timed out'}; install it or "
                "remove it from the Docker config"
            ) from e
        return _helper_answer(program, server, done)


def _entry(mapping: object, host: str) -> Any:
    """The value of `mapping` whose key names `host` (keys may be URLs or Hub aliases)."""
    if not isinstance(mapping, dict):
        return None
    return next((v for k, v in mapping.items() if canonical_host(str(k)) == host), None)


def _helper_answer(
    program: str, server: str, done: subprocess.CompletedProcess[str]
) -> Credentials | None:
    if done.returncode != 0:
        if "not found" in (done.stdout + done.stderr).lower():
            return None
        # Helper output is not echoed: some helpers print the request or the secret.
        raise AuthError(f"credential helper {program} failed for {server} (exit {done.returncode})")
    try:
        data = json.loads(done.stdout)
        username, secret = str(data.get("Username", "")), str(data["Secret"])
    except (ValueError, KeyError, AttributeError) as e:
        raise AuthError(f"credential helper {program} answered something that is not JSON") from e
    if username == "<token>":  # Docker's convention for identity (refresh) tokens
        return Credentials(program, identity_token=secret)
    return Credentials(program, username, secret)


def _from_auths(entry: object, source: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    username, password = str(entry.get("username", "")), str(entry.get("password", ""))
    if entry.get("auth"):
        try:
            username, _, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
        except ValueError as e:
            raise InputError(source, "an `auth` value is not base64 of user:password") from e
    tokens = str(entry.get("identitytoken", "")), str(entry.get("registrytoken", ""))
    if not (username or any(tokens)):
        return None
    return Credentials(source, username, password, *tokens)
