"""`devloop resolve`, `inspect` and `version` as a user runs them: a subprocess, real services.

Each test runs `python -m devloop.cli` in a temporary directory and judges only what a user sees:
the exit code, stdout and stderr. The sample app is built once per module (its first cold build
is the slow part); everything else builds tiny FROM-scratch or busybox contexts under names
unique to the test, so nothing is left behind in the engine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import devloop
from devloop.kbld.building import Engine, clean_str, trim_str
from tests.fixtures.engine import (
    ROOT,
    BaseImages,
    Leftovers,
    remove_test_images,
    wait_until_clean,
)
from tests.fixtures.registry import (
    PushImage,
    RunningRegistry,
    basic_auth,
    free_port,
    running_registry,
)
from tests.test_building import registry_digest

MakeContext = Callable[..., Path]
RUN_TIMEOUT_S = 240.0  # one CLI run; the sample app's cold build takes about 20 s
SAMPLE_IMAGE = "ghcr.io/devloop-dev/sample-app-go"  # what the repository's config/ builds
ANNOTATION = "kbld.k14s.io/images"
SECRET = "s3cret-in-remote"  # a password in the git remote URL; must never be printed
DIGEST = r"sha256:[0-9a-f]{64}"


# -- running the CLI ------------------------------------------------------------------------------
def devloop_cli(
    cwd: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI of this checkout (PYTHONPATH: an installed copy elsewhere must not answer)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "devloop.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
    )


def ok(run: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    return run


def error_of(run: subprocess.CompletedProcess[str]) -> str:
    """The one error message of a failed run (exit 1, no traceback), from `devloop: Error:` on."""
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    assert run.stderr.count("devloop: Error:") == 1, run.stderr
    return run.stderr[run.stderr.index("devloop: Error:") :]


def one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    """The error of a run that failed before any work: stderr is that one line and nothing else."""
    message = error_of(run)
    assert run.stderr == message and message.count("\n") == 1, run.stderr
    assert run.stdout == ""
    return message


def documents(stream: str) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def annotation(doc: Any) -> Any:
    """The parsed `kbld.k14s.io/images` annotation of `doc`, or None."""
    text = doc.get("metadata", {}).get("annotations", {}).get(ANNOTATION)
    return None if text is None else yaml.safe_load(text)


def images_of(doc: Any) -> list[str]:
    spec = doc["spec"]
    pod = spec["template"]["spec"] if "template" in spec else spec
    return [str(c["image"]) for c in pod["containers"]]


def final_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("resolve | final: ")]


# -- the registry, seen through its HTTP API ------------------------------------------------------
def registry_tags(registry: RunningRegistry, repository: str) -> list[str]:
    with urllib.request.urlopen(f"{registry.url}/v2/{repository}/tags/list", timeout=10) as r:
        return list(json.load(r)["tags"])


# -- inputs ---------------------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def pod(name: str, *images: str) -> str:
    containers = "".join(f"  - name: c{i}\n    image: {image}\n" for i, image in enumerate(images))
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n{containers}"
    )


def kbld_config(body: str) -> str:
    return f"apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\n{body}"


def source(image: str, path: Path) -> str:
    return kbld_config(f"sources:\n- image: {image}\n  path: {path}\n")


def git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=devloop-test", "-c", "user.email=test@devloop.invalid"]
    done = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


# -- the sample app, built once -------------------------------------------------------------------
@dataclass(frozen=True)
class App:
    root: Path  # a temporary copy of config/, config-push/ and sample-app-go/: a git repo
    image: str  # the name its config builds, unique to this module (so its tags get removed)
    token: str  # in `image` and in pushed names: the module's clean-up removes what carries it
    sha: str  # the copy's commit
    remote: str  # the copy's origin, credentials included


@pytest.fixture(scope="module")
def app(
    engine: Engine, base_images: BaseImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[App]:
    token = secrets.token_hex(5)
    tracked = Leftovers(token, f"devloop.test/{token}-sample-app")
    root = tmp_path_factory.mktemp("app")
    for name in ("config", "config-push", "sample-app-go"):
        shutil.copytree(ROOT / name, root / name)
    for path in [*root.glob("config*/*.yml")]:
        path.write_text(path.read_text().replace(SAMPLE_IMAGE, tracked.image))
    remote = f"https://devloop:{SECRET}@git.devloop.invalid/team/app.git"
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "sample app")
    git(root, "remote", "add", "origin", remote)
    yield App(root, tracked.image, token, git(root, "rev-parse", "HEAD"), remote)
    left = wait_until_clean(engine, tracked)
    remove_test_images(engine, token)
    assert left == [], f"the sample app's builds left these behind: {left}"


@pytest.fixture(scope="module")
def app_run(app: App) -> subprocess.CompletedProcess[str]:
    """`devloop resolve -f config/` in the app's copy, run once for the tests that read it."""
    return ok(devloop_cli(app.root, "resolve", "-f", "config/"))


def built_tag(image: str) -> str:
    return rf"kbld:{re.escape(trim_str(clean_str(image)))}-sha256-[0-9a-f]{{64}}"


def without_annotations(text: str) -> str:
    """`text` less the `annotations:` block devloop inserts under `metadata:`."""
    return re.sub(r"(?m)^  annotations:\n(?:    .*\n)+", "", text)


# -- 1. resolve builds the sample app and keeps the manifests as written -------------------------
@pytest.mark.docker
def test_resolve_prints_the_manifests_with_the_built_image_and_nothing_else_changed(
    app: App, app_run: subprocess.CompletedProcess[str], engine: Engine
) -> None:
    built = re.search(built_tag(app.image), app_run.stdout)
    assert built, app_run.stdout
    deployment = (app.root / "config/deployment.yml").read_text()
    service = (app.root / "config/service.yml").read_text()
    expected = f"---\n{deployment.replace(app.image, built[0])}---\n{service}"
    assert without_annotations(app_run.stdout) == expected  # comments, key order, spacing kept
    image_id = built[0].rpartition("-sha256-")[2]
    assert engine.api.inspect_image(built[0])["Id"] == f"sha256:{image_id}"


@pytest.mark.docker
def test_the_built_image_is_annotated_with_its_local_and_redacted_git_origins(
    app: App, app_run: subprocess.CompletedProcess[str]
) -> None:
    deployment, service = documents(app_run.stdout)
    redacted = app.remote.replace(f"devloop:{SECRET}", "_redacted_")
    assert annotation(deployment) == [
        {
            "origins": [
                {"local": {"path": str(app.root / "sample-app-go")}},
                {"git": {"dirty": False, "remoteURL": redacted, "sha": app.sha}},
            ],
            "url": images_of(deployment)[0],
        }
    ]
    assert annotation(service) is None
    assert SECRET not in app_run.stdout + app_run.stderr


@pytest.mark.docker
def test_stderr_shows_prefixed_build_output_and_ends_with_the_one_final_line(
    app: App, app_run: subprocess.CompletedProcess[str]
) -> None:
    lines = app_run.stderr.splitlines()
    built = images_of(documents(app_run.stdout)[0])[0]
    assert final_lines(app_run.stderr) == [f"resolve | final: {app.image} -> {built}"]
    assert lines[-1] == final_lines(app_run.stderr)[0]
    assert all(line.startswith(f"{app.image} | ") for line in lines[:-1])
    assert f"{app.image} | finished build (using BuildKit)" in lines


# -- 5. help, version, inspect --------------------------------------------------------------------
def test_resolve_help_names_every_kbld_flag(tmp_path: Path) -> None:
    text = ok(devloop_cli(tmp_path, "resolve", "--help")).stdout
    flags = ["-f", "--file", "--build", "--build-concurrency", "--images-annotation"]
    flags += ["--lock-output", "--imgpkg-lock-output", "--unresolved-inspect"]
    flags += ["--registry-insecure", "--registry-verify-certs", "--registry-ca-cert-path"]
    mentioned = set(re.findall(r"(?<![\w-])(-f|--[a-z-]+)\b", text))
    assert [flag for flag in flags if flag not in mentioned] == []


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    run = ok(devloop_cli(tmp_path, "version"))
    assert run.stdout == f"devloop version {devloop.__version__}\n"
    assert ok(devloop_cli(tmp_path, "--version")).stdout == run.stdout


@pytest.mark.docker
def test_inspect_lists_the_resolved_image_its_origins_and_its_deployment(
    app: App, app_run: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    out = write(tmp_path / "out.yml", app_run.stdout)
    built = images_of(documents(app_run.stdout)[0])[0]
    run = ok(devloop_cli(tmp_path, "inspect", "-f", str(out)))
    blocks = run.stdout.split("\n\n")
    assert [b for b in blocks if b.startswith("Image ")] == [
        f"Image     {built}\n"
        f"Metadata  - local:\n"
        f"              path: {app.root / 'sample-app-go'}\n"
        f"          - git:\n"
        f"              dirty: false\n"
        f"              remoteURL: https://_redacted_@git.devloop.invalid/team/app.git\n"
        f"              sha: {app.sha}\n"
        f"Resource  deployment/sample-app (apps/v1) cluster"
    ]
    assert run.stdout.endswith("1 images\n")


# -- 2. build and push through a destination ------------------------------------------------------
def destinations(app: App, target: str, extra_tags: list[str], directory: Path) -> Path:
    """The copy's config-push/destinations.yml pushing to `target`, written under `directory`."""
    text = (app.root / "config-push/destinations.yml").read_text()
    text = re.sub(r"newImage: 127\.0\.0\.1:5000/\S+", f"newImage: {target}", text)
    assert target in text, "config-push/destinations.yml no longer names 127.0.0.1:5000"
    if extra_tags:
        text += f"    tags: [{', '.join(extra_tags)}]\n"
    return write(directory / "destinations.yml", text)


@pytest.mark.docker
@pytest.mark.registry
def test_a_destination_pushes_and_the_output_names_the_digest_the_registry_holds(
    app: App, registry: RunningRegistry, engine: Engine, tmp_path: Path
) -> None:
    repository = f"devloop-test/{app.token}-{secrets.token_hex(3)}"
    target = f"{registry.host}/{repository}"
    pushing = destinations(app, target, ["extra"], tmp_path)
    run = ok(devloop_cli(app.root, "resolve", "-f", "config/", "-f", str(pushing)))
    pushed = images_of(documents(run.stdout)[0])[0]
    assert re.fullmatch(rf"{re.escape(target)}@{DIGEST}", pushed)
    digest = pushed.partition("@")[2]
    tags = registry_tags(registry, repository)
    assert "extra" in tags and [t for t in tags if t.startswith("kbld-rand-")]
    assert {registry_digest(registry, repository, tag) for tag in tags} == {digest}
    assert final_lines(run.stderr) == [f"resolve | final: {app.image} -> {pushed}"]
    assert engine.api.images(name=target) == []  # the local push tag is gone


@pytest.mark.docker
@pytest.mark.registry
def test_a_pushed_image_is_annotated_with_its_extra_tags(
    app: App, registry: RunningRegistry, tmp_path: Path
) -> None:
    target = f"{registry.host}/devloop-test/{app.token}-{secrets.token_hex(3)}"
    pushing = destinations(app, target, ["extra", "also"], tmp_path)
    run = ok(devloop_cli(app.root, "resolve", "-f", "config/", "-f", str(pushing)))
    (entry,) = annotation(documents(run.stdout)[0])
    kinds = [next(iter(origin)) for origin in entry["origins"]]
    assert kinds == ["local", "git", "tagged"]
    assert entry["origins"][2] == {"tagged": {"tags": ["extra", "also"]}}


def tiny_push_config(directory: Path, image: str, context: Path, target: str) -> Path:
    config = f"{source(image, context)}destinations:\n- image: {image}\n  newImage: {target}\n"
    return write(directory / "in.yml", f"{config}---\n{pod('app', image)}")


@pytest.mark.docker
@pytest.mark.registry
def test_a_push_to_a_registry_needing_login_uses_the_docker_config(
    docker_config: Path,
    auth_registry: RunningRegistry,
    leftovers: Leftovers,
    make_context: MakeContext,
    tmp_path: Path,
) -> None:
    target = f"{auth_registry.host}/devloop-test/{leftovers.token}"
    context = make_context(files={"f": leftovers.token})
    manifests = tiny_push_config(tmp_path, leftovers.image, context, target)
    run = ok(devloop_cli(tmp_path, "resolve", "-f", str(manifests)))
    assert re.fullmatch(rf"{re.escape(target)}@{DIGEST}", images_of(documents(run.stdout)[0])[0])
    assert auth_registry.password not in run.stdout + run.stderr


@pytest.mark.docker
@pytest.mark.registry
def test_a_push_without_credentials_fails_naming_the_registry(
    auth_registry: RunningRegistry,
    leftovers: Leftovers,
    make_context: MakeContext,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(write(tmp_path / "empty/config.json", "{}").parent))
    target = f"{auth_registry.host}/devloop-test/{leftovers.token}"
    context = make_context(files={"f": leftovers.token})
    manifests = tiny_push_config(tmp_path, leftovers.image, context, target)
    run = devloop_cli(tmp_path, "resolve", "-f", str(manifests))
    message = error_of(run)
    assert auth_registry.host in message
    assert run.stdout == ""
    assert auth_registry.password not in run.stdout + run.stderr


# -- 3. stdin, digests, annotations, --build=false, --unresolved-inspect, locks ------------------
@dataclass(frozen=True)
class Pushed:
    ref: str  # host/repository:tag
    repo: str  # host/repository
    digest: str


@pytest.fixture
def pushed(registry: RunningRegistry, push_image: PushImage) -> Pushed:
    repository = f"devloop-test/{secrets.token_hex(5)}"
    digest = push_image(registry, repository, "v1")
    return Pushed(f"{registry.host}/{repository}:v1", f"{registry.host}/{repository}", digest)


def some_digest() -> str:
    return f"sha256:{secrets.token_hex(32)}"


@pytest.mark.docker
@pytest.mark.registry
def test_stdin_resolves_tags_and_normalises_digests_annotating_only_the_resolved(
    pushed: Pushed, tmp_path: Path
) -> None:
    digest = some_digest()
    stream = f"{pod('by-tag', pushed.ref)}---\n{pod('by-digest', f'nginx@{digest}')}"
    run = ok(devloop_cli(tmp_path, "resolve", "-f-", stdin=stream))
    by_tag, by_digest = documents(run.stdout)
    assert images_of(by_tag) == [f"{pushed.repo}@{pushed.digest}"]
    assert annotation(by_tag) == [
        {
            "origins": [{"resolved": {"tag": "v1", "url": pushed.ref}}],
            "url": f"{pushed.repo}@{pushed.digest}",
        }
    ]
    assert images_of(by_digest) == [f"index.docker.io/library/nginx@{digest}"]
    assert annotation(by_digest) is None


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.parametrize("flag", ["--images-annotation=false", "--no-images-annotation"])
def test_turning_the_images_annotation_off_leaves_metadata_as_written(
    flag: str, pushed: Pushed, tmp_path: Path
) -> None:
    stream = pod("by-tag", pushed.ref)
    run = ok(devloop_cli(tmp_path, "resolve", "-f-", flag, stdin=stream))
    assert run.stdout == "---\n" + stream.replace(pushed.ref, f"{pushed.repo}@{pushed.digest}")


def test_build_false_refuses_an_image_a_source_matches_with_kbld_s_message(
    tmp_path: Path, make_context: MakeContext
) -> None:
    manifests = write(tmp_path / "in.yml", f"{source('app', make_context())}---\n{pod('p', 'app')}")
    message = one_line_error(devloop_cli(tmp_path, "resolve", "-f", "in.yml", "--build=false"))
    assert message.startswith(
        "devloop: Error: Building of images is disallowed "
        "(tried to build 'app' because a source was configured for it"
    )
    assert manifests.name in message


def test_unresolved_inspect_lists_each_reference_once_sorted_and_resolves_nothing(
    tmp_path: Path,
) -> None:
    refs = ["zeta:1", f"nginx@{some_digest()}", "127.0.0.1:1/alpha:2", "zeta:1", "mid"]
    stream = "---\n".join(pod(f"p{i}", ref) for i, ref in enumerate(refs))
    run = ok(devloop_cli(tmp_path, "resolve", "-f-", "--unresolved-inspect", stdin=stream))
    assert run.stdout == "".join(f"- image: {ref}\n" for ref in sorted(set(refs)))
    assert run.stderr == ""


# The annotation of a locked run says `preresolved` (kbld's too): compare the manifests without it.
BARE = ("--images-annotation=false",)


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.parametrize("lock_flag", ["--lock-output", "--imgpkg-lock-output"])
def test_a_lock_file_fed_back_reproduces_the_output_without_building_or_the_registry(
    lock_flag: str,
    push_image: PushImage,
    leftovers: Leftovers,
    make_context: MakeContext,
    tmp_path: Path,
) -> None:
    context = make_context(files={"f": leftovers.token})
    repository = f"devloop-test/{leftovers.token}"
    with running_registry(tmp_path / "registry") as (host, url, _):
        digest = push_image(RunningRegistry(host, url), repository, "v1")
        stream = f"{source(leftovers.image, context)}---\n"
        stream += pod("app", leftovers.image, f"{host}/{repository}:v1")
        manifests = write(tmp_path / "in.yml", stream)
        first = ok(devloop_cli(tmp_path, "resolve", "-f", "in.yml", lock_flag, "lock.yml", *BARE))
    built, resolved = images_of(documents(first.stdout)[0])
    assert re.fullmatch(built_tag(leftovers.image), built)
    assert resolved == f"{host}/{repository}@{digest}"
    shutil.rmtree(context)  # and the registry has stopped: a build or a lookup would now fail
    again = ok(devloop_cli(tmp_path, "resolve", "-f", str(manifests), "-f", "lock.yml", *BARE))
    assert again.stdout == first.stdout
    assert not [line for line in again.stderr.splitlines() if not line.startswith("resolve | ")]
    assert final_lines(again.stderr) == final_lines(first.stderr)


def test_both_lock_outputs_at_once_are_refused_before_any_work(tmp_path: Path) -> None:
    stream = pod("p", f"nginx@{some_digest()}")
    args = ["resolve", "-f-", "--lock-output", "a.yml", "--imgpkg-lock-output", "b.yml"]
    message = one_line_error(devloop_cli(tmp_path, *args, stdin=stream))
    assert "--lock-output" in message and "--imgpkg-lock-output" in message
    assert list(tmp_path.iterdir()) == []


# -- 4. bad input: exit 1 and one message saying where ------------------------------------------
def test_malformed_yaml_names_the_file_document_and_line(tmp_path: Path) -> None:
    text = pod("fine", "app") + "---\nkind: Pod\nmetadata:\n  labels: x\n    bad: y\n"
    write(tmp_path / "broken.yml", text)
    line = text.splitlines().index("    bad: y") + 1
    message = one_line_error(devloop_cli(tmp_path, "resolve", "-f", "broken.yml"))
    assert message.startswith("devloop: Error: broken.yml, document 2: ")
    assert f"line {line} " in message


def test_an_unknown_kind_in_the_kbld_group_names_it_and_the_known_kinds(tmp_path: Path) -> None:
    text = pod("p", "app") + "---\napiVersion: kbld.k14s.io/v1alpha1\nkind: Sauces\n"
    write(tmp_path / "build.yml", text)
    message = one_line_error(devloop_cli(tmp_path, "resolve", "-f", "build.yml"))
    assert message.startswith("devloop: Error: build.yml, document 2: kind: 'Sauces'")
    assert "Config" in message


def test_a_missing_source_path_names_the_key_and_the_directory_it_is_relative_to(
    tmp_path: Path,
) -> None:
    missing = kbld_config("sources:\n- image: app\n  path: nowhere\n")
    text = f"{pod('p', 'app')}---\n{missing}"
    write(tmp_path / "build.yml", text)
    message = one_line_error(devloop_cli(tmp_path, "resolve", "-f", "build.yml"))
    assert message.startswith("devloop: Error: build.yml, document 2: sources[0].path: ")
    assert "'nowhere'" in message and str(tmp_path) in message


def test_a_malformed_digest_is_reported_in_kbld_s_words_where_it_is_written(
    tmp_path: Path,
) -> None:
    write(tmp_path / "app.yml", pod("fine", "app") + "---\n" + pod("p", "x", "nginx@sha256:digest"))
    message = one_line_error(devloop_cli(tmp_path, "resolve", "-f", "app.yml"))
    assert message.startswith("devloop: Error: app.yml, document 2: spec.containers[1].image: ")
    assert (
        "Expected valid digest reference, but found 'nginx@sha256:digest', "
        "reason: invalid checksum digest length" in message
    )


def test_an_unknown_config_field_is_a_warning_naming_the_key(tmp_path: Path) -> None:
    write(tmp_path / "build.yml", kbld_config("sorces: []\n"))
    run = ok(devloop_cli(tmp_path, "resolve", "-f", "build.yml"))
    (warning,) = run.stderr.splitlines()
    assert warning.startswith("devloop: Warning: build.yml, document 1: sorces: ")
    assert run.stdout == ""


def test_an_unreachable_registry_is_named_with_its_port_and_the_image(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    run = devloop_cli(tmp_path, "resolve", "-f-", stdin=pod("p", f"{host}/app:v1"))
    message = one_line_error(run)
    assert message.startswith(f"devloop: Error: Resolving image '{host}/app:v1': ")
    assert host in message.split(": ", 2)[2]


@pytest.mark.docker
@pytest.mark.registry
def test_wrong_registry_credentials_fail_naming_the_registry_and_no_password(
    auth_registry: RunningRegistry,
    push_image: PushImage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repository = f"devloop-test/{secrets.token_hex(5)}"
    push_image(auth_registry, repository, "v1")
    wrong = f"wrong-{secrets.token_hex(8)}"
    auths = {"auths": {auth_registry.host: {"auth": basic_auth(auth_registry.username, wrong)}}}
    config = write(tmp_path / "docker/config.json", json.dumps(auths))
    monkeypatch.setenv("DOCKER_CONFIG", str(config.parent))
    stream = pod("p", f"{auth_registry.host}/{repository}:v1")
    message = one_line_error(devloop_cli(tmp_path, "resolve", "-f-", stdin=stream))
    assert auth_registry.host in message
    assert wrong not in message and auth_registry.password not in message


@pytest.mark.docker
def test_a_failing_dockerfile_shows_its_last_lines_under_the_image_prefix(
    base_images: BaseImages, leftovers: Leftovers, make_context: MakeContext, tmp_path: Path
) -> None:
    dockerfile = f"FROM {base_images.busybox}\nRUN echo {leftovers.token}-last-words && exit 3\n"
    context = make_context(dockerfile=dockerfile)
    write(
        tmp_path / "in.yml", f"{source(leftovers.image, context)}---\n{pod('p', leftovers.image)}"
    )
    run = devloop_cli(tmp_path, "resolve", "-f", "in.yml")
    message = error_of(run)
    assert message.startswith(f"devloop: Error: building {leftovers.image} failed")
    assert f"{leftovers.image} | {leftovers.token}-last-words" in message.splitlines()
    assert run.stdout == ""


def test_a_nonexistent_file_is_named(tmp_path: Path) -> None:
    message = one_line_error(devloop_cli(tmp_path, "resolve", "-f", "missing.yml"))
    assert message.startswith("devloop: Error: missing.yml: ")


def test_no_input_at_all_says_how_to_give_some(tmp_path: Path) -> None:
    message = one_line_error(devloop_cli(tmp_path, "resolve"))
    assert "-f" in message


# -- 6. concurrent builds -------------------------------------------------------------------------
LINES_PER_BUILD = 40  # enough output for two builds' lines to interleave


@pytest.mark.docker
def test_concurrent_builds_write_whole_lines_each_under_one_image_prefix(
    base_images: BaseImages, leftovers: Leftovers, make_context: MakeContext, tmp_path: Path
) -> None:
    images = [f"{leftovers.image}-a", f"{leftovers.image}-b"]
    stream = ""
    for image in images:
        loop = f"for i in $(seq {LINES_PER_BUILD}); do echo {leftovers.token}-{image[-1]}-$i; done"
        context = make_context(image[-1], dockerfile=f"FROM {base_images.busybox}\nRUN {loop}\n")
        stream += f"{source(image, context)}---\n"
    write(tmp_path / "in.yml", stream + pod("p", *images))
    run = ok(devloop_cli(tmp_path, "resolve", "-f", "in.yml", "--build-concurrency", "2"))
    prefixes = [f"{image} | " for image in images]
    lines = run.stderr.splitlines()
    assert [line for line in lines if not line.startswith((*prefixes, "resolve | "))] == []
    assert [line for line in lines if sum(line.count(p.rstrip()) for p in prefixes) > 1] == []
    for image, prefix in zip(images, prefixes, strict=True):
        # BuildKit numbers each step's output lines (`#5 <line>`), the classic builder does not
        echoed = [
            re.sub(r"^#\d+ ", "", line.removeprefix(prefix))
            for line in lines
            if line.startswith(prefix)
        ]
        expected = [f"{leftovers.token}-{image[-1]}-{i}" for i in range(1, LINES_PER_BUILD + 1)]
        assert [text for text in echoed if text in expected] == expected


@pytest.mark.parametrize(
    "args",
    [["--bogus"], ["--build=maybe"], ["--build-concurrency", "many"], ["--build-concurrency", "0"]],
)
def test_a_bad_flag_is_one_error_line_not_a_usage_dump(args: list[str], tmp_path: Path) -> None:
    run = devloop_cli(tmp_path, "resolve", "-f-", *args, stdin=pod("p", f"nginx@{some_digest()}"))
    message = one_line_error(run)
    assert args[0].partition("=")[0] in message


def test_an_unwritable_lock_file_fails_before_any_manifest_is_printed(tmp_path: Path) -> None:
    lock = tmp_path / "missing-dir/lock.yml"
    stream = pod("p", f"nginx@{some_digest()}")
    run = devloop_cli(tmp_path, "resolve", "-f-", "--lock-output", str(lock), stdin=stream)
    assert str(lock) in one_line_error(run)
