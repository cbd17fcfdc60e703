"""Rendering: only image bytes change, the annotation is kbld's, odd shapes still work."""

from __future__ import annotations

import copy
import io
import re
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from devloop.kbld.documents import Document, read_inputs
from devloop.kbld.model import DEFAULT_RULE, IMAGES_ANNOTATION, KeyMatcher, Resolved, SearchRule
from devloop.kbld.rendering import origins_yaml, render, render_stream
from devloop.kbld.searching import find_sites

DIGEST = "sha256:" + "0123456789abcdef" * 4


def doc(text: str) -> Document:
    [only] = read_inputs(["-"], io.StringIO(text))
    return only


def resolved_for(urls: list[str], origins: bool = True) -> dict[str, Resolved]:
    return {
        url: Resolved(
            f"reg.local/{url.split(':')[0]}@{DIGEST}",
            ({"resolved": {"tag": "1", "url": url}},) if origins else (),
        )
        for url in urls
    }


def rendered(text: str, urls: list[str], annotate: bool = True, rules: Any = None) -> str:
    d = doc(text)
    return render(d, find_sites(d, rules or (DEFAULT_RULE,)), resolved_for(urls), annotate)


# ---- properties over generated manifests ----

_refs = st.from_regex(
    r"[a-z][a-z0-9]{0,6}(\.io)?(/[a-z0-9]{1,5}){0,2}(:[a-z0-9.]{1,5})?", fullmatch=True
)
# Mostly what resolution produces, sometimes text that forces a change of quoting.
_new = st.one_of(
    _refs.map(lambda r: f"{r.split(':')[0]}@{DIGEST}"),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12),
)
_styles = st.sampled_from(["plain", "single", "double"])
_comments = st.sampled_from(["", "  # pinned", "  # it's: fine #"])


def _scalar(value: str, style: str) -> str:
    if style == "single":
        return "'" + value.replace("'", "''") + "'"
    if style == "double":
        return f'"{value}"'
    return value


@st.composite
def manifests(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    """A Deployment-like text with varied styles and comments, and a resolution per image."""
    lines = ["# generated", "apiVersion: apps/v1", "kind: Deployment"]
    if draw(st.booleans()):
        lines += ["metadata:", "  name: app  # the name"]
        if draw(st.booleans()):
            lines += ["  annotations:", "    note: 'keep: me'"]
    lines += ["spec:", "  template:", "    spec:", "      containers:"]
    images = draw(st.lists(_refs, min_size=1, max_size=4))
    for i, image in enumerate(images):
        scalar = _scalar(image, draw(_styles))
        if draw(st.booleans()):
            lines.append(
                f"      - {{name: c{i}, image: {scalar}, args: [a, 'b']}}{draw(_comments)}"
            )
        else:
            lines += [f"      - name: c{i}", f"        image: {scalar}{draw(_comments)}"]
            lines.append("        # between")
    new = {image: draw(_new) for image in images}
    return "\n".join(lines) + "\n", new


def _pieces_around_sites(d: Document) -> list[str]:
    sites = sorted({(s.start, s.end) for s in find_sites(d, (DEFAULT_RULE,))})
    starts = [0] + [end for _, end in sites]
    ends = [start for start, _ in sites] + [len(d.text)]
    return [d.text[a:b] for a, b in zip(starts, ends, strict=True)]


@settings(max_examples=200, deadline=None)
@given(manifests())
def test_rendering_changes_only_the_image_scalars_and_each_reads_back_as_its_new_value(
    case: tuple[str, dict[str, str]],
) -> None:
    text, new = case
    d = doc(text)
    resolved = {old: Resolved(url) for old, url in new.items()}
    out = render(d, find_sites(d, (DEFAULT_RULE,)), resolved, annotate=False)
    pieces = _pieces_around_sites(d)
    pattern = "(.*?)".join(re.escape(piece) for piece in pieces)
    match = re.fullmatch(pattern, out, re.DOTALL)
    assert match is not None, "a byte outside the image scalars changed"
    old_values = [s.value for s in sorted(find_sites(d, (DEFAULT_RULE,)), key=lambda s: s.start)]
    for scalar, old in zip(match.groups(), old_values, strict=True):
        assert yaml.safe_load(f"[{scalar}]") == [new[old]]


@settings(max_examples=200, deadline=None)
@given(manifests(), st.booleans())
def test_rendered_text_parses_to_the_input_with_only_images_and_the_annotation_changed(
    case: tuple[str, dict[str, str]], with_origins: bool
) -> None:
    text, new = case
    d = doc(text)
    sites = find_sites(d, (DEFAULT_RULE,))
    origins = ({"preresolved": {"url": "x"}},) if with_origins else ()
    resolved = {old: Resolved(url, origins) for old, url in new.items()}
    expected = copy.deepcopy(d.data)
    for site in sites:
        _set(expected, site.path, new[site.value])
    if with_origins:
        meta = expected.setdefault("metadata", {})
        meta.setdefault("annotations", {})[IMAGES_ANNOTATION] = origins_yaml(resolved.values())
    assert yaml.safe_load(render(d, sites, resolved, annotate=True)) == expected


def _set(tree: Any, path: tuple[str | int, ...], value: str) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


# ---- scalars ----


def test_an_unchanged_reference_leaves_the_text_untouched() -> None:
    text = "image: 'a'  # x\n"
    d = doc(text)
    assert render(d, find_sites(d, (DEFAULT_RULE,)), {"a": Resolved("a")}, True) == text


def test_a_plain_scalar_is_quoted_only_when_the_new_value_needs_it() -> None:
    d = doc("a: {image: x}\nb:\n  image: y\n")
    new = {"x": Resolved("123"), "y": Resolved("has: colon")}
    assert render(d, find_sites(d, (DEFAULT_RULE,)), new, False) == (
        'a: {image: "123"}\nb:\n  image: "has: colon"\n'
    )


def test_a_block_scalar_image_stays_a_block_scalar_at_its_indentation() -> None:
    out = rendered("spec:\n  image: |-\n     app\n\n  next: 1\n", ["app"])
    assert out.startswith(f"spec:\n  image: |-\n     reg.local/app@{DIGEST}\n\n  next: 1\n")


# ---- json and yaml strategies ----


def test_a_json_string_is_re_encoded_compact_with_sorted_keys_and_go_escapes() -> None:
    rule = SearchRule(key_matcher=KeyMatcher(name="cfg"), strategy="json", nested=(DEFAULT_RULE,))
    text = 'cfg: \'{"z": "<&>", "image": "app"}\'  # keep\n'
    out = rendered(text, ["app"], annotate=False, rules=(rule,))
    assert out == (
        'cfg: \'{"image":"reg.local/app@' + DIGEST + '","z":"\\u003c\\u0026\\u003e"}\'  # keep\n'
    )


def test_a_yaml_string_is_re_encoded_per_document_with_sorted_keys_in_a_literal_block() -> None:
    rule = SearchRule(key_matcher=KeyMatcher(name="cfg"), strategy="yaml", nested=(DEFAULT_RULE,))
    text = "data:\n  cfg: |\n    z: 1\n    image: app\n    ---\n    image: app\n  other: 2\n"
    out = rendered(text, ["app"], annotate=False, rules=(rule,))
    new = f"reg.local/app@{DIGEST}"
    assert out == (
        f"data:\n  cfg: |\n    ---\n    image: {new}\n    z: 1\n    ---\n    image: {new}\n"
        "  other: 2\n"
    )


# ---- the annotation ----


def test_the_annotation_is_added_under_existing_block_metadata_at_its_indentation() -> None:
    text = (
        "kind: A\nmetadata:\n    name: a  # n\n    # labels next\n    labels: {x: y}\nimage: app\n"
    )
    out = rendered(text, ["app"])
    assert out.startswith(
        "kind: A\nmetadata:\n    name: a  # n\n    # labels next\n    labels: {x: y}\n"
        "    annotations:\n      kbld.k14s.io/images: |\n        - origins:\n"
    )
    assert out.endswith(f"image: reg.local/app@{DIGEST}\n")


def test_metadata_is_created_when_missing() -> None:
    out = rendered("kind: A\nimage: app", ["app"])
    data = yaml.safe_load(out)
    assert data["metadata"]["annotations"][IMAGES_ANNOTATION] == origins_yaml(
        resolved_for(["app"]).values()
    )
    assert out.startswith(f"kind: A\nimage: reg.local/app@{DIGEST}\nmetadata:\n  annotations:\n")


def test_an_existing_images_annotation_is_replaced() -> None:
    text = (
        "metadata:\n  annotations:\n    kbld.k14s.io/images: |\n      - url: old\n"
        "    other: x  # kept\nimage: app\n"
    )
    out = rendered(text, ["app"])
    assert "old" not in out
    assert "    other: x  # kept\n" in out
    assert yaml.safe_load(out)["metadata"]["annotations"]["other"] == "x"


def test_flow_style_metadata_falls_back_to_a_round_trip_that_keeps_comments() -> None:
    out = rendered("# top\nmetadata: {name: a}  # flow\nimage: app\n", ["app"])
    data = yaml.safe_load(out)
    assert data["metadata"]["name"] == "a"
    assert IMAGES_ANNOTATION in data["metadata"]["annotations"]
    assert "# top" in out and "# flow" in out


def test_no_annotation_is_written_when_no_image_has_origins() -> None:
    d = doc("image: app\n")
    out = render(d, find_sites(d, (DEFAULT_RULE,)), resolved_for(["app"], origins=False), True)
    assert out == f"image: reg.local/app@{DIGEST}\n"


def test_no_annotation_is_written_when_annotating_is_off_or_there_are_no_images() -> None:
    assert rendered("image: app\n", ["app"], annotate=False) == f"image: reg.local/app@{DIGEST}\n"
    assert rendered("kind: A\n", []) == "kind: A\n"


def test_annotation_entries_are_sorted_by_url_without_exact_duplicates() -> None:
    same = Resolved("b@x", ({"preresolved": {"url": "b"}},))
    value = origins_yaml(
        [same, Resolved("a@x", ({"resolved": {"url": "a", "tag": "1"}},)), same, Resolved("c")]
    )
    assert value == (
        "- origins:\n  - resolved:\n      tag: '1'\n      url: a\n  url: a@x\n"
        "- origins:\n  - preresolved:\n      url: b\n  url: b@x\n"
    )


def test_the_stream_puts_each_document_after_a_marker_and_ends_each_with_a_newline() -> None:
    assert render_stream(["a: 1\n", "b: 2"]) == "---\na: 1\n---\nb: 2\n"
