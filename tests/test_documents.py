"""Reading `-f` inputs: splitting streams, kbld's input rules, and error messages."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from devloop.errors import ManifestError
from devloop.kbld.documents import read_inputs, split_documents


def read_text(text: str) -> list:  # type: ignore[type-arg]
    return read_inputs(["-"], io.StringIO(text))


def test_each_document_keeps_its_exact_text_and_where_it_starts_in_the_file() -> None:
    stream = "# head\n---\na: 1 # one\n--- {b: 2}\n---\n\nc: 'x'\n"
    docs = read_text(stream)
    assert [d.text for d in docs] == ["a: 1 # one\n", "{b: 2}\n", "\nc: 'x'\n"]
    assert [(d.line, d.column) for d in docs] == [(2, 0), (3, 4), (5, 0)]
    assert [d.data for d in docs] == [{"a": 1}, {"b": 2}, {"c": "x"}]


def test_comments_before_the_first_marker_and_after_an_end_marker_are_not_documents() -> None:
    stream = "# licence\n---\na: 1\n...\n# trailing\n---\nb: 2\n"
    assert [(d.index, d.data) for d in read_text(stream)] == [(1, {"a": 1}), (2, {"b": 2})]


def test_empty_documents_are_dropped_but_later_documents_keep_their_position() -> None:
    docs = read_text("---\n---\n# nothing\n---\n{}\n---\nkind: A\n")
    assert [(d.index, d.data) for d in docs] == [(4, {"kind": "A"})]
    assert docs[0].where == "stdin, document 4"


def test_a_marker_like_line_inside_an_indented_block_scalar_is_content() -> None:
    docs = read_text("a: |\n  ---\n  x\nb: 1\n")
    assert [d.data for d in docs] == [{"a": "---\nx\n", "b": 1}]


def test_malformed_yaml_names_the_file_the_document_and_the_line_in_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.yml"
    path.write_text("a: 1\n---\nb: 2\nc: [1,\n  d: e: f\n")
    with pytest.raises(ManifestError) as caught:
        read_inputs([str(path)], io.StringIO())
    message = str(caught.value)
    assert message.startswith(f"{path}, document 2: ")
    assert "at line 5 column" in message


def test_a_syntax_error_on_the_marker_line_counts_the_marker_in_its_column() -> None:
    with pytest.raises(ManifestError, match=r"document 2: .* at line 2 column 8\b"):
        read_text("a: 1\n--- x: : y\n")


def test_a_missing_path_is_named_with_what_to_do() -> None:
    with pytest.raises(ManifestError) as caught:
        read_inputs(["nope/app.yml"], io.StringIO())
    assert str(caught.value).startswith("nope/app.yml: no such file or directory. Check the -f")


def test_a_document_that_is_not_a_mapping_is_rejected_like_kbld_does() -> None:
    with pytest.raises(ManifestError, match=r"stdin, document 2: expected a mapping .* a list"):
        read_text("a: 1\n---\n- x\n")


def test_a_directory_is_walked_recursively_in_sorted_path_order_keeping_only_manifests(
    tmp_path: Path,
) -> None:
    for name in ("b.yaml", "a/z.yml", "a.json", "a/notes.txt", "c/d/e.yml", "a/y.yml.bak"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f'{{"name": "{name}"}}\n')
    docs = read_inputs([str(tmp_path)], io.StringIO())
    names = [d.data["name"] for d in docs]
    assert names == sorted(names) == ["a.json", "a/z.yml", "b.yaml", "c/d/e.yml"]
    assert docs[0].file == str(tmp_path / "a.json")


def test_comma_separated_values_are_split_and_stdin_is_read_only_once(tmp_path: Path) -> None:
    (tmp_path / "f.yml").write_text("f: 1\n")
    stdin = io.StringIO("s: 1\n")
    docs = read_inputs([f"{tmp_path / 'f.yml'},-", "-"], stdin)
    assert [(d.file, d.data) for d in docs] == [
        (str(tmp_path / "f.yml"), {"f": 1}),
        ("stdin", {"s": 1}),
        ("stdin", {"s": 1}),
    ]


def test_a_list_document_becomes_its_items_each_with_its_own_text() -> None:
    stream = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "  - kind: A  # first\n    spec:\n      image: a\n"
        "  # about b\n  - {kind: B, image: b}\n"
        "  -   kind: C\n      image: c\n"
    )
    docs = read_text(stream)
    assert [d.data for d in docs] == [
        {"kind": "A", "spec": {"image": "a"}},
        {"kind": "B", "image": "b"},
        {"kind": "C", "image": "c"},
    ]
    assert docs[0].text == "kind: A  # first\nspec:\n  image: a\n# about b\n"
    assert docs[1].text == "{kind: B, image: b}\n"
    assert [d.where for d in docs] == [f"stdin, document 1, items[{i}]" for i in range(3)]
    assert all(yaml.safe_load(d.text) == d.data for d in docs)


def test_a_list_item_whose_text_cannot_be_cut_out_is_dumped_instead() -> None:
    stream = "kind: List\nitems:\n- &a {kind: A}\n- *a\n- kind: B\n  x: *a\n"
    docs = read_text(stream)
    assert [d.data for d in docs] == [
        {"kind": "A"},
        {"kind": "A"},
        {"kind": "B", "x": {"kind": "A"}},
    ]
    assert all(yaml.safe_load(d.text) == d.data for d in docs)


def test_items_that_are_not_all_mappings_leave_the_document_whole() -> None:
    docs = read_text("kind: Thing\nitems: [a, b]\n")
    assert [d.data for d in docs] == [{"kind": "Thing", "items": ["a", "b"]}]


_scalars = st.one_of(
    st.integers(), st.booleans(), st.none(), st.text(st.characters(codec="utf-8"), max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_docs = st.dictionaries(st.text(min_size=1, max_size=8), _values, min_size=1, max_size=4)


@given(st.lists(st.tuples(_docs, st.booleans(), st.booleans()), max_size=5))
def test_splitting_finds_the_same_documents_as_a_yaml_parser(
    docs: list[tuple[dict[str, object], bool, bool]],
) -> None:
    parts = []
    for data, flow, comment in docs:
        body = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
        parts.append(("# note\n" if comment else "") + body)
    stream = "".join(f"---\n{part}" for part in parts)
    split = [d.data for d in split_documents(stream, "s.yml")]
    assert split == list(yaml.safe_load_all(stream))
