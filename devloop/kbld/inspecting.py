"""`devloop inspect`: which images the manifests use, where they came from, and who uses them.

Like `kbld inspect` (typically `kapp inspect --raw | devloop inspect -f-`): the images are found
with the same search rules as `resolve`, and their origins are read back from each resource's
`kbld.k14s.io/images` annotation, in the current (`url`/`origins`) and the pre-0.31 legacy
(`URL`/`Metas`) format. Nothing is resolved and no registry is contacted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devloop.errors import ManifestError
from devloop.kbld.documents import Document, parse_embedded
from devloop.kbld.locks import dump_yaml
from devloop.kbld.model import IMAGES_ANNOTATION, Config
from devloop.kbld.searching import find_sites

_HEADERS = ("Image", "Metadata", "Resource")


@dataclass(frozen=True, order=True)
class Row:
    """One (image, resource) pair; rows sort by image, then resource, as kbld's table does."""

    image: str
    resource: str
    metadata: str  # the origins as YAML, "" when the annotation has none for this image


def inspect(docs: Sequence[Document], config: Config, as_json: bool = False) -> str:
    """The images table of `docs` (config documents already split off) as text or JSON."""
    rows = image_rows(docs, config)
    return _json(rows) if as_json else _text(rows)


def image_rows(docs: Sequence[Document], config: Config) -> list[Row]:
    rules = config.rules()
    rows: set[Row] = set()
    for doc in docs:
        origins = _recorded_origins(doc)
        resource = describe_resource(doc.data)
        for site in find_sites(doc, rules):
            rows.add(Row(site.value, resource, origins.get(site.value, "")))
    return sorted(rows)


def describe_resource(data: Any) -> str:
    """kbld's resource description: `kind/name (apiVersion) namespace: ns` or `... cluster`."""
    data = data if isinstance(data, dict) else {}
    meta = _mapping(data.get("metadata"))
    name = str(meta.get("name") or "")
    if not name and meta.get("generateName"):
        name = f"{meta['generateName']}*"
    kind = str(data.get("kind") or "").lower()
    namespace = meta.get("namespace")
    scope = f"namespace: {namespace}" if namespace else "cluster"
    return f"{kind}/{name} ({data.get('apiVersion') or ''}) {scope}"


def _recorded_origins(doc: Document) -> dict[str, str]:
    """url -> origins YAML from the document's images annotation (either format)."""
    annotations = _mapping(_mapping(_mapping(doc.data).get("metadata")).get("annotations"))
    text = annotations.get(IMAGES_ANNOTATION)
    if not isinstance(text, str):
        return {}
    try:
        documents = parse_embedded(text, IMAGES_ANNOTATION)
    except ManifestError as error:
        raise _bad_annotation(doc) from error
    entries = documents[0] if documents else None
    if not isinstance(entries, list):
        raise _bad_annotation(doc)
    pairs = (_entry(_mapping(e)) for e in entries)
    return {url: origins for url, origins in pairs if url}


def _entry(entry: dict[str, Any]) -> tuple[str, str]:
    # kbld decodes keys case-insensitively: `url` and the legacy `URL` are the same field.
    fields = {str(key).lower(): value for key, value in entry.items()}
    origins = fields.get("origins", fields.get("metas"))
    return str(fields.get("url") or ""), dump_yaml(origins).strip() if origins else ""


def _bad_annotation(doc: Document) -> ManifestError:
    return ManifestError(
        f'{doc.where}: metadata.annotations["{IMAGES_ANNOTATION}"]',
        "expected a YAML list of {url, origins} entries",
        "Remove the annotation or let devloop resolve write it again",
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(rows: Sequence[Row]) -> str:
    """kbld's transposed table: one block of labelled lines per row, then the count."""
    width = max(len(h) for h in _HEADERS) + 2
    blocks = ["Images"]
    for row in rows:
        lines: list[str] = []
        for header, value in zip(_HEADERS, (row.image, row.metadata, row.resource), strict=True):
            first, *rest = value.split("\n")
            lines.append(f"{header:<{width}}{first}".rstrip())
            lines.extend(f"{'':<{width}}{line}".rstrip() for line in rest)
        blocks.append("\n".join(lines))
    blocks.append(f"{len(rows)} images")
    return "\n\n".join(blocks) + "\n"


def _json(rows: Sequence[Row]) -> str:
    """The shape of kbld's `--json` (go-cli-ui tables)."""
    table = {
        "Content": "images",
        "Header": {h.lower(): h for h in _HEADERS},
        "Rows": [{"image": r.image, "metadata": r.metadata, "resource": r.resource} for r in rows],
        "Notes": [],
    }
    return json.dumps({"Tables": [table], "Blocks": None, "Lines": None}, indent=2) + "\n"
