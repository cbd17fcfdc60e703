"""Search rules, with kbld's semantics (first rule wins per leaf, each leaf once)."""

from __future__ import annotations

import io

from devloop.kbld.documents import Document, read_inputs
from devloop.kbld.model import (
    DEFAULT_RULE,
    AllIndexes,
    Config,
    KeyMatcher,
    SearchRule,
    ValueMatcher,
)
from devloop.kbld.searching import ImageSite, Inner, find_sites


def doc(text: str) -> Document:
    [only] = read_inputs(["-"], io.StringIO(text))
    return only


def values(text: str, *rules: SearchRule) -> list[str]:
    return [site.value for site in find_sites(doc(text), rules or (DEFAULT_RULE,))]


def by_name(name: str, **kwargs: object) -> SearchRule:
    return SearchRule(key_matcher=KeyMatcher(name=name), **kwargs)  # type: ignore[arg-type]


POD = """\
kind: Pod
spec:
  initContainers: [{name: init, image: "busybox:1"}]
  containers:
  - name: app
    image: app:1   # the app
    args: [--sidecar, sidecar:2]
  - name: other
    image: {repository: other, tag: "3"}
"""


def test_the_default_rule_finds_every_string_under_an_image_key_at_any_depth() -> None:
    assert values(POD) == ["busybox:1", "app:1"]


def test_a_site_records_the_span_style_and_path_of_its_scalar() -> None:
    d = doc(POD)
    sites = find_sites(d, (DEFAULT_RULE,))
    assert [d.text[s.start : s.end] for s in sites] == ['"busybox:1"', "app:1"]
    assert [s.style for s in sites] == ['"', ""]
    assert sites[1].path == ("spec", "containers", 0, "image")


def test_a_non_string_under_a_matched_key_is_searched_further() -> None:
    text = "image:\n  image: nested:1\n  name: x\nlist:\n  image: [a, {image: deep:2}]\n"
    assert values(text) == ["nested:1", "deep:2"]


def test_non_string_scalars_under_an_image_key_are_not_references() -> None:
    assert values("a: {image: 5}\nb: {image: null}\nc: {image: true}\nd: {image: ''}\n") == [""]


def test_a_path_matcher_needs_the_exact_full_path_and_all_indexes_matches_any_index() -> None:
    rule = SearchRule(
        key_matcher=KeyMatcher(path=("spec", "containers", AllIndexes(), "args", 1)),
    )
    assert values(POD, rule) == ["sidecar:2"]
    exact = SearchRule(key_matcher=KeyMatcher(path=("spec", "containers", 1, "image")))
    assert values(POD, exact) == []  # that value is a mapping; its children do not match


def test_a_value_matcher_alone_matches_list_elements_and_map_values_anywhere() -> None:
    rule = SearchRule(value_matcher=ValueMatcher(image="sidecar:2"))
    assert values(POD, rule) == ["sidecar:2"]


def test_image_repo_matches_any_tag_or_digest_of_the_repo_without_normalising() -> None:
    text = "a: [reg.io/x, reg.io/x:1, 'reg.io/x@sha256:" + "a" * 64 + "', docker.io/x, reg.io/xy]\n"
    rule = SearchRule(value_matcher=ValueMatcher(image_repo="reg.io/x"))
    assert values(text, rule) == ["reg.io/x", "reg.io/x:1", "reg.io/x@sha256:" + "a" * 64]


def test_key_and_value_matchers_together_must_both_match() -> None:
    rule = by_name("args", value_matcher=ValueMatcher(image="x"))
    text = "args: x\nother: x\nmore: {args: y}\n"
    assert values(text, rule) == ["x"]


def test_the_first_matching_rule_wins_and_each_leaf_is_found_once() -> None:
    skip_app = SearchRule(value_matcher=ValueMatcher(image="app:1"), strategy="none")
    assert values(POD, skip_app, by_name("image"), by_name("image")) == ["busybox:1"]


def test_a_none_rule_on_a_mapping_still_lets_the_search_go_inside() -> None:
    rule = by_name("spec", strategy="none")
    assert values(POD, rule, DEFAULT_RULE) == ["busybox:1", "app:1"]


def test_config_rules_put_the_default_image_rule_last_and_drop_repeats() -> None:
    custom = by_name("img")
    rules = Config(search_rules=(DEFAULT_RULE, custom, custom)).rules()
    assert rules == (DEFAULT_RULE, custom)
    assert Config(search_rules=(custom,)).rules() == (custom, DEFAULT_RULE)


def test_a_json_strategy_finds_references_inside_a_json_string() -> None:
    text = 'data:\n  cfg: \'{"image": "app:1", "list": [{"image": "b:2"}], "n": 1}\'\n'
    rule = by_name("cfg", strategy="json", nested=(DEFAULT_RULE,))
    sites = find_sites(doc(text), (rule,))
    assert [(s.value, s.inner) for s in sites] == [
        ("app:1", (Inner("json", ("image",)),)),
        ("b:2", (Inner("json", ("list", 0, "image")),)),
    ]
    assert {s.raw for s in sites} == {'{"image": "app:1", "list": [{"image": "b:2"}], "n": 1}'}


def test_a_yaml_strategy_numbers_the_non_empty_documents_of_the_string() -> None:
    text = "data:\n  cfg: |\n    ---\n    ---\n    image: a:1\n    ---\n    x: {image: b:2}\n"
    rule = by_name("cfg", strategy="yaml", nested=(DEFAULT_RULE,))
    sites = find_sites(doc(text), (rule,))
    assert [(s.value, s.inner) for s in sites] == [
        ("a:1", (Inner("yaml", (0, "image")),)),
        ("b:2", (Inner("yaml", (1, "x", "image")),)),
    ]


def test_a_yaml_strategy_reads_json_text_as_json_first() -> None:
    rule = by_name("cfg", strategy="yaml", nested=(DEFAULT_RULE,))
    [site] = find_sites(doc('cfg: \'{"image": "a:1"}\'\n'), (rule,))
    assert site.inner == (Inner("json", ("image",)),)


def test_a_json_strategy_on_text_that_is_not_json_finds_nothing() -> None:
    rule = by_name("cfg", strategy="json", nested=(DEFAULT_RULE,))
    assert values("cfg: 'image: a:1'\n", rule) == []


def test_strategies_nest() -> None:
    inner = by_name("cfg", strategy="json", nested=(DEFAULT_RULE,))
    outer = by_name("bundle", strategy="yaml", nested=(inner,))
    text = 'bundle: |\n  cfg: \'{"image": "a:1"}\'\n'
    [site] = find_sites(doc(text), (outer,))
    assert site.inner == (Inner("yaml", (0, "cfg")), Inner("json", ("image",)))


def test_an_aliased_scalar_is_found_at_each_use_with_the_same_span() -> None:
    sites = find_sites(doc("a: {image: &i app:1}\nb: {image: *i}\n"), (DEFAULT_RULE,))
    assert len(sites) == 2
    assert {(s.start, s.end) for s in sites} == {(sites[0].start, sites[0].end)}
    assert all(isinstance(s, ImageSite) for s in sites)
