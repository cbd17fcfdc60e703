"""Write the resolved references back into the user's own text.

Only the bytes of the image scalars change (and the `kbld.k14s.io/images` annotation is set):
key order, comments, quoting and indentation elsewhere stay as written, so `devloop resolve`
output diffs cleanly against its input. Edits are spliced at the libyaml marks that searching
recorded. The annotation is spliced too when `metadata` and `annotations` are block mappings;
for any other shape that single document goes through a ruamel.yaml round trip, which keeps
comments but is ~100x slower, so it is the exception.

When none of a document's images has an origin (digest references, say), kbld writes no
annotation entry for them and so neither do we: no annotation is added and none is removed.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
import yaml.resolver

from devloop.errors import ManifestError, trimmed
from devloop.kbld.documents import Document
from devloop.kbld.model import IMAGES_ANNOTATION, Resolved
from devloop.kbld.searching import STR_TAG, ImageSite, Inner, decode

Edit = tuple[int, int, str]  # replace text[start:end] with the string
# Characters an image reference needs; with a safe first character and no trailing ':' such a
# scalar is plain in both block and flow context.
_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./:@+-]*(?<!:)")
_RESOLVER = yaml.resolver.Resolver()
_DEEPER_COMMENTS = re.compile(r"(?:[ \t]*\r?\n)*( *)#[^\n]*(?:\n|\Z)")
_TRAILING_BLANKS = re.compile(r"\n(?:[ \t]*\n)*\Z")


def render(
    doc: Document,
    sites: Sequence[ImageSite],
    resolved: Mapping[str, Resolved],
    annotate: bool,
    point: Splice | None = None,
) -> str:
    """`doc`'s text with every site's reference replaced by its resolution.

    `point` is `annotation_point(doc)` taken before the caller dropped `doc.node`; without it,
    the place for the annotation is found in `doc.node`.
    """
    edits = [e for e in (_scalar_edit(doc.text, g, resolved) for g in _by_scalar(sites)) if e]
    entries = [resolved[site.value] for site in sites]
    value = origins_yaml(entries) if annotate else ""
    if not value:
        return _apply(doc.text, edits)
    note = point or _annotation_edit(doc.text, doc.node)
    if note is not None and not any(_overlaps(note, edit) for edit in edits):
        return _apply(doc.text, [*edits, note(value)])
    return _annotate_round_trip(doc, _apply(doc.text, edits), value)


def annotation_point(doc: Document) -> Splice | None:
    """Where `render` splices the annotation into `doc.text` (None: only a round trip can).

    A few numbers instead of the node tree, so that a caller can drop the tree before rendering.
    """
    return _annotation_edit(doc.text, doc.node)


def render_stream(texts: Iterable[str]) -> str:
    """Documents joined as kbld prints them: each after `---`, each ending with a newline."""
    return "".join(stream_pieces(texts))


def stream_pieces(texts: Iterable[str]) -> Iterator[str]:
    """`render_stream` piece by piece, for a writer that need not hold the whole stream."""
    return (f"---\n{text}" if text.endswith("\n") else f"---\n{text}\n" for text in texts)


def origins_yaml(entries: Iterable[Resolved]) -> str:
    """The annotation value: `{url, origins}` per image with origins, sorted, deduplicated."""
    return _origins_yaml(tuple(sorted({_identity(e) for e in entries if e.origins})))


def _identity(entry: Resolved) -> tuple[str, str]:
    return entry.url, json.dumps(list(entry.origins), sort_keys=True, default=str)


@functools.lru_cache(maxsize=1024)
def _origins_yaml(identities: tuple[tuple[str, str], ...]) -> str:
    # Cached: thousands of documents share a few hundred images, and dumping is the slow part.
    listed = [{"origins": json.loads(origins), "url": url} for url, origins in identities]
    return _dump(listed) if listed else ""


def _dump(value: Any) -> str:
    # sigs.k8s.io/yaml marshals through JSON, so keys come out sorted; no line folding.
    return yaml.dump(
        value,
        Dumper=yaml.CSafeDumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 30,
    )


# ---- image scalars ----


def _by_scalar(sites: Sequence[ImageSite]) -> list[list[ImageSite]]:
    """Sites grouped by the scalar that holds them (an alias shows one scalar twice)."""
    groups: dict[tuple[int, int], list[ImageSite]] = {}
    for site in sites:
        group = groups.setdefault((site.start, site.end), [])
        if site not in group:
            group.append(site)
    return list(groups.values())


def _scalar_edit(
    text: str, group: list[ImageSite], resolved: Mapping[str, Resolved]
) -> Edit | None:
    first = group[0]
    if first.inner:
        entries = [(site.inner, resolved[site.value].url) for site in group]
        new = _recode(first.raw, entries)
    else:
        new = resolved[first.value].url
        if new == first.value:
            return None
    return first.start, first.end, _scalar_text(new, first.style, text, first.start, first.end)


def _recode(raw: str, entries: list[tuple[tuple[Inner, ...], str]]) -> str:
    """`raw` decoded as kbld does, the references set, and encoded again as kbld does."""
    encoding = entries[0][0][0].encoding
    decoded = decode(raw, allow_yaml=encoding == "yaml")
    assert decoded is not None and decoded[0] == encoding  # it decoded so when searched
    box = [root for _, root in decoded[1]]
    # A JSON text has one root and its paths have no prefix; give them the box's index 0.
    prefix: tuple[str | int, ...] = (0,) if encoding == "json" else ()
    for chain, new in entries:
        path = (*prefix, *chain[0].path)
        _set(box, path, _recode(_get(box, path), [(chain[1:], new)]) if chain[1:] else new)
    if encoding == "json":
        return _go_json(box[0])
    return "".join(f"---\n{_dump(root)}" for root in box)


def _get(tree: Any, path: Sequence[str | int]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: Any, path: Sequence[str | int], value: str) -> None:
    _get(tree, path[:-1])[path[-1]] = value


def _go_json(value: Any) -> str:
    """Compact JSON with sorted keys and Go's HTML-safe escapes, as kbld's json.Marshal."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _scalar_text(new: str, style: str, text: str, start: int, end: int) -> str:
    """`new` written in the scalar's style when that style can hold it, else double-quoted."""
    if style in "|>" and style:
        return _block_text(new, text[start:end], _indent_of(text, start) + 2)
    if style == "" and _plain_ok(new):
        return new
    if style == "'" and new.isprintable():
        return "'" + new.replace("'", "''") + "'"
    return _double_quoted(new)


def _plain_ok(value: str) -> bool:
    if not _PLAIN.fullmatch(value):
        return False
    tag = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    return bool(tag == STR_TAG)


def _double_quoted(value: str) -> str:
    return '"' + "".join(map(_escaped, value)) + '"'


def _escaped(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    code = ord(char)  # YAML's escapes take whole code points, unlike JSON's surrogate pairs
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def _block_text(new: str, old: str, default_indent: int) -> str:
    """A literal block scalar (the old span ends at a line start, so the new one must too)."""
    lines = new.split("\n")
    if not new or not all(line.isprintable() for line in lines) or new[0] in " \t":
        return _double_quoted(new) + "\n"
    indent = _content_indent(old) or default_indent
    body, chomp = new.rstrip("\n"), new[len(new.rstrip("\n")) :]
    indicator = "|" + {"": "-", "\n": ""}.get(chomp, "+")
    content = "".join(f"{' ' * indent}{line}\n" if line else "\n" for line in body.split("\n"))
    blanks = _TRAILING_BLANKS.search(old) if "+" not in old.split("\n")[0] else None
    return f"{indicator}\n{content}{chomp[1:]}" + (blanks.group()[1:] if blanks else "")


def _content_indent(old: str) -> int:
    for line in old.split("\n")[1:]:
        if line.strip():
            return len(line) - len(line.lstrip(" "))
    return 0


def _indent_of(text: str, offset: int) -> int:
    line = text[text.rfind("\n", 0, offset) + 1 : offset]
    return len(line) - len(line.lstrip(" "))


def _apply(text: str, edits: list[Edit]) -> str:
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _overlaps(note: Splice, edit: Edit) -> bool:
    return note.start < edit[1] and edit[0] < note.end


# ---- the annotation ----


@dataclass(frozen=True)
class Splice:
    """Where the annotation goes: text[start:end] becomes an entry at `indent`, nested in the
    `wrap` keys (`metadata:`, `annotations:`) that are missing."""

    start: int
    end: int
    indent: int
    wrap: tuple[str, ...] = ()
    lead: str = ""  # a newline when the text before `start` does not end with one
    first_padded: bool = True  # False when `start` is a key already indented on its line

    def __call__(self, value: str) -> Edit:
        lines = [*self.wrap, f"{IMAGES_ANNOTATION}: |"]
        pads = [" " * (self.indent + 2 * depth) for depth in range(len(lines) + 1)]
        if not self.first_padded:
            pads[0] = ""
        head = "".join(pad + line + "\n" for pad, line in zip(pads, lines, strict=False))
        body = "".join(pads[-1] + line + "\n" for line in value.rstrip("\n").split("\n"))
        return self.start, self.end, self.lead + head + body


def _annotation_edit(text: str, root: yaml.Node | None) -> Splice | None:
    """Where to splice the annotation, or None when the shape needs the round trip."""
    if not _is_block(root):
        return None
    meta = _value_of(root, "metadata")
    if meta is None:
        return _append(text, root, ("metadata:", "annotations:"))
    if not _is_block(meta):
        return None
    annotations = _value_of(meta, "annotations")
    if annotations is None:
        return _append(text, meta, ("annotations:",))
    if not _is_block(annotations):
        return None
    existing = _entry(annotations, IMAGES_ANNOTATION)
    if existing is None:
        return _append(text, annotations, ())
    key, value = existing
    end = (
        value.end_mark.index
        if _ends_at_line_start(value)
        else _line_end(text, value.end_mark.index)
    )
    return Splice(key.start_mark.index, end, key.start_mark.column, first_padded=False)


def _is_block(node: yaml.Node | None) -> bool:
    return isinstance(node, yaml.MappingNode) and not node.flow_style and bool(node.value)


def _entry(node: yaml.Node | None, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next(((k, v) for k, v in node.value if k.value == key and k.tag == STR_TAG), None)


def _value_of(node: yaml.Node | None, key: str) -> yaml.Node | None:
    found = _entry(node, key)
    return None if found is None else found[1]


def _append(text: str, mapping: yaml.Node | None, wrap: Sequence[str]) -> Splice:
    assert isinstance(mapping, yaml.MappingNode)
    indent = mapping.value[0][0].start_mark.column
    at = _past_deeper_comments(text, _after_last_leaf(text, mapping), indent)
    lead = "" if at == 0 or text[at - 1] == "\n" else "\n"
    return Splice(at, at, indent, tuple(wrap), lead)


def _after_last_leaf(text: str, node: yaml.Node) -> int:
    """The start of the line after the mapping's last value.

    A block collection's end mark sits at the next token, after any comments that belong to the
    next key; the last scalar's end mark does not, so descend to it.
    """
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style:
        if not node.value:
            break
        last = node.value[-1]
        node = last[1] if isinstance(last, tuple) else last
    end = node.end_mark.index
    return end if _ends_at_line_start(node) else _line_end(text, end)


def _past_deeper_comments(text: str, at: int, indent: int) -> int:
    """Skip the comment lines indented deeper than `indent` that follow `at`: a block scalar
    inserted before them would take them in as content."""
    while (line := _DEEPER_COMMENTS.match(text, at)) and len(line.group(1)) > indent:
        at = line.end()
    return at


def _ends_at_line_start(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.style in ("|", ">")


def _line_end(text: str, offset: int) -> int:
    newline = text.find("\n", offset)
    return len(text) if newline < 0 else newline + 1


def _annotate_round_trip(doc: Document, text: str, value: str) -> str:
    """Set the annotation through ruamel.yaml, which keeps comments, for odd shapes."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.scalarstring import LiteralScalarString

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 1 << 30
    try:
        data = rt.load(text)
    except YAMLError as error:  # libyaml read it, the round-trip parser is stricter
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        mark = error.problem_mark if isinstance(error, MarkedYAMLError) else None
        at = f" (its line {mark.line + 1})" if mark is not None else ""
        raise ManifestError(
            doc.where,
            f"cannot add the {IMAGES_ANNOTATION} annotation: {trimmed(str(problem))}{at}",
            "Write that part in plain block YAML (no tabs), or pass --images-annotation=false",
        ) from error
    meta = data.get("metadata")
    if meta is None:
        meta = data["metadata"] = CommentedMap()
    if not isinstance(meta, dict):
        raise ManifestError(doc.where, "metadata: expected a mapping", "Fix the metadata value")
    if meta.get("annotations") is None:
        meta["annotations"] = CommentedMap()
    if not isinstance(meta["annotations"], dict):
        raise ManifestError(
            doc.where, "metadata.annotations: expected a mapping", "Fix the annotations value"
        )
    meta["annotations"][IMAGES_ANNOTATION] = LiteralScalarString(value)
    out = io.StringIO()
    rt.dump(data, out)
    return out.getvalue()
