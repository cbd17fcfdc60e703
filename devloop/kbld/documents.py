"""Read the `-f` inputs into documents that remember their exact source text.

`devloop resolve` edits only the image values in the user's YAML, so every document keeps its
own text next to the libyaml node tree (whose marks index into that text) and the plain data.
The stream is split on document markers by a regex rather than by a YAML library: YAML forbids
`---` and `...` at the start of a line inside any scalar, so the split is exact, and it is ~100x
faster than letting a parser find the boundaries. Each piece is then parsed once by libyaml.

Manifests are input from anywhere (`ytt ... | devloop resolve -f-`), so every document is
bounded before anything walks it: its size, its nesting (libyaml's composer recurses in C and
crashes the process on ~100,000 nested brackets, so deep text is measured on the parser's
events first), what its aliases expand to (nine levels of nine aliases are 387 million nodes
to a walker, kbld's "excessive aliasing"), aliases that contain themselves, and duplicate keys.
Each is one located error.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import yaml
import yaml.resolver

from devloop.errors import ManifestError, location

EXTENSIONS = (".yml", ".yaml", ".json")
# A document marker: `---` or `...` at column 0, followed by a blank, a line end or the end.
_MARKER = re.compile(r"^(---|\.\.\.)(?=[ \t\r\n]|\Z)", re.MULTILINE)
_LINE_REST = re.compile(r"[ \t]*(?:\r?\n)?")
_STR, _MAP, _SEQ = (f"tag:yaml.org,2002:{name}" for name in ("str", "map", "seq"))
_MERGE = "tag:yaml.org,2002:merge"
MAX_DOCUMENT_CHARS = 8 << 20  # one document's text; the API server stores at most 1.5 MiB
MAX_DEPTH = 200  # nested mappings and sequences; deep CRD schemas reach about 60
MAX_ALIAS_NODES = 100_000  # nodes that aliases may add to a document once expanded
# libyaml's composer recurses once per level: text that cannot nest deeper than this is safe.
_SAFE_TO_COMPOSE = 2_000


@dataclass
class Document:
    """One YAML document of one input; `node` marks index into `text`."""

    file: str  # the path as given, "stdin" for `-`
    index: int  # 1-based position among the documents of `file`
    text: str  # this document's own source text, without its `---` marker
    node: yaml.Node | None
    data: Any
    line: int = 0  # 0-based line of `file` where `text` starts, for error messages
    column: int = 0  # column of that line where `text` starts (after an inline `--- `)
    item: int | None = None  # position in the `items` of the List document it came from

    @property
    def where(self) -> str:
        where = location(self.file, self.index)
        return where if self.item is None else f"{where}, items[{self.item}]"


def read_inputs(paths: Sequence[str], stdin: TextIO) -> list[Document]:
    """The non-empty documents of every input, in kbld's order, `List`s expanded."""
    with _collector_paused():
        return list(iter_documents(paths, stdin))


def iter_documents(paths: Sequence[str], stdin: TextIO) -> Iterator[Document]:
    """`read_inputs` one document at a time, for a caller that keeps less than each one."""
    stdin_text: list[str] = []
    for name in _expand(paths):
        text = _read(name, stdin, stdin_text)
        for doc in split_documents(text, "stdin" if name == "-" else name):
            yield from _expand_list(_checked(doc))


def reparsed(doc: Document) -> Document:
    """`doc` with its node tree and data again, from its own text (after a caller dropped them)."""
    again = _parse(doc.file, doc.index, doc.text, doc.line, doc.column)
    return replace(doc, node=again.node, data=again.data)


def _expand(paths: Sequence[str]) -> Iterator[str]:
    for value in paths:
        for path in (part for part in value.split(",") if part):
            yield from _files_of(path)


def _files_of(path: str) -> Iterator[str]:
    if path == "-":
        yield path
    elif path.startswith(("http://", "https://")):
        raise ManifestError(
            path, "reading manifests from a URL is not supported", f"Use: curl -sL {path} | -f -"
        )
    elif os.path.isdir(path):
        yield from sorted(str(p) for p in Path(path).rglob("*") if _is_manifest(p))
    elif not os.path.exists(path):
        raise ManifestError(
            path, "no such file or directory", "Check the -f value (a file, a directory or -)"
        )
    else:
        yield path


def _is_manifest(path: Path) -> bool:
    return path.suffix in EXTENSIONS and path.is_file()


def _read(name: str, stdin: TextIO, stdin_text: list[str]) -> str:
    if name == "-":
        # stdin can be read only once; a second `-f -` sees what the first one read.
        if not stdin_text:
            stdin_text.append(stdin.read())
        return stdin_text[0]
    try:
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(
            name, f"cannot read: {error}", "Check the file's permissions"
        ) from error


def split_documents(text: str, file: str) -> Iterator[Document]:
    """Every document of `text` (empty ones too, when a `---` opened them), parsed one by one."""
    index = 0
    for piece, line, column, explicit in _pieces(text.removeprefix("\ufeff")):
        doc = _parse(file, index + 1, piece, line, column)
        # Comments before the first `---` or after a `...` are not a document.
        if explicit or doc.node is not None:
            index += 1
            yield doc


def parse_embedded(text: str, what: str) -> list[Any]:
    """The values of the non-empty documents of YAML held in a string (an annotation, a
    yaml-strategy value), under the same bounds as a manifest; errors name `what`."""
    return [doc.data for doc in split_documents(text, what) if doc.data is not None]


def _pieces(text: str) -> Iterator[tuple[str, int, int, bool]]:
    """(text, line, column, opened by `---`) of each stretch between document markers."""
    start, explicit, line = 0, False, 0
    for marker in _MARKER.finditer(text):
        yield text[start : marker.start()], line, start - _line_start(text, start), explicit
        line += text.count("\n", start, marker.start())
        start, explicit = _after_marker(text, marker)
        line += text.count("\n", marker.start(), start)
    yield text[start:], line, start - _line_start(text, start), explicit


def _after_marker(text: str, marker: re.Match[str]) -> tuple[int, bool]:
    """Where the next document's text starts, and whether a `---` opened it."""
    rest = _LINE_REST.match(text, marker.end())
    assert rest is not None  # the pattern matches the empty string
    return rest.end(), marker.group(1) == "---"


def _line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


class _Loader(yaml.CSafeLoader):
    """libyaml's safe loader with PyYAML's tag resolution minus its per-node bookkeeping.

    The C composer calls back into Python for every node's tag; the stock method also runs the
    (unused) path-resolver machinery, which costs a quarter of the whole parse.
    """

    _implicit = yaml.resolver.Resolver.yaml_implicit_resolvers

    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode:
            if implicit[0] and value is not None:
                for tag, pattern in self._implicit.get(value[:1], ()):
                    if pattern.match(value):
                        return str(tag)
            return _STR
        return _SEQ if kind is yaml.SequenceNode else _MAP

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


def _parse(file: str, index: int, text: str, line: int, column: int) -> Document:
    where = location(file, index)
    if len(text) > MAX_DOCUMENT_CHARS:
        raise ManifestError(
            where,
            f"the document is {len(text) / (1 << 20):.1f} MiB, more than the "
            f"{MAX_DOCUMENT_CHARS >> 20} MiB devloop reads",
            "Split it into smaller documents",
        )
    loader = _Loader(text)
    try:
        if len(text) > _SAFE_TO_COMPOSE and _nesting_bound(text) > _SAFE_TO_COMPOSE:
            _check_event_depth(text)
        node = loader.get_single_node()
        data = None if node is None else _construct(loader, node, "&" in text)
    except _TooMuch as error:
        raise error.located(where, line) from None
    except yaml.MarkedYAMLError as error:
        raise _syntax_error(where, error, line, column) from error
    except yaml.YAMLError as error:
        raise ManifestError(where, f"invalid YAML: {error}") from error
    finally:
        loader.dispose()
    return Document(file, index, text, node, data, line, column)


class _TooMuch(Exception):
    """A bound the document breaks, at a mark of its own text (made absolute by `located`)."""

    def __init__(self, problem: str, mark: Any, hint: str, first: Any = None) -> None:
        super().__init__(problem)
        self.problem, self.mark, self.hint, self.first = problem, mark, hint, first

    def located(self, where: str, line: int) -> ManifestError:
        at = f" at line {line + self.mark.line + 1}" if self.mark is not None else ""
        if self.first is not None:
            at += f" (first at line {line + self.first.line + 1})"
        return ManifestError(where, self.problem + at, self.hint)


def _too_deep(mark: Any) -> _TooMuch:
    return _TooMuch(
        f"nested more than {MAX_DEPTH} levels deep", mark, "Flatten the structure there"
    )


def _nesting_bound(text: str) -> int:
    """An upper bound of the document's nesting, cheap to compute: flow brackets, plus block
    levels, which need either more indentation or another `- `/`? ` on one line. (Every level
    takes a character, so a text shorter than the safe depth needs no bound at all.)"""
    longest = max(map(len, text.split("\n")))
    return text.count("[") + text.count("{") + 2 * longest + 1


def _check_event_depth(text: str) -> None:
    """Nesting measured on libyaml's parser events, which (unlike its composer) keep their
    stack on the heap, so even a million brackets cost only time."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep(event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _construct(loader: _Loader, node: yaml.Node, anchored: bool) -> Any:
    """The plain value of `node`; a direct walk for the common case, 3x faster than the
    constructor. Anchors (shared or recursive values) and merge keys take the constructor,
    after the node graph has been checked against the bounds the direct walk keeps itself."""
    if not anchored:
        try:
            return _plain(loader, node, 0)
        except _NeedsConstructor:
            pass
    _check_graph(node)
    return loader.construct_document(node)


class _NeedsConstructor(Exception):
    """A merge key or an explicit tag that the direct walk leaves to PyYAML."""


def _plain(loader: _Loader, node: yaml.Node, depth: int) -> Any:
    tag = node.tag
    if tag == _STR:
        return node.value
    if depth >= MAX_DEPTH and isinstance(node, yaml.CollectionNode):
        raise _too_deep(node.start_mark)
    if tag == _MAP:
        entries = _entries(node)
        mapping = {_plain(loader, k, depth + 1): _plain(loader, v, depth + 1) for k, v in entries}
        if len(mapping) != len(entries):
            raise _duplicate_key(entries)
        return mapping
    if tag == _SEQ:
        return [_plain(loader, item, depth + 1) for item in node.value]
    if tag not in loader.yaml_constructors or isinstance(node, yaml.CollectionNode):
        raise _NeedsConstructor(tag)
    return loader.construct_object(node)  # int, bool, null, float, timestamp, binary


def _entries(node: yaml.Node) -> list[tuple[yaml.Node, yaml.Node]]:
    entries: list[tuple[yaml.Node, yaml.Node]] = node.value
    if any(key.tag == _MERGE for key, _ in entries):
        raise _NeedsConstructor("merge")
    return entries


def _duplicate_key(entries: list[tuple[yaml.Node, yaml.Node]]) -> _TooMuch:
    seen: dict[Any, yaml.Node] = {}
    for key, _ in entries:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
            continue
        identity = (key.tag, key.value)
        if identity in seen:
            return _TooMuch(
                f"duplicate key {key.value!r}",
                key.start_mark,
                "Remove one of them: YAML keys must be unique",
                first=seen[identity].start_mark,
            )
        seen[identity] = key
    return _TooMuch("duplicate keys", entries[0][0].start_mark, "YAML keys must be unique")


def _check_graph(root: yaml.Node) -> None:
    """Depth, alias expansion, self-containing aliases and duplicate keys of a node graph in
    which aliases share nodes. Iterative, and each node is visited once however often it is
    aliased: `expanded` counts what a tree walk would see."""
    expanded: dict[int, int] = {}  # id(node) -> nodes under it once aliases are expanded
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            on_path.discard(key)
            expanded[key] = 1 + sum(expanded[id(c)] for c in children)
            levels = 1 if isinstance(node, yaml.CollectionNode) else 0
            depth[key] = levels + max((depth[id(c)] for c in children), default=0)
            continue
        if key in on_path:
            raise _TooMuch(
                "an alias refers to a value that contains it (a recursive alias)",
                node.start_mark,
                "Anchor a value outside itself, or write it out",
            )
        if key in expanded:
            continue
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in expanded)
    if depth[id(root)] > MAX_DEPTH:
        raise _too_deep(_first_too_deep(root, depth).start_mark)
    _check_expansion(root, expanded)


def _first_too_deep(root: yaml.Node, depth: dict[int, int]) -> yaml.Node:
    """The first collection past the bound on the deepest path (`depth` holds the heights)."""
    node = root
    for _ in range(MAX_DEPTH):
        node = max(_children(node), key=lambda child: depth[id(child)])
    return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        entries: list[tuple[yaml.Node, yaml.Node]] = node.value
        keys = [
            (k.tag, k.value)
            for k, _ in entries
            if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE
        ]
        if len(set(keys)) < len(keys):
            raise _duplicate_key(entries)
        return [n for pair in entries for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, expanded: dict[int, int]) -> None:
    added = expanded[id(root)] - len(expanded)
    if added > MAX_ALIAS_NODES:
        raise _TooMuch(
            f"excessive aliasing: aliases expand the document by {added:,} nodes, more than "
            f"the {MAX_ALIAS_NODES:,} devloop allows",
            None,
            "Write the shared values out, or share fewer levels",
        )


def _syntax_error(where: str, error: yaml.MarkedYAMLError, line: int, column: int) -> ManifestError:
    mark = error.problem_mark or error.context_mark
    problem = " ".join(part for part in (error.context, error.problem) if part) or "invalid YAML"
    if mark is not None:
        col = mark.column + (column if mark.line == 0 else 0)
        problem += f" at line {line + mark.line + 1} column {col + 1}"
    return ManifestError(where, problem, "Fix the YAML syntax there")


def _checked(doc: Document) -> Document | None:
    """kbld accepts only mappings as documents and drops empty ones."""
    if doc.data is None or doc.data == {}:
        return None
    if not isinstance(doc.data, dict):
        kind = "a list" if isinstance(doc.data, list) else f"a {type(doc.data).__name__}"
        raise ManifestError(
            doc.where,
            f"expected a mapping (a Kubernetes object), found {kind}",
            "Every document must be a mapping of keys to values",
        )
    return doc


def _expand_list(doc: Document | None) -> list[Document]:
    """kbld (apimachinery's IsList) turns any document with a top-level `items` list into its
    items. A List whose items are not all mappings is kept whole (kbld would fail on it)."""
    if doc is None:
        return []
    items = doc.data.get("items")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return [doc]
    nodes = _item_nodes(doc)
    return [_item_document(doc, i, item, nodes) for i, item in enumerate(items) if item]


def _item_nodes(doc: Document) -> list[yaml.Node]:
    assert isinstance(doc.node, yaml.MappingNode)
    for key, value in doc.node.value:
        if key.value == "items" and isinstance(value, yaml.SequenceNode):
            return list(value.value)
    return []


def _item_document(doc: Document, i: int, data: Any, nodes: list[yaml.Node]) -> Document:
    """The item's own text cut out of the List and dedented, or re-dumped when that fails."""
    node = nodes[i] if i < len(nodes) else None
    text = _cut_item(doc.text, node) if node is not None else None
    parsed = _try_parse(doc, text) if text is not None else None
    if parsed is None or parsed.data != data:
        text = yaml.dump(data, Dumper=yaml.CSafeDumper, sort_keys=False, allow_unicode=True)
        parsed = _parse(doc.file, doc.index, text, doc.line, 0)
    parsed.item = i
    if node is not None:
        parsed.line = doc.line + node.start_mark.line
    return parsed


def _cut_item(text: str, node: yaml.Node) -> str | None:
    if getattr(node, "flow_style", False):
        return text[node.start_mark.index : node.end_mark.index] + "\n"
    indent = node.start_mark.column
    lines = text[node.start_mark.index : node.end_mark.index].splitlines(keepends=True)
    out = [lines[0]]
    for line in lines[1:]:
        head, body = line[:indent], line[indent:]
        if head.strip() and not head.lstrip().startswith("#"):
            return None
        out.append(line.lstrip(" ") if head.strip() else body)
    return "".join(out)


def _try_parse(doc: Document, text: str) -> Document | None:
    try:
        return _parse(doc.file, doc.index, text, doc.line, 0)
    except ManifestError:
        return None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector off the parsed documents.

    Node trees are large (a 2,000-document stream is ~500,000 tracked objects) and hold no
    cycles, yet every collection while they live scans them all: measured 1.1 s of CPU for the
    read plus later allocations, 0.3 s with this. So the collector is paused while parsing and
    everything alive afterwards is frozen (`gc.freeze`: skipped by collections, still freed by
    reference counting when dropped). The next read unfreezes first, so cyclic garbage that got
    frozen is looked at again then rather than kept for the life of the daemon.
    """
    enabled = gc.isenabled()
    gc.unfreeze()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
