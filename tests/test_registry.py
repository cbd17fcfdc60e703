"""The registry client against real docker-registry processes (see tests/fixtures/registry.py)."""

from __future__ import annotations

import hashlib
import json
import stat
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devloop.errors import AuthError, InputError, RegistryError, RegistryUnavailable
from devloop.kbld.credentials import Keychain, parse_challenge
from devloop.kbld.registry import MANIFEST_TYPES, Registry, RegistryOptions
from tests.fixtures.registry import PushImage, RunningRegistry, basic_auth, free_port

pytestmark = pytest.mark.registry
OPTIONS = RegistryOptions(timeout=10)


def client(
    tmp_path: Path, options: RegistryOptions = OPTIONS, env: dict[str, str] | None = None
) -> Registry:
    """A client that sees only `env` (and an empty Docker config unless DOCKER_CONFIG is given)."""
    return Registry(
        options, environ={"DOCKER_CONFIG": str(tmp_path / "no-docker-config"), **(env or {})}
    )


def repository() -> str:
    return f"test/app-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Pushed:
    name: str  # the repository inside the registry, e.g. "test/app-1a2b3c4d"
    repo: str  # the image repository, e.g. "127.0.0.1:PORT/test/app-1a2b3c4d"
    digest: str  # of the tag v1, as the push reported it


@pytest.fixture
def pushed(registry: RunningRegistry, push_image: PushImage) -> Pushed:
    """A fresh image pushed as `v1` to the open registry (whose storage the TLS and token
    registries share)."""
    name = repository()
    return Pushed(name, f"{registry.host}/{name}", push_image(registry, name, "v1"))


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    with client(tmp_path) as registry_client:
        yield registry_client


def manifest_sha256(target: RunningRegistry, repo: str, tag: str) -> str:
    """The digest of the manifest body as a plain GET returns it, without our client."""
    request = urllib.request.Request(
        f"{target.url}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}
    )
    if target.username:
        request.add_header("Authorization", f"Basic {basic_auth(target.username, target.password)}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return "sha256:" + hashlib.sha256(response.read()).hexdigest()


def write_docker_config(directory: Path, config: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_a_pushed_tag_resolves_to_the_digest_the_registry_holds(
    registry: RunningRegistry, pushed: Pushed, reg: Registry
) -> None:
    assert reg.resolve(f"{pushed.repo}:v1") == f"{pushed.repo}@{pushed.digest}"
    assert pushed.digest == manifest_sha256(registry, pushed.name, "v1")


def test_a_reference_without_a_tag_resolves_latest(
    registry: RunningRegistry, push_image: PushImage, reg: Registry
) -> None:
    name = repository()
    digest = push_image(registry, name, "latest")
    assert reg.resolve(f"{registry.host}/{name}") == f"{registry.host}/{name}@{digest}"


def test_the_manifest_get_matches_the_pushed_digest(pushed: Pushed, reg: Registry) -> None:
    manifest = reg.manifest(f"{pushed.repo}@{pushed.digest}")
    assert manifest.digest == pushed.digest
    assert manifest.media_type == json.loads(manifest.body)["mediaType"]


def test_tag_adds_a_tag_pointing_at_the_same_digest(
    registry: RunningRegistry, pushed: Pushed, reg: Registry
) -> None:
    reg.tag(f"{pushed.repo}@{pushed.digest}", "stable")
    assert reg.resolve(f"{pushed.repo}:stable") == f"{pushed.repo}@{pushed.digest}"
    assert manifest_sha256(registry, pushed.name, "stable") == pushed.digest


def test_a_missing_tag_is_reported_as_not_found(
    registry: RunningRegistry, pushed: Pushed, reg: Registry
) -> None:
    with pytest.raises(RegistryError) as caught:
        reg.resolve(f"{pushed.repo}:missing")
    assert not isinstance(caught.value, AuthError | RegistryUnavailable)
    assert f"{pushed.repo}:missing not found in {registry.host}" in str(caught.value)
    assert "MANIFEST_UNKNOWN" in str(caught.value)


def env_login(target: RunningRegistry, password: str = "") -> dict[str, str]:
    return {
        "KBLD_REGISTRY_HOSTNAME": target.host,
        "KBLD_REGISTRY_USERNAME": target.username,
        "KBLD_REGISTRY_PASSWORD": password or target.password,
    }


@pytest.fixture
def auth_pushed(auth_registry: RunningRegistry, push_image: PushImage) -> Pushed:
    """A fresh image pushed as `v1` to the htpasswd registry."""
    name = repository()
    return Pushed(name, f"{auth_registry.host}/{name}", push_image(auth_registry, name, "v1"))


def test_an_unreachable_registry_is_unavailable(reg: Registry) -> None:
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(RegistryUnavailable) as caught:
        reg.resolve(f"{host}/app:v1")
    assert f"cannot reach registry {host}: connection refused; is it running?" in str(caught.value)
    assert caught.value.retryable


def test_docker_config_auths_log_in_to_a_basic_auth_registry(
    auth_registry: RunningRegistry, auth_pushed: Pushed, docker_config: Path, tmp_path: Path
) -> None:
    with client(tmp_path, env={"DOCKER_CONFIG": str(docker_config)}) as reg:
        assert reg.resolve(f"{auth_pushed.repo}:v1") == f"{auth_pushed.repo}@{auth_pushed.digest}"
        reg.tag(f"{auth_pushed.repo}@{auth_pushed.digest}", "v2")
    assert manifest_sha256(auth_registry, auth_pushed.name, "v2") == auth_pushed.digest


def install_helper(directory: Path, answer: dict[str, str], asked: Path) -> None:
    """Put `docker-credential-test` first on PATH: it records its stdin and prints `answer`."""
    directory.mkdir()
    helper = directory / "docker-credential-test"
    reply = json.dumps(answer)
    helper.write_text(f"#!/bin/sh\n[ \"$1\" = get ] || exit 2\ncat > {asked}\necho '{reply}'\n")
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("key", ["credHelpers", "credsStore"])
def test_a_credential_helper_supplies_the_login(
    key: str,
    auth_registry: RunningRegistry,
    auth_pushed: Pushed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = tmp_path / "helper-was-asked-for"
    answer = {"Username": auth_registry.username, "Secret": auth_registry.password}
    install_helper(tmp_path / "bin", answer, asked)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    entry = {auth_registry.host: "test"} if key == "credHelpers" else "test"
    config = write_docker_config(tmp_path / "cfg", {key: entry})
    with client(tmp_path, env={"DOCKER_CONFIG": str(config)}) as reg:
        assert reg.resolve(f"{auth_pushed.repo}:v1") == f"{auth_pushed.repo}@{auth_pushed.digest}"
    assert asked.read_text() == auth_registry.host


def test_a_credential_helper_token_is_used_as_an_identity_token(
    token_registry: RunningRegistry,
    pushed: Pushed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer = {"Username": "<token>", "Secret": token_registry.identity_token}
    install_helper(tmp_path / "bin", answer, tmp_path / "asked")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    config = write_docker_config(tmp_path / "cfg", {"credHelpers": {token_registry.host: "test"}})
    repo = f"{token_registry.host}/{pushed.name}"
    with client(tmp_path, env={"DOCKER_CONFIG": str(config)}) as reg:
        assert reg.resolve(f"{repo}:v1") == f"{repo}@{pushed.digest}"


def test_a_missing_credential_helper_is_an_auth_error_naming_it(
    auth_registry: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    config = write_docker_config(tmp_path / "cfg", {"credHelpers": {auth_registry.host: "nope"}})
    with client(tmp_path, env={"DOCKER_CONFIG": str(config)}) as reg:
        with pytest.raises(AuthError) as caught:
            reg.resolve(f"{auth_registry.host}/{repository()}:v1")
    assert "docker-credential-nope" in str(caught.value)


def test_wrong_credentials_name_the_host_and_hide_the_password(
    auth_registry: RunningRegistry, auth_pushed: Pushed, tmp_path: Path
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    auths = {auth_registry.host: {"auth": basic_auth(auth_registry.username, wrong)}}
    config = write_docker_config(tmp_path / "cfg", {"auths": auths})
    with client(tmp_path, env={"DOCKER_CONFIG": str(config)}) as reg:
        with pytest.raises(AuthError) as caught:
            reg.resolve(f"{auth_pushed.repo}:v1")
    message = str(caught.value)
    assert f"registry {auth_registry.host} rejected the credentials" in message
    assert str(config / "config.json") in message
    assert wrong not in message and basic_auth(auth_registry.username, wrong) not in message


def test_missing_credentials_say_where_they_were_looked_for(
    auth_registry: RunningRegistry, reg: Registry, tmp_path: Path
) -> None:
    with pytest.raises(AuthError) as caught:
        reg.resolve(f"{auth_registry.host}/{repository()}:v1")
    message = str(caught.value)
    assert f"registry {auth_registry.host} wants credentials" in message
    assert "KBLD_REGISTRY_*" in message and str(tmp_path / "no-docker-config") in message


def test_kbld_registry_env_credentials_log_in_and_win_over_the_docker_config(
    auth_registry: RunningRegistry, auth_pushed: Pushed, tmp_path: Path
) -> None:
    auths = {auth_registry.host: {"auth": basic_auth("nobody", "wrong")}}
    config = write_docker_config(tmp_path / "cfg", {"auths": auths})
    env = {"DOCKER_CONFIG": str(config), "KBLD_REGISTRY_HOSTNAME_0": "gcr.io"}
    env.update({f"{key}_1": value for key, value in env_login(auth_registry).items()})
    with client(tmp_path, env=env) as reg:
        assert reg.resolve(f"{auth_pushed.repo}:v1") == f"{auth_pushed.repo}@{auth_pushed.digest}"


def test_an_unknown_kbld_registry_variable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        client(tmp_path, env={"KBLD_REGISTRY_FOO": "x"})
    assert "KBLD_REGISTRY_FOO: unknown env variable" in str(caught.value)


def test_env_credentials_without_a_hostname_are_an_error(tmp_path: Path) -> None:
    env = {"KBLD_REGISTRY_USERNAME_X": "me", "KBLD_REGISTRY_PASSWORD_X": "secret"}
    with pytest.raises(InputError) as caught:
        client(tmp_path, env=env)
    assert "KBLD_REGISTRY_HOSTNAME_X" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_a_token_registry_is_resolved_and_tagged_with_bearer_tokens(
    registry: RunningRegistry, token_registry: RunningRegistry, pushed: Pushed, tmp_path: Path
) -> None:
    repo = f"{token_registry.host}/{pushed.name}"  # token_registry serves registry's storage
    with client(tmp_path, env=env_login(token_registry)) as reg:
        assert reg.resolve(f"{repo}:v1") == f"{repo}@{pushed.digest}"
        reg.tag(f"{repo}@{pushed.digest}", "v2")  # needs a push-scoped token
    assert manifest_sha256(registry, pushed.name, "v2") == pushed.digest


def test_a_token_registry_rejects_wrong_credentials_at_the_token_server(
    token_registry: RunningRegistry, tmp_path: Path
) -> None:
    with client(tmp_path, env=env_login(token_registry, "not-the-password")) as reg:
        with pytest.raises(AuthError) as caught:
            reg.resolve(f"{token_registry.host}/{repository()}:v1")
    assert f"registry {token_registry.host} rejected" in str(caught.value)
    assert "not-the-password" not in str(caught.value)


def test_a_registry_token_from_the_environment_is_sent_as_is(
    token_registry: RunningRegistry, pushed: Pushed, tmp_path: Path
) -> None:
    token = fetch_token(token_registry, f"repository:{pushed.name}:pull")
    env = {"KBLD_REGISTRY_HOSTNAME": token_registry.host, "KBLD_REGISTRY_REGISTRY_TOKEN": token}
    with client(tmp_path, env=env) as reg:
        resolved = reg.resolve(f"{token_registry.host}/{pushed.name}:v1")
    assert resolved == f"{token_registry.host}/{pushed.name}@{pushed.digest}"


def test_an_identity_token_from_the_environment_is_exchanged_for_a_token(
    token_registry: RunningRegistry, pushed: Pushed, tmp_path: Path
) -> None:
    env = {
        "KBLD_REGISTRY_HOSTNAME": token_registry.host,
        "KBLD_REGISTRY_IDENTITY_TOKEN": token_registry.identity_token,
    }
    repo = f"{token_registry.host}/{pushed.name}"
    with client(tmp_path, env=env) as reg:
        assert reg.resolve(f"{repo}:v1") == f"{repo}@{pushed.digest}"


def fetch_token(target: RunningRegistry, scope: str) -> str:
    """A token straight from the realm the registry's challenge names."""
    try:
        urllib.request.urlopen(f"{target.url}/v2/", timeout=10)
        raise AssertionError("the token registry answered without a token")
    except urllib.error.HTTPError as challenge:
        _, params = parse_challenge(challenge.headers["WWW-Authenticate"])
    query = urllib.parse.urlencode({"service": params["service"], "scope": scope})
    request = urllib.request.Request(f"{params['realm']}?{query}")
    request.add_header("Authorization", f"Basic {basic_auth(target.username, target.password)}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["token"])


def test_an_unverifiable_tls_certificate_points_at_the_ca_flags(
    tls_registry: RunningRegistry, reg: Registry
) -> None:
    with pytest.raises(RegistryError) as caught:
        reg.resolve(f"{tls_registry.host}/{repository()}:v1")
    message = str(caught.value)
    assert f"TLS certificate of registry {tls_registry.host} cannot be verified" in message
    assert "--registry-ca-cert-path" in message and "--registry-verify-certs=false" in message


@pytest.mark.parametrize("how", ["ca_cert_paths", "verify_certs"])
def test_a_tls_registry_resolves_with_its_ca_or_without_verification(
    how: str, tls_registry: RunningRegistry, pushed: Pushed, tmp_path: Path
) -> None:
    options = (
        RegistryOptions(ca_cert_paths=(tls_registry.ca_cert,), timeout=10)
        if how == "ca_cert_paths"
        else RegistryOptions(verify_certs=False, timeout=10)
    )
    repo = f"{tls_registry.host}/{pushed.name}"
    with client(tmp_path, options) as reg:
        assert reg.resolve(f"{repo}:v1") == f"{repo}@{pushed.digest}"
        assert reg.transport.schemes[tls_registry.host] == "https"


def test_a_plain_http_loopback_registry_is_remembered_as_http(
    registry: RunningRegistry, pushed: Pushed, reg: Registry
) -> None:
    reg.resolve(f"{pushed.repo}:v1")
    assert reg.transport.schemes[registry.host] == "http"


def test_an_unreadable_ca_file_is_an_input_error(
    tls_registry: RunningRegistry, tmp_path: Path
) -> None:
    options = RegistryOptions(ca_cert_paths=(str(tmp_path / "missing.pem"),), timeout=10)
    with client(tmp_path, options) as reg, pytest.raises(InputError) as caught:
        reg.resolve(f"{tls_registry.host}/{repository()}:v1")
    assert "--registry-ca-cert-path" in str(caught.value)


@pytest.fixture
def flaky_registry() -> Iterator[str]:
    """A registry stand-in whose tag digest changes on every request (kbld issue #21).

    A real registry cannot be made to do this deterministically, so this is the one fake.
    """
    counter = iter(range(1_000_000))

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Docker-Content-Digest", f"sha256:{next(counter):064x}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_two_different_digests_for_one_tag_fail_the_resolution(
    flaky_registry: str, reg: Registry
) -> None:
    with pytest.raises(RegistryError) as caught:
        reg.resolve(f"{flaky_registry}/app:v1")
    assert "two different digests" in str(caught.value)
    assert f"sha256:{0:064x}" in str(caught.value) and f"sha256:{1:064x}" in str(caught.value)


def test_docker_hub_credentials_are_found_under_any_of_its_names(tmp_path: Path) -> None:
    auths = {"https://index.docker.io/v1/": {"auth": basic_auth("hubuser", "hubpass")}}
    config = write_docker_config(tmp_path / "cfg", {"auths": auths})
    keychain = Keychain({"DOCKER_CONFIG": str(config)})
    for host in ("index.docker.io", "docker.io", "registry-1.docker.io"):
        found = keychain.lookup(host)
        assert found is not None and (found.username, found.password) == ("hubuser", "hubpass")
    assert "hubpass" not in repr(keychain.lookup("docker.io"))


def test_challenges_are_parsed_into_scheme_and_parameters() -> None:
    header = 'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"'
    assert parse_challenge(header) == (
        "bearer",
        {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull"},
    )
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_connections_are_kept_alive_between_requests(
    registry: RunningRegistry, pushed: Pushed, reg: Registry
) -> None:
    reg.resolve(f"{pushed.repo}:v1")
    first = reg.transport._idle[("http", registry.host)][0].sock
    reg.resolve(f"{pushed.repo}:v1")
    assert reg.transport._idle[("http", registry.host)][0].sock is first
