"""The registry client: resolve tags to digests and add tags, as kbld does.

Blocking on purpose: the async layer calls it in worker threads. It uses only the standard
library (http.client with keep-alive connections per host), because importing requests would
add about 0.1 s to every `devloop resolve` start.

Scheme: HTTPS. Loopback hosts (localhost, 127.0.0.0/8, ::1) and every host under
--registry-insecure are first probed with a TLS handshake, and get plain HTTP when they do not
take one. That is Docker's rule for insecure registries (Docker counts 127.0.0.0/8 as insecure by
default), so a local `docker-registry` on http://127.0.0.1:5000 needs no flag. The scheme found
is kept for the client's lifetime. Each request has `timeout` on connecting and on every read.
HTTP(S)_PROXY variables are not honoured yet.

Credentials are looked up only when a registry answers 401: first the KBLD_REGISTRY_* variables,
then the Docker config (credHelpers, credsStore, auths), as kbld's keychain does.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from devloop.errors import AuthError, InputError, RegistryError, RegistryUnavailable, trimmed
from devloop.kbld.credentials import Credentials, Keychain, parse_challenge
from devloop.kbld.references import Reference, parse_reference

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
BODY_LIMIT = 300  # characters of a response body kept in an error message
_RETRYABLE_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class RegistryOptions:
    insecure: bool = False  # --registry-insecure: allow plain HTTP for every registry
    verify_certs: bool = True  # --registry-verify-certs: False skips TLS verification
    ca_cert_paths: tuple[str, ...] = ()  # --registry-ca-cert-path: extra CA PEM files
    timeout: float = 30.0  # seconds, for connecting and for each read of every request


@dataclass(frozen=True)
class Manifest:
    media_type: str
    body: bytes = field(repr=False)
    digest: str  # sha256 of `body`, as the registry addresses it


@dataclass(frozen=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def detail(self) -> str:
        """The registry's error codes and messages, or the body trimmed, for error messages."""
        text = self.body.decode("utf-8", "replace")
        try:
            errors = json.loads(text).get("errors") or []
            text = "; ".join(f"{e['code']}: {e.get('message', '')}" for e in errors) or text
        except (ValueError, AttributeError, TypeError, KeyError):
            pass  # not the registry's JSON error format: keep the text
        return trimmed(text, BODY_LIMIT)


class Registry:
    """A client for OCI/Docker registries; one per run, safe to share between threads."""

    def __init__(
        self, options: RegistryOptions | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.options = options or RegistryOptions()
        self.transport = Transport(self.options)
        self.keychain = Keychain(os.environ if environ is None else environ, self.options.timeout)
        self._auth: dict[tuple[str, str], str] = {}  # (host, repository) -> Authorization

    def resolve(self, url: str) -> str:
        """`<normalised repo>@sha256:<hex>` for `url`, asking twice like kbld to catch flukes."""
        ref = parse_reference(url)
        if ref.digest:
            return ref.with_digest(ref.digest)
        first, second = self._digest(ref), self._digest(ref)
        if first != second:
            raise RegistryError(
                f"registry {ref.registry} gave two different digests for {ref} ({first}, then "
                f"{second}); the tag is changing or the registry is inconsistent. Try again"
            )
        return ref.with_digest(first)

    def manifest(self, url: str) -> Manifest:
        """GET the manifest (or index) of `url`; a digest reference is checked against the body."""
        ref = parse_reference(url)
        response = self.send(ref, "GET", _manifest_path(ref))
        digest = "sha256:" + hashlib.sha256(response.body).hexdigest()
        if ref.digest and ref.digest != digest:
            raise RegistryError(
                f"registry {ref.registry} returned content with digest {digest} for {ref}"
            )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return Manifest(media_type or _media_type_of(response.body), response.body, digest)

    def held(self, url: str) -> str | None:
        """The digest of the manifest `url` names if the registry holds it (one HEAD), else None."""
        ref = parse_reference(url)
        response = self.send(ref, "HEAD", _manifest_path(ref), check=False)
        if response.status == 404:
            return None
        self._check(ref, "HEAD", _manifest_path(ref), response)
        digest = response.headers.get("Docker-Content-Digest", "")
        return digest if digest.startswith("sha256:") else self.manifest(url).digest

    def tag(self, url_with_digest: str, tag: str) -> None:
        """Point `tag` of the repository at the manifest `url_with_digest` names."""
        ref = parse_reference(url_with_digest)
        manifest = self.manifest(url_with_digest)
        headers = {"Content-Type": manifest.media_type}
        tagged = parse_reference(f"{ref.repo}:{tag}")  # a bad tag fails here, in our words
        self.send(tagged, "PUT", _manifest_path(tagged), manifest.body, headers)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self,
        ref: Reference,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> Response:
        """One request about `ref`'s repository, authenticating once if the registry asks."""
        headers = {"Accept": MANIFEST_TYPES, **(headers or {})}
        key = (ref.registry, ref.repository)
        response = self._exchange(ref.registry, method, path, body, headers, self._auth.get(key))
        if response.status == 401:
            self._auth[key] = self._authenticate(ref, response)
            response = self._exchange(ref.registry, method, path, body, headers, self._auth[key])
        if check:
            self._check(ref, method, path, response)
        return response

    def _digest(self, ref: Reference) -> str:
        # HEAD first (cheap, and spares Docker Hub's pull quota), GET when HEAD says nothing.
        response = self.send(ref, "HEAD", _manifest_path(ref), check=False)
        if response.status in (401, 403):
            self._check(ref, "HEAD", _manifest_path(ref), response)
        digest = response.headers.get("Docker-Content-Digest", "")
        if response.status == 200 and digest.startswith("sha256:"):
            return digest
        return self.manifest(str(ref)).digest

    def _exchange(
        self,
        host: str,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        auth: str | None,
    ) -> Response:
        if auth:
            headers = {**headers, "Authorization": auth}
        return self.transport.request(host, method, path, body, headers)

    def _check(self, ref: Reference, method: str, path: str, response: Response) -> None:
        status, host = response.status, ref.registry
        if status < 300:
            return
        if status in (401, 403):
            raise self.keychain.rejected(host, self.keychain.lookup(host), response.detail())
        if status == 404:
            raise RegistryError(
                f"image {ref} not found in {host} ({response.detail() or '404'}); "
                "check the name and tag, or push the image first"
            )
        problem = f"registry {host} answered {status} to {method} {path}: {response.detail()}"
        if status in _RETRYABLE_STATUSES:
            raise RegistryUnavailable(problem)
        raise RegistryError(problem)

    def _authenticate(self, ref: Reference, response: Response) -> str:
        """The Authorization header the 401 `response` asks for, using our credentials."""
        host = ref.registry
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        credentials = self.keychain.lookup(host)
        if scheme == "bearer":
            if credentials and credentials.registry_token:
                return f"Bearer {credentials.registry_token}"
            return f"Bearer {self._token(ref, params, credentials)}"
        if scheme == "basic" and credentials and credentials.username:
            return credentials.basic()
        if scheme in ("basic", ""):
            raise self.keychain.rejected(host, credentials, response.detail())
        raise AuthError(f"registry {host} asks for unsupported authentication '{scheme}'")

    def _token(self, ref: Reference, params: dict[str, str], creds: Credentials | None) -> str:
        """A Bearer token from the challenge's realm (Docker token protocol)."""
        realm = params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise AuthError(f"registry {ref.registry} sent a token challenge without a realm URL")
        query = {"service": params.get("service", ""), "scope": params.get("scope", "")}
        query["scope"] = query["scope"] or f"repository:{ref.repository}:pull"
        response = self._token_request(realm, {k: v for k, v in query.items() if v}, creds)
        if response.status in (401, 403):
            raise self.keychain.rejected(ref.registry, creds, response.detail())
        if response.status >= 300:
            raise RegistryError(
                f"token server {realm} for {ref.registry} answered {response.status}: "
                f"{response.detail()}"
            )
        return _token_of(response, realm)

    def _token_request(
        self, realm: str, query: dict[str, str], creds: Credentials | None
    ) -> Response:
        if creds and creds.identity_token:
            # An identity token is an OAuth2 refresh token; it is exchanged by POST.
            form = {**query, "grant_type": "refresh_token", "client_id": "devloop"}
            form["refresh_token"] = creds.identity_token
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            return self.transport.request_url("POST", realm, urlencode(form).encode(), headers)
        headers = {"Authorization": creds.basic()} if creds and creds.username else {}
        return self.transport.request_url("GET", f"{realm}?{urlencode(query)}", None, headers)


def _manifest_path(ref: Reference) -> str:
    return f"/v2/{ref.repository}/manifests/{ref.digest or ref.tag or 'latest'}"


def _media_type_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("mediaType", ""))
    except (ValueError, AttributeError):
        return ""


def _token_of(response: Response, realm: str) -> str:
    try:
        data: Any = json.loads(response.body)
        return str(data.get("token") or data["access_token"])
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        raise RegistryError(f"token server {realm} sent no token: {response.detail()}") from e


class Transport:
    """Keep-alive HTTP(S) connections per (scheme, host), each used by one thread at a time."""

    def __init__(self, options: RegistryOptions) -> None:
        self.options = options
        self.schemes: dict[str, str] = {}  # host -> the scheme that worked
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def request(
        self, host: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Response:
        """Send to `host` over the scheme that works for it (see the module docstring)."""
        scheme = self.schemes.get(host)
        try:
            if scheme:
                return self.send(scheme, host, method, path, body, headers)
            return self._first_contact(host, method, path, body, headers)
        except _Failure as failure:
            raise failure.public(host, self.options) from failure

    def request_url(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> Response:
        """Send to an absolute URL (a token realm), with its own scheme."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            return self.send(parts.scheme, parts.netloc, method, path or "/", body, headers)
        except _Failure as failure:
            raise failure.public(parts.netloc, self.options) from failure

    def _first_contact(
        self, host: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Response:
        scheme = "https"
        if self.may_use_http(host) and not self._speaks_tls(host):
            scheme = "http"
        response = self.send(scheme, host, method, path, body, headers)
        self.schemes[host] = scheme
        return response

    def _speaks_tls(self, host: str) -> bool:
        """Whether `host` takes a TLS handshake; anything but a certificate complaint means no.

        The probe trusts no CA, so it costs a handshake and not the ~70 ms of loading the
        system CAs, which a plain-HTTP local registry (the usual dev setup) never needs.
        """
        name, port = _host_and_port(host, 443)
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            with socket.create_connection((name, port), timeout=self.options.timeout) as raw:
                probe.wrap_socket(raw, server_hostname=name).close()
        except ssl.SSLCertVerificationError:
            return True
        except OSError:  # also ssl.SSLError: plain HTTP there, or nothing (http may differ: :80)
            return False
        return True

    def may_use_http(self, host: str) -> bool:
        return self.options.insecure or is_loopback(host)

    def send(
        self,
        scheme: str,
        host: str,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> Response:
        connection, reused = self._acquire(scheme, host)
        try:
            response = _round_trip(connection, method, path, body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            connection.close()
            if not reused:
                raise _Failure("unreachable", "the connection was closed") from None
            # The server closed an idle keep-alive connection: one retry on a fresh one.
            return self.send(scheme, host, method, path, body, headers)
        except BaseException as error:
            connection.close()
            failure = _translate(error, self.options)
            if failure is None:
                raise  # a bug or a cancellation: not ours to reword
            raise failure from error
        self._release(scheme, host, connection)
        return response

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _acquire(self, scheme: str, host: str) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get((scheme, host))
            if idle:
                return idle.pop(), True
        timeout = self.options.timeout
        if scheme == "http":
            return http.client.HTTPConnection(host, timeout=timeout), False
        return http.client.HTTPSConnection(host, timeout=timeout, context=self._context()), False

    def _release(self, scheme: str, host: str, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault((scheme, host), []).append(connection)

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = tls_context(self.options)
        return self._tls


def _round_trip(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
) -> Response:
    connection.request(method, path, body=body, headers=headers)
    answer = connection.getresponse()
    data = answer.read()
    return Response(answer.status, answer.headers, data)


def tls_context(options: RegistryOptions) -> ssl.SSLContext:
    """The system CAs plus --registry-ca-cert-path files; no checks with verify_certs off."""
    if not options.verify_certs:
        # Built bare: loading CAs that will not be consulted costs ~70 ms.
        bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        bare.check_hostname = False
        bare.verify_mode = ssl.CERT_NONE
        return bare
    context = ssl.create_default_context()
    for path in options.ca_cert_paths:
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as e:
            raise InputError(
                f"--registry-ca-cert-path {path}",
                f"cannot load a CA certificate: {e}",
                "Give a readable PEM file",
            ) from e
    return context


def is_loopback(host: str) -> bool:
    name = _host_and_port(host, 0)[0]
    return name == "localhost" or name == "::1" or name.startswith("127.")


def _host_and_port(host: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(f"//{host}")
    return parts.hostname or host, parts.port or default_port


class _Failure(Exception):
    """A network failure inside the transport; `public` turns it into the user's error."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind  # "unreachable", "tls" or "certificate"
        self.reason = reason

    def public(self, host: str, options: RegistryOptions) -> RegistryError:
        if self.kind == "certificate":
            return RegistryError(
                f"the TLS certificate of registry {host} cannot be verified: {self.reason}. Add "
                "its CA with --registry-ca-cert-path, or skip verification with "
                "--registry-verify-certs=false"
            )
        if self.kind == "tls":
            return RegistryError(
                f"TLS handshake with registry {host} failed: {self.reason}; if it serves plain "
                "HTTP, use --registry-insecure"
            )
        return _unavailable(host, self.reason, options)


def _translate(error: BaseException, options: RegistryOptions) -> _Failure | None:
    """A `_Failure` for a network error, None for anything else."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return _Failure("certificate", error.verify_message or str(error))
    if isinstance(error, ssl.SSLError):
        return _Failure("tls", error.reason or str(error))
    if isinstance(error, ConnectionRefusedError):
        return _Failure("unreachable", "connection refused")
    if isinstance(error, TimeoutError | socket.timeout):
        return _Failure("unreachable", f"no answer within {options.timeout:g} s")
    if isinstance(error, socket.gaierror):
        return _Failure("unreachable", f"host name not found ({error.strerror})")
    if isinstance(error, OSError | http.client.HTTPException):
        return _Failure("unreachable", str(error) or type(error).__name__)
    return None


def _unavailable(host: str, reason: str, options: RegistryOptions) -> RegistryUnavailable:
    hint = "is it running?"
    if not (options.insecure or is_loopback(host)):
        hint += " For a plain-HTTP registry use --registry-insecure"
    return RegistryUnavailable(f"cannot reach registry {host}: {reason}; {hint}")
