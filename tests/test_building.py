"""Classic-builder builds and pushes against the real engine (and a real registry for pushes).

The classic builder is the fallback when the docker CLI has no buildx plugin; these tests pin it
(`use_buildx=False`). BuildKit builds are tested in test_buildx.py.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import docker.errors
import pytest

from devloop.errors import AuthError, BuildCancelled, BuildError, ConfigError, EngineUnavailable
from devloop.kbld import building, resolving
from devloop.kbld.building import (
    BuildResult,
    Engine,
    build_image,
    clean_str,
    stable_tag,
    temp_tag,
    trim_str,
)
from devloop.kbld.model import ImageRef, Source
from tests.builds import Lines, MakeContext, source, three_builds_at_once
from tests.fixtures.engine import BaseImages, Leftovers
from tests.fixtures.registry import RunningRegistry

pytestmark = pytest.mark.docker

STABLE = re.compile(r"^kbld:[a-zA-Z0-9-]{1,50}-sha256-[0-9a-f]{64}$")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The engine with the classic builder, whether or not buildx is installed."""
    engine = Engine(use_buildx=False)
    engine.ping()
    yield engine
    engine.close()


# -- tag names ------------------------------------------------------------------------------------
def test_stable_tag_matches_kbld_for_the_same_image_and_id() -> None:
    # The published kbld output in the eduk8s "building images locally" workshop.
    image_id = "sha256:2040a07ce5d0d41559c23103ae5c56b4d64c9f36bb5859d664b1311e329a79b5"
    assert stable_tag("quay.io/eduk8s-labs/sample-app-go", image_id) == (
        "kbld:quay-io-eduk8s-labs-sample-app-go-sha256-"
        "2040a07ce5d0d41559c23103ae5c56b4d64c9f36bb5859d664b1311e329a79b5"
    )


def test_clean_str_collapses_runs_of_other_characters_into_one_dash() -> None:
    assert clean_str("a.b//c:_d-e") == "a-b-c-d-e"


def test_trimmed_names_never_end_in_a_dash() -> None:
    assert trim_str("x" * 49 + "-yyy") == "x" * 49 + "e"
    assert trim_str("short-") == "shorte"
    assert trim_str("short") == "short"


def test_temporary_tags_are_unique_valid_and_name_the_image() -> None:
    image = "registry.example.com:5000/" + "very-long-name/" * 10
    first, second = temp_tag(image), temp_tag(image)
    assert first != second
    assert re.fullmatch(r"kbld:rand-\d+-\d+-[a-zA-Z0-9-]{1,50}", first)
    assert len(first.partition(":")[2]) <= 128
    assert first.endswith(trim_str(clean_str(image)))


def test_buildkit_raw_options_fail_on_the_classic_builder_saying_what_to_install(
    engine: Engine, make_context: MakeContext
) -> None:
    options = source(make_context(), buildkit_options=("--secret", "id=token,env=TOKEN"))
    with pytest.raises(BuildError) as caught:
        build_image(engine, options, "app", Lines())
    assert str(caught.value) == (
        f"building app failed: rawOptions --secret need BuildKit; {building.HINT}"
    )
    assert "id=token" not in str(caught.value)


def test_a_dockerfile_that_needs_buildkit_fails_on_the_classic_builder_with_the_hint(
    engine: Engine, base_images: BaseImages, leftovers: Leftovers, make_context: MakeContext
) -> None:
    dockerfile = f"FROM {base_images.busybox}\nRUN --mount=type=cache,target=/c true\n"
    with pytest.raises(BuildError) as caught:
        build_image(engine, source(make_context(dockerfile=dockerfile)), leftovers.image, Lines())
    first = str(caught.value).splitlines()[0]
    assert "the --mount option requires BuildKit" in first
    assert first.endswith(f"(the classic builder is in use: {building.HINT})")


# -- builds ---------------------------------------------------------------------------------------
def test_a_build_gets_the_stable_tag_and_drops_its_temporary_tag(
    engine: Engine, leftovers: Leftovers, make_context: MakeContext
) -> None:
    out = Lines()
    result = build_image(
        engine, source(make_context(files={"f": leftovers.token})), leftovers.image, out
    )
    assert STABLE.match(result.tag)
    assert result.tag == stable_tag(leftovers.image, result.image_id)
    assert engine.api.inspect_image(result.tag)["Id"] == result.image_id
    start = out.texts()[0]
    assert start.startswith("starting build (using Docker): ")
    tmp = start.rpartition(" -> ")[2]
    assert tmp.startswith("kbld:rand-")
    with pytest.raises(docker.errors.ImageNotFound):
        engine.api.inspect_image(tmp)
    assert out.texts()[-1] == "finished build (using Docker)"
    assert {prefix for prefix, _ in out.pairs} == {leftovers.image}


def test_rebuilding_the_same_content_gives_the_same_tag(
    engine: Engine, leftovers: Leftovers, make_context: MakeContext
) -> None:
    context = make_context(files={"f": leftovers.token})
    first = build_image(engine, source(context), leftovers.image, Lines())
    second = build_image(engine, source(context), leftovers.image, Lines())
    assert first == second


def test_a_rebuild_removes_the_builder_stage_image_the_previous_build_left_dangling(
    engine: Engine, leftovers: Leftovers, base_images: BaseImages, make_context: MakeContext
) -> None:
    dockerfile = (
        f"FROM {base_images.busybox} AS builder\nCOPY f /f\nRUN cp /f /out\n"
        "FROM scratch\nCOPY --from=builder /out /out\n"
    )
    builds = []
    for content in ("first", "second"):
        out = Lines()
        context = make_context(f"ctx-{content}", dockerfile, {"f": f"{leftovers.token} {content}"})
        build_image(engine, source(context), leftovers.image, out)
        builds.append(out.texts())
    first_leaf, second_leaf = (_stage_leaf(texts) for texts in builds)
    with pytest.raises(docker.errors.ImageNotFound):
        engine.api.inspect_image(first_leaf)
    assert engine.api.inspect_image(second_leaf)["Id"], "the newest build keeps its cache"
    assert engine.api.inspect_image(base_images.busybox)["RepoTags"], "tagged bases are kept"


def _stage_leaf(texts: list[str]) -> str:
    """The last step image before the second FROM: the builder stage's result."""
    ids, leaf = [], ""
    for text in texts:
        if text.startswith("Step ") and " : FROM scratch" in text:
            leaf = ids[-1]
        elif re.fullmatch(r" ---> [0-9a-f]{12}", text):
            ids.append(text.split()[-1])
    return leaf


def test_dockerignored_files_are_not_sent_to_the_engine(
    engine: Engine, leftovers: Leftovers, make_context: MakeContext
) -> None:
    dockerfile = "FROM scratch\nCOPY secret.txt /\n"
    files = {"secret.txt": leftovers.token}
    plain = make_context("plain", dockerfile, files)
    build_image(engine, source(plain), leftovers.image, Lines())  # the COPY itself works
    ignoring = make_context("ignoring", dockerfile, {**files, ".dockerignore": "secret.txt\n"})
    with pytest.raises(BuildError, match=r"secret\.txt"):
        build_image(engine, source(ignoring), leftovers.image, Lines())


def test_file_target_and_build_args_options_reach_the_build(
    engine: Engine, leftovers: Leftovers, make_context: MakeContext
) -> None:
    dockerfile = (
        "FROM scratch AS base\nARG GREETING\nARG SECOND\n"
        "LABEL greeting=$GREETING second=$SECOND stage=base\nCOPY hello.txt /\n"
        "FROM base AS final\nLABEL stage=final\n"
    )
    context = make_context(files={"hello.txt": "hi", "docker/Custom.dockerfile": dockerfile})
    options = source(
        context,
        file="docker/Custom.dockerfile",
        target="base",
        build_args={"GREETING": leftovers.token, "SECOND": "raw"},
    )
    result = build_image(engine, options, leftovers.image, Lines())
    labels = engine.api.inspect_image(result.image_id)["Config"]["Labels"]
    assert labels == {"greeting": leftovers.token, "second": "raw", "stage": "base"}


def test_a_failing_step_raises_with_the_prefixed_last_lines(
    engine: Engine, base_images: BaseImages, leftovers: Leftovers, make_context: MakeContext
) -> None:
    marker = f"before-failure-{leftovers.token}"
    script = "; ".join(f"echo line-{i}" for i in range(30))
    dockerfile = f"FROM {base_images.busybox}\nRUN {script}; echo {marker}; exit 3\n"
    with pytest.raises(BuildError) as caught:
        build_image(engine, source(make_context(dockerfile=dockerfile)), leftovers.image, Lines())
    error = caught.value
    assert str(error).startswith(f"building {leftovers.image} failed: ")
    assert 0 < len(error.tail) <= building.TAIL_LINES
    assert all(line.startswith(f"{leftovers.image} | ") for line in error.tail)
    assert f"{leftovers.image} | {marker}" in error.tail
    assert "returned a non-zero code: 3" in error.tail[-1]
    assert f"{leftovers.image} | line-0" not in error.tail  # only the last lines


def test_a_source_path_that_is_not_a_directory_is_a_config_error(tmp_path: Path) -> None:
    missing = Source(ImageRef(image="app"), str(tmp_path / "nope"), where="build.yml, document 2")
    with pytest.raises(ConfigError, match=r"^build.yml, document 2: path: expected '.*nope'"):
        build_image(Engine(base_url="unix:///nonexistent.sock"), missing, "app", Lines())


def test_an_unreachable_engine_says_where_it_looked_and_what_to_do() -> None:
    with pytest.raises(EngineUnavailable, match=r"unix:///nonexistent\.sock: .*start dockerd"):
        Engine(base_url="unix:///nonexistent.sock").ping()


def test_concurrent_builds_write_whole_prefixed_lines_into_one_stream(
    engine: Engine, base_images: BaseImages, leftovers: Leftovers, make_context: MakeContext
) -> None:
    writes, _ = three_builds_at_once(engine, base_images.busybox, leftovers, make_context)
    says = [w for w in writes if "-says-" in w and "echo" not in w]
    assert len(says) == 3 * 200


def test_a_cancelled_build_really_stops(
    engine: Engine, base_images: BaseImages, leftovers: Leftovers, make_context: MakeContext
) -> None:
    started = f"started-{leftovers.token}"
    dockerfile = f"FROM {base_images.busybox}\nRUN echo {started} && sleep 30\n"
    out = Lines(wanted=started)
    cancel = threading.Event()
    raised: list[BaseException] = []

    def build() -> None:
        try:
            build_image(
                engine,
                source(make_context(dockerfile=dockerfile)),
                leftovers.image,
                out,
                cancel.is_set,
            )
        except BaseException as e:
            raised.append(e)

    thread = threading.Thread(target=build)
    thread.start()
    assert out.seen.wait(timeout=60), out.texts()
    assert step_containers(engine, leftovers.token) != []
    cancel.set()
    thread.join(timeout=25)  # well before the 30 s sleep could end by itself
    assert not thread.is_alive()
    assert [type(e) for e in raised] == [BuildCancelled]
    # The engine kills the step's container after the client hung up; `leftovers` waits for it.


def step_containers(engine: Engine, token: str) -> list[str]:
    """Containers running the test's RUN step (the engine may still list them as created)."""
    containers = engine.api.containers(all=True)
    return [c["Id"] for c in containers if token in c["Command"] and c["State"] != "exited"]


# -- pushes ---------------------------------------------------------------------------------------
def build(engine: Engine, leftovers: Leftovers, make_context: MakeContext) -> BuildResult:
    """A tiny image unique to the test, built under its leftovers-tracked name."""
    context = make_context(files={"f": leftovers.token})
    return build_image(engine, source(context), leftovers.image, Lines())


def registry_digest(registry: RunningRegistry, repository: str, reference: str) -> str:
    accept = [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
    request = urllib.request.Request(
        f"{registry.url}/v2/{repository}/manifests/{reference}",
        headers={"Accept": ", ".join(accept)},
        method="HEAD",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.headers["Docker-Content-Digest"])


@pytest.mark.registry
def test_a_push_returns_the_digest_the_registry_holds(
    engine: Engine, registry: RunningRegistry, leftovers: Leftovers, make_context: MakeContext
) -> None:
    built = build(engine, leftovers, make_context)
    repository = f"devloop-test/{leftovers.token}"
    out = Lines()
    pushed = building.push_image(engine, built.tag, f"{registry.host}/{repository}", out)
    name, _, digest = pushed.partition("@")
    assert name == f"{registry.host}/{repository}"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert registry_digest(registry, repository, digest) == digest
    push_tag = out.texts()[0].rpartition(":")[2]
    assert push_tag.startswith("kbld-rand-")
    assert registry_digest(registry, repository, push_tag) == digest
    with pytest.raises(docker.errors.ImageNotFound):
        engine.api.inspect_image(f"{name}:{push_tag}")  # the local push tag is gone
    assert {prefix for prefix, _ in out.pairs} == {name}


@pytest.mark.registry
def test_a_push_without_credentials_is_an_auth_error(
    engine: Engine,
    auth_registry: RunningRegistry,
    leftovers: Leftovers,
    make_context: MakeContext,
) -> None:
    built = build(engine, leftovers, make_context)
    target = f"{auth_registry.host}/devloop-test/{leftovers.token}"
    with pytest.raises(AuthError, match=f"pushing {target} failed"):
        building.push_image(engine, built.tag, target, Lines())


@pytest.mark.registry
def test_a_push_logs_in_with_the_docker_config(
    docker_config: Path,
    auth_registry: RunningRegistry,
    leftovers: Leftovers,
    make_context: MakeContext,
) -> None:
    engine = Engine(use_buildx=False)  # reads DOCKER_CONFIG when it connects
    built = build(engine, leftovers, make_context)
    target = f"{auth_registry.host}/devloop-test/{leftovers.token}"
    pushed = building.push_image(engine, built.tag, target, Lines())
    assert pushed.startswith(f"{target}@sha256:")
    engine.close()


@pytest.mark.anyio
async def test_cancelling_the_waiting_task_stops_the_build_in_its_worker_thread(
    engine: Engine, base_images: BaseImages, leftovers: Leftovers, make_context: MakeContext
) -> None:
    started = f"started-{leftovers.token}"
    dockerfile = f"FROM {base_images.busybox}\nRUN echo {started} && sleep 30\n"
    out = Lines(wanted=started)
    context = source(make_context(dockerfile=dockerfile))

    raised: list[BaseException] = []

    def build() -> None:
        try:
            build_image(engine, context, leftovers.image, out, resolving._cancelled)
        except BaseException as e:
            raised.append(e)

    with anyio.fail_after(25):  # the sleep would take 30 s: only a real stop ends sooner
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, build)
            await anyio.to_thread.run_sync(out.seen.wait, 60)
            tg.cancel_scope.cancel()
    assert [type(e) for e in raised] == [BuildCancelled]
    assert out.texts()[-1] == started  # nothing after the cancel: no "finished build"
