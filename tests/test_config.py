"""The kbld config loader: which documents are config, what they mean, and every error it gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from devloop.errors import ConfigError
from devloop.kbld.config import KBLD_COMPAT_VERSION, check_source_path, load_config
from devloop.kbld.documents import Document, split_documents
from devloop.kbld.model import (
    AllIndexes,
    Config,
    Destination,
    DockerBuild,
    ImageRef,
    KeyMatcher,
    Override,
    SearchRule,
    Source,
    ValueMatcher,
)

HEAD = "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\n"
POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{image: app}]}\n"


def docs(text: str, file: str = "build.yml") -> list[Document]:
    return list(split_documents(text, file))


def load(text: str) -> tuple[Config, list[Document], list[str]]:
    return load_config(docs(text))


def config_error(body: str) -> str:
    """The message for `body` as document 2 of build.yml (a Pod is document 1)."""
    with pytest.raises(ConfigError) as caught:
        load(f"{POD}---\n{HEAD}{body}")
    return str(caught.value)


def test_config_documents_are_removed_and_the_rest_passes_through_in_order() -> None:
    text = f"{POD}---\n{HEAD}keys: [k]\n---\nkind: Object\n---\nfoo: bar\n"
    config, rest, warnings = load(text)
    assert [d.index for d in rest] == [1, 3, 4]
    assert config.search_rules == (SearchRule(KeyMatcher(name="k")),)
    assert warnings == []


def test_every_kbld_kind_is_read_with_one_schema_and_concatenated_in_input_order() -> None:
    kinds = ["Sources", "ImageOverrides", "ImageDestinations", "ImageKeys", "Config"]
    text = "---\n".join(
        f"apiVersion: kbld.k14s.io/v1alpha1\nkind: {kind}\n"
        f"overrides: [{{image: a{i}, newImage: b{i}}}]\n"
        for i, kind in enumerate(kinds)
    )
    config, rest, _ = load(text)
    assert rest == []
    assert [o.ref.image for o in config.overrides] == [f"a{i}" for i in range(len(kinds))]


def test_the_first_matching_entry_wins_across_documents() -> None:
    first = f"{HEAD}overrides: [{{imageRepo: app, newImage: first}}]\n"
    second = f"{HEAD}overrides: [{{image: 'app:1', newImage: second}}]\n"
    config, _, _ = load(f"{first}---\n{second}")
    override = config.override_for("app:1")
    assert override is not None and override.new_image == "first"


def test_a_full_config_becomes_typed_values() -> None:
    text = HEAD + (
        "minimumRequiredVersion: 0.30.0\n"
        "sources:\n"
        "- image: app\n  path: src\n  docker:\n    build:\n"
        "      file: Dockerfile.dev\n      target: dev\n      pull: true\n      noCache: true\n"
        "      platform: linux/amd64\n      buildkit: true\n"
        "      buildArgs: {A: '1'}\n"
        "overrides:\n- imageRepo: old\n  newImage: new\n  preresolved: true\n"
        "  origins: [{local: {path: /src}}]\n"
        "destinations:\n- image: app\n  tags: [latest, v1]\n"
    )
    config, _, warnings = load(text)
    assert warnings == []
    docker = DockerBuild("Dockerfile.dev", "dev", True, True, {"A": "1"}, "linux/amd64")
    assert config.sources == (Source(ImageRef("app"), "src", docker, "build.yml, document 1", 0),)
    origins = ({"local": {"path": "/src"}},)
    assert config.overrides == (Override(ImageRef(image_repo="old"), "new", True, origins),)
    assert config.destinations == (Destination(ImageRef("app"), "app", ("latest", "v1")),)
    assert config.minimum_required_version == "0.30.0"


def test_sources_remember_their_document_and_position_for_later_errors() -> None:
    text = f"{POD}---\n{HEAD}sources: [{{image: a, path: x}}, {{image: b, path: y}}]\n"
    config, _, _ = load(text)
    assert [(s.where, s.index) for s in config.sources] == [
        ("build.yml, document 2", 0),
        ("build.yml, document 2", 1),
    ]


def test_build_args_in_raw_options_are_folded_into_build_args(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = "[--build-arg, A=1, '--build-arg=B=x=y', --build-arg, FROM_ENV, --build-arg, UNSET]"
    body = f"sources:\n- image: a\n  path: x\n  docker: {{build: {{rawOptions: {raw}}}}}\n"
    monkeypatch.setenv("FROM_ENV", "env value")
    monkeypatch.delenv("UNSET", raising=False)
    config, _, warnings = load(HEAD + body)
    docker = config.sources[0].docker
    assert docker.build_args == {"A": "1", "B": "x=y", "FROM_ENV": "env value"}
    assert docker.raw_options[:2] == ("--build-arg", "A=1")
    assert warnings == []


def test_build_args_field_wins_over_raw_options() -> None:
    build = "{rawOptions: [--build-arg, A=raw], buildArgs: {A: field}}"
    config, _, _ = load(f"{HEAD}sources: [{{image: a, path: x, docker: {{build: {build}}}}}]\n")
    assert config.sources[0].docker.build_args == {"A": "field"}


def test_other_raw_options_are_kept_as_written_for_buildkit() -> None:
    raw = "[--secret, id=token, '--label=k=v', --build-arg, A=1, --cache-from, type=local]"
    body = f"sources: [{{image: a, path: x, docker: {{build: {{rawOptions: {raw}}}}}}}]\n"
    config, _, warnings = load(HEAD + body)
    docker = config.sources[0].docker
    assert docker.buildkit_options == (
        *("--secret", "id=token", "--label=k=v", "--cache-from", "type=local"),
    )
    assert docker.build_args == {"A": "1"}
    assert warnings == []


def test_a_raw_option_devloop_sets_itself_is_an_error_naming_only_the_option() -> None:
    raw = "[--build-arg, A=1, '--output=type=local,dest=/secret/place']"
    body = f"sources: [{{image: a, path: x, docker: {{build: {{rawOptions: {raw}}}}}}}]\n"
    with pytest.raises(ConfigError) as caught:
        load(HEAD + body)
    assert str(caught.value) == (
        "build.yml, document 1: sources[0].docker.build.rawOptions[2]: '--output' is set by "
        "devloop. Remove it"
    )


def test_kbld_buildx_sources_are_read_like_docker_build_and_require_buildkit() -> None:
    build = "{file: D, target: t, pull: true, noCache: true, rawOptions: [--ssh, default]}"
    body = f"sources: [{{image: a, path: x, docker: {{buildx: {build}}}}}]\n"
    config, _, warnings = load(HEAD + body)
    docker = config.sources[0].docker
    assert (docker.file, docker.target, docker.pull, docker.no_cache) == ("D", "t", True, True)
    assert docker.buildkit_options == ("--ssh", "default")
    assert docker.buildx
    assert warnings == []


def test_an_unknown_field_is_a_warning_naming_its_path_and_the_known_fields() -> None:
    body = "sources: [{image: a, path: x, docker: {pul: true}}]\n"
    _, _, warnings = load(f"{POD}---\n{HEAD}{body}")
    assert warnings == [
        "build.yml, document 2: sources[0].docker.pul: unknown field, ignored "
        "(known: build, buildx)"
    ]


def test_a_key_differing_only_in_case_gets_the_right_spelling_suggested() -> None:
    _, _, warnings = load(
        f"{HEAD}sources: [{{image: a, path: x, docker: {{build: {{noCache: true, Target: t}}}}}}]\n"
    )
    assert warnings == [
        "build.yml, document 1: sources[0].docker.build.Target: unknown field, ignored: "
        "did you mean 'target'? (devloop matches keys exactly, kbld ignores case)"
    ]


def test_unknown_top_level_fields_list_the_config_fields() -> None:
    _, _, warnings = load(f"{HEAD}overides: []\n")
    assert warnings == [
        "build.yml, document 1: overides: unknown field, ignored (known: minimumRequiredVersion, "
        "sources, overrides, destinations, keys, searchRules)"
    ]


def test_metadata_on_a_config_document_is_accepted_quietly() -> None:
    _, _, warnings = load(f"{HEAD}metadata: {{name: build}}\n")
    assert warnings == []


def test_keys_come_before_search_rules_of_every_document_and_duplicates_are_dropped() -> None:
    first = f"{HEAD}searchRules: [{{keyMatcher: {{name: r1}}}}]\nkeys: [k1]\n"
    second = f"{HEAD}keys: [k2, r1]\nsearchRules: [{{keyMatcher: {{name: k1}}}}]\n"
    config, _, _ = load(f"{first}---\n{second}")
    names = [rule.key_matcher.name for rule in config.search_rules if rule.key_matcher]
    assert names == ["k1", "k2", "r1"]
    assert config.rules()[-1] == SearchRule(KeyMatcher(name="image"))


def test_search_rules_read_paths_value_matchers_and_nested_strategies() -> None:
    body = (
        "searchRules:\n"
        "- keyMatcher: {path: [spec, {index: 0}, {allIndexes: true}, image]}\n"
        "  updateStrategy: {none: {}}\n"
        "- valueMatcher: {imageRepo: repo}\n"
        "  updateStrategy:\n"
        "    yaml:\n"
        "      searchRules:\n"
        "      - keyMatcher: {name: img}\n"
        "        updateStrategy: {json: {searchRules: [{valueMatcher: {image: x}}]}}\n"
    )
    config, _, warnings = load(HEAD + body)
    innermost = SearchRule(None, ValueMatcher(image="x"))
    nested = SearchRule(KeyMatcher(name="img"), None, "json", (innermost,))
    assert config.search_rules == (
        SearchRule(KeyMatcher(path=("spec", 0, AllIndexes(), "image")), None, "none"),
        SearchRule(None, ValueMatcher(image_repo="repo"), "yaml", (nested,)),
    )
    assert warnings == []


def test_images_lock_becomes_preresolved_overrides_with_their_origins() -> None:
    lock = (
        "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n"
        "- image: reg/app@sha256:aaaa\n"
        "  annotations:\n"
        "    kbld.carvel.dev/id: app\n"
        "    kbld.carvel.dev/origins: |\n"
        "      - local: {path: /src}\n"
        "      - future: {x: 1}\n"
        "- image: reg/b@sha256:bbbb\n"
        "  annotations: {kbld.carvel.dev/id: b}\n"
    )
    config, rest, _ = load(f"{POD}---\n{lock}")
    assert len(rest) == 1
    assert config.overrides == (
        Override(ImageRef("app"), "reg/app@sha256:aaaa", True, ({"local": {"path": "/src"}},)),
        Override(ImageRef("b"), "reg/b@sha256:bbbb", True, ()),
    )


def test_other_imgpkg_kinds_pass_through() -> None:
    _, rest, _ = load("apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: Bundle\nx: 1\n")
    assert len(rest) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "sources: [{image: a}]",
            "sources[0].path: required, the directory to build from (relative to the current "
            "directory)",
        ),
        (
            "sources: [{path: x}]",
            "sources[0]: needs image or imageRepo. "
            "Set image: <the reference as written> or imageRepo: <its repository>",
        ),
        ("sources: {image: a}", "sources: expected a list, found a mapping"),
        ("sources: [app]", "sources[0]: expected a mapping, found a string ('app')"),
        ("sources: [{image: 7, path: x}]", "sources[0].image: expected a string, found a number"),
        (
            "sources: [{image: a, path: x, docker: {build: {pull: 'yes'}}}]",
            "sources[0].docker.build.pull: expected true or false, found a string ('yes')",
        ),
        (
            "sources: [{image: a, path: x, docker: {build: {buildArgs: {PORT: 8080}}}}]",
            "sources[0].docker.build.buildArgs.PORT: expected a string, found a number. Quote it",
        ),
        (
            "sources: [{image: a, path: x, docker: {build: {buildArgs: [A=1]}}}]",
            "sources[0].docker.build.buildArgs: expected a mapping of names to strings, "
            "found a list",
        ),
        (
            "sources: [{image: a, path: x, docker: {build: {rawOptions: [1]}}}]",
            "sources[0].docker.build.rawOptions[0]: expected a non-empty string, found a number",
        ),
        (
            "sources: [{image: a, path: x, pack: {build: {builder: b}}}]",
            "sources[0].pack: builder not supported yet. Use docker.build",
        ),
        (
            "sources: [{image: a, path: x, docker: {buildx: {}, build: {}}}]",
            "sources[0].docker: has both build and buildx. Keep one of them",
        ),
        (
            "overrides: [{image: a}]",
            "overrides[0].newImage: required, the reference to use instead",
        ),
        (
            "overrides: [{image: a, newImage: b, tagSelection: {semver: {constraints: '>1'}}}]",
            "overrides[0].tagSelection: not supported yet. Pin the tag in newImage instead",
        ),
        (
            "overrides: [{image: a, newImage: b, platformSelection: {os: linux}}]",
            "overrides[0].platformSelection: not supported yet. "
            "Remove it: devloop uses the image as resolved by the registry",
        ),
        (
            "overrides: [{image: a, newImage: b, origins: {local: {}}}]",
            "overrides[0].origins: expected a list of origins, found a mapping",
        ),
        ("destinations: [{newImage: b}]", "destinations[0]: needs image or imageRepo. Set image:"),
        ("keys: ['']", "keys[0]: expected a non-empty string, found a string ('')"),
        (
            "searchRules: [{updateStrategy: {none: {}}}]",
            "searchRules[0]: needs keyMatcher or valueMatcher. "
            "Add keyMatcher: {name: <key>} for example",
        ),
        (
            "searchRules: [{keyMatcher: {}}]",
            "searchRules[0].keyMatcher: needs either name or path (not both). name matches a key "
            "at any depth; path is the full key path from the document root",
        ),
        (
            "searchRules: [{keyMatcher: {name: a, path: [a]}}]",
            "searchRules[0].keyMatcher: needs either name or path (not both)",
        ),
        (
            "searchRules: [{keyMatcher: {path: [spec, 0]}}]",
            "searchRules[0].keyMatcher.path[1]: expected a key, {index: N} or "
            "{allIndexes: true}, found a number. Write list positions as {index: 0}",
        ),
        (
            "searchRules: [{keyMatcher: {path: [{allIndexes: false}]}}]",
            "searchRules[0].keyMatcher.path[0]: expected a key, {index: N} or "
            "{allIndexes: true}, found a mapping",
        ),
        (
            "searchRules: [{valueMatcher: {}}]",
            "searchRules[0].valueMatcher: needs image or imageRepo",
        ),
        (
            "searchRules: [{keyMatcher: {name: a}, updateStrategy: {}}]",
            "searchRules[0].updateStrategy: choose exactly one of entireValue, none, json, yaml. "
            "e.g. updateStrategy: {json: {searchRules: [...]}}",
        ),
        (
            "searchRules: [{keyMatcher: {name: a}, updateStrategy: {none: {}, json: {}}}]",
            "searchRules[0].updateStrategy: choose exactly one of",
        ),
        (
            "searchRules: [{keyMatcher: {name: a}, updateStrategy: {json: {searchRules: [{}]}}}]",
            "searchRules[0].updateStrategy.json.searchRules[0]: needs keyMatcher or valueMatcher",
        ),
        (
            "minimumRequiredVersion: 0.30",
            "minimumRequiredVersion: expected a string, found a number. Quote it",
        ),
        (
            "minimumRequiredVersion: v0.30.0",
            "minimumRequiredVersion: 'v0.30.0' must not start with 'v'. Write '0.30.0'",
        ),
        (
            "minimumRequiredVersion: latest",
            "minimumRequiredVersion: 'latest' is not a version. Write a version such as '0.45.0'",
        ),
        (
            "minimumRequiredVersion: 99.0.0",
            f"minimumRequiredVersion: devloop implements kbld {KBLD_COMPAT_VERSION}, which does "
            "not meet the minimum required version '99.0.0'. Use a newer devloop, or lower "
            "minimumRequiredVersion if the config allows it",
        ),
    ],
)
def test_config_errors_name_file_document_and_key_path(body: str, message: str) -> None:
    assert config_error(body + "\n").startswith(f"build.yml, document 2: {message}")


def test_a_foreign_kind_in_the_kbld_group_lists_the_valid_kinds() -> None:
    with pytest.raises(ConfigError) as caught:
        load(f"{POD}---\napiVersion: kbld.k14s.io/v1alpha1\nkind: SearchRules\n")
    assert str(caught.value) == (
        "build.yml, document 2: kind: 'SearchRules' is not a kbld config kind. Use one of "
        "Config, Sources, ImageOverrides, ImageDestinations, ImageKeys (Config is recommended)"
    )


def test_an_unknown_kbld_api_version_is_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load("apiVersion: kbld.k14s.io/v1\nkind: Config\n")
    assert str(caught.value) == (
        "build.yml, document 1: apiVersion: 'kbld.k14s.io/v1' is not a kbld config version. "
        "Use apiVersion: kbld.k14s.io/v1alpha1"
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "- image: reg/a@sha256:aa\n",
            'images[0].annotations["kbld.carvel.dev/id"]: required, the reference as written in '
            "the manifests. Write the lock with devloop or kbld --imgpkg-lock-output",
        ),
        (
            "- annotations: {kbld.carvel.dev/id: a}\n",
            "images[0].image: required, the locked reference (repo@sha256:...)",
        ),
        (
            "- image: r@sha256:aa\n  annotations:\n    kbld.carvel.dev/id: a\n"
            "    kbld.carvel.dev/origins: '[unclosed'\n",
            'images[0].annotations["kbld.carvel.dev/origins"]: not valid YAML. '
            "Write a YAML list of origins",
        ),
        (
            "- image: r@sha256:aa\n  annotations:\n    kbld.carvel.dev/id: a\n"
            "    kbld.carvel.dev/origins: 'local: x'\n",
            'images[0].annotations["kbld.carvel.dev/origins"]: expected a list of origins, '
            "found a mapping",
        ),
    ],
)
def test_images_lock_errors_name_the_entry(entry: str, message: str) -> None:
    head = "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n"
    with pytest.raises(ConfigError) as caught:
        load_config(docs(head + entry, "lock.yml"))
    assert str(caught.value) == f"lock.yml, document 1: {message}"


@pytest.mark.parametrize(
    ("minimum", "accepted"),
    [
        (KBLD_COMPAT_VERSION, True),
        ("0.8", True),
        ("0.45.0-rc.1", True),
        ("0.45.1-alpha", False),
        ("0.46.0", False),
        ("1", False),
    ],
)
def test_minimum_required_version_compares_semantic_versions(minimum: str, accepted: bool) -> None:
    text = f"{HEAD}minimumRequiredVersion: '{minimum}'\n"
    if accepted:
        assert load(text)[0].minimum_required_version == minimum
    else:
        with pytest.raises(ConfigError, match="does not meet the minimum required version"):
            load(text)


def test_destination_new_image_defaults_to_the_image_or_its_repository() -> None:
    body = "destinations: [{image: 'a:1'}, {imageRepo: b}, {image: c, newImage: reg/c}]\n"
    config, _, _ = load(HEAD + body)
    assert [d.new_image for d in config.destinations] == ["a:1", "b", "reg/c"]


def test_source_paths_are_not_checked_while_loading(tmp_path: Path) -> None:
    config, _, _ = load(f"{HEAD}sources: [{{image: a, path: {tmp_path / 'missing'}}}]\n")
    assert config.sources[0].path.endswith("missing")


def test_check_source_path_accepts_a_directory(tmp_path: Path) -> None:
    check_source_path(Source(ImageRef("a"), str(tmp_path)))


def test_check_source_path_names_the_source_when_the_directory_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _, _ = load(
        f"{POD}---\n{HEAD}sources: [{{image: a, path: x}}, {{image: b, path: nope}}]\n"
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    check_source_path(config.sources[0])
    with pytest.raises(ConfigError) as caught:
        check_source_path(config.sources[1])
    assert str(caught.value) == (
        "build.yml, document 2: sources[1].path: 'nope' does not exist. The path is relative to "
        f"the directory devloop runs in ({tmp_path}): run devloop from there or fix the path"
    )


def test_check_source_path_refuses_a_file(tmp_path: Path) -> None:
    file = tmp_path / "Dockerfile"
    file.write_text("FROM scratch\n")
    with pytest.raises(ConfigError, match="is not a directory"):
        check_source_path(Source(ImageRef("a"), str(file), where="b.yml, document 1"))
