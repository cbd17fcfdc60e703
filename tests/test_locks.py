"""Lock files: kbld's shapes, and feeding one back reproduces the run that wrote it."""

from __future__ import annotations

import io

import anyio
import yaml
from hypothesis import given
from hypothesis import strategies as st

from devloop.kbld.config import KBLD_COMPAT_VERSION, load_config
from devloop.kbld.documents import read_inputs, split_documents
from devloop.kbld.locks import imgpkg_lock, kbld_lock, rule_to_yaml
from devloop.kbld.model import (
    AllIndexes,
    Config,
    KeyMatcher,
    Resolved,
    SearchRule,
    ValueMatcher,
)
from devloop.kbld.pipeline import find, rewrite
from devloop.kbld.resolving import Resolver
from devloop.logs import LineWriter

DIGEST = "sha256:" + "4f" * 32
MANIFESTS = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - image: nginx@{DIGEST}
  - image: app
  - image: sidecar
  initContainers:
  - picture: tools@{DIGEST}
"""
CONFIG = """\
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
keys: [picture]
searchRules:
- valueMatcher: {imageRepo: sidecar}
  updateStrategy: {none: {}}
overrides:
- image: app
  newImage: reg.local/app@sha256:%s
  preresolved: true
  origins: [{local: {path: /src/app}}]
""" % ("ab" * 32)


def resolve(text: str) -> tuple[dict[str, Resolved], str, Config]:
    """Run devloop's offline resolution (digests and preresolved overrides) over `text`."""
    found = find(read_inputs(["-"], io.StringIO(text)))
    resolver = Resolver(found.config, LineWriter(io.StringIO()))
    resolved = anyio.run(resolver.resolve_all, found.urls)
    return resolved, rewrite(found, resolved, annotate=False), found.config


def urls(resolved: dict[str, Resolved]) -> dict[str, str]:
    return {original: r.url for original, r in resolved.items()}


def test_a_kbld_lock_fed_back_reproduces_the_same_references_and_output() -> None:
    resolved, output, config = resolve(MANIFESTS + "---\n" + CONFIG)
    again, again_output, _ = resolve(MANIFESTS + "---\n" + kbld_lock(resolved, config))
    assert sorted(resolved) == ["app", f"nginx@{DIGEST}", f"tools@{DIGEST}"]
    assert urls(again) == urls(resolved)
    assert again_output == output


def test_an_imgpkg_lock_fed_back_reproduces_references_and_keeps_origins() -> None:
    resolved, output, _ = resolve(MANIFESTS + "---\n" + CONFIG)
    rules_only = CONFIG.split("overrides")[0]  # an ImagesLock carries no search rules
    lock = imgpkg_lock(resolved, origins_annotation=True)
    again, again_output, _ = resolve(f"{MANIFESTS}---\n{rules_only}---\n{lock}")
    assert urls(again) == urls(resolved)
    assert again_output == output
    # The origins come back whole, and the preresolved origin is not added a second time.
    assert again["app"].origins == resolved["app"].origins
    assert [next(iter(o)) for o in again["app"].origins] == ["local", "preresolved"]


def test_the_kbld_lock_has_kbld_shape_sorted_overrides_and_only_user_rules() -> None:
    resolved = {
        "b": Resolved("reg/b@" + DIGEST),
        "a:1": Resolved("reg/a@" + DIGEST, ({"resolved": {"url": "a:1", "tag": "1"}},)),
    }
    config = Config(search_rules=(SearchRule(KeyMatcher(name="picture")),))
    text = kbld_lock(resolved, config)
    assert text == (
        "apiVersion: kbld.k14s.io/v1alpha1\n"
        "kind: Config\n"
        f"minimumRequiredVersion: {KBLD_COMPAT_VERSION}\n"
        "overrides:\n"
        f"- image: a:1\n  newImage: reg/a@{DIGEST}\n  preresolved: true\n"
        f"- image: b\n  newImage: reg/b@{DIGEST}\n  preresolved: true\n"
        "searchRules:\n"
        "- keyMatcher:\n    name: picture\n"
    )


def test_an_empty_kbld_lock_still_loads() -> None:
    config, rest, warnings = load_config(list(split_documents(kbld_lock({}, Config()), "l.yml")))
    assert (config, rest, warnings) == (
        Config(minimum_required_version=KBLD_COMPAT_VERSION),
        [],
        [],
    )


def test_the_imgpkg_lock_starts_with_a_marker_and_has_ids_and_origins() -> None:
    origins = ({"resolved": {"tag": "1", "url": "a:1"}},)
    resolved = {"a:1": Resolved("reg/a@" + DIGEST, origins), "d": Resolved("reg/d@" + DIGEST)}
    text = imgpkg_lock(resolved, origins_annotation=True)
    assert text.startswith("---\napiVersion: imgpkg.carvel.dev/v1alpha1\n")
    images = yaml.safe_load(text)["images"]
    assert [i["annotations"]["kbld.carvel.dev/id"] for i in images] == ["a:1", "d"]
    assert yaml.safe_load(images[0]["annotations"]["kbld.carvel.dev/origins"]) == list(origins)
    assert "kbld.carvel.dev/origins" not in images[1]["annotations"]


def test_the_imgpkg_lock_leaves_origins_out_when_asked() -> None:
    resolved = {"a": Resolved("reg/a@" + DIGEST, ({"local": {"path": "/x"}},))}
    images = yaml.safe_load(imgpkg_lock(resolved, origins_annotation=False))["images"]
    assert images == [{"annotations": {"kbld.carvel.dev/id": "a"}, "image": "reg/a@" + DIGEST}]


def test_the_default_strategy_is_left_out_of_a_serialised_rule() -> None:
    assert rule_to_yaml(SearchRule(None, ValueMatcher(image="x"))) == {
        "valueMatcher": {"image": "x"}
    }


names = st.text(alphabet="abcXYZ-_.", min_size=1, max_size=6)
parts = st.one_of(names, st.integers(0, 9), st.just(AllIndexes()))
key_matchers = st.one_of(
    st.builds(KeyMatcher, name=names),
    st.builds(KeyMatcher, path=st.lists(parts, min_size=1, max_size=4).map(tuple)),
)
value_matchers = st.one_of(
    st.builds(ValueMatcher, image=names), st.builds(ValueMatcher, image_repo=names)
)


def rules_of(children: st.SearchStrategy[tuple[SearchRule, ...]]) -> st.SearchStrategy[SearchRule]:
    matchers = st.one_of(
        st.tuples(key_matchers, st.none()),
        st.tuples(st.none(), value_matchers),
        st.tuples(key_matchers, value_matchers),
    )
    flat = st.sampled_from(["entireValue", "none"]).map(lambda s: (s, ()))
    deep = st.tuples(st.sampled_from(["json", "yaml"]), children)
    return st.builds(lambda m, s: SearchRule(m[0], m[1], s[0], s[1]), matchers, flat | deep)


search_rules = st.recursive(
    rules_of(st.just(())),
    lambda inner: rules_of(st.lists(inner, max_size=2).map(tuple)),
    max_leaves=6,
)


@given(st.lists(search_rules, max_size=4, unique=True))
def test_any_search_rule_survives_a_trip_through_the_kbld_lock(rules: list[SearchRule]) -> None:
    text = kbld_lock({}, Config(search_rules=tuple(rules)))
    config, _, warnings = load_config(list(split_documents(text, "lock.yml")))
    assert config.search_rules == tuple(rules)
    assert warnings == []
