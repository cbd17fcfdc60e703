"""The one-shot pipeline: dropping each manifest's tree early changes nothing a user sees."""

from __future__ import annotations

import io

import pytest

from devloop.errors import ConfigError, ManifestError
from devloop.kbld.documents import iter_documents, read_inputs
from devloop.kbld.model import Resolved
from devloop.kbld.pipeline import Found, find, rewrite

DIGEST = "sha256:" + "0123456789abcdef" * 4

DEPLOYMENT = """\
# a comment that stays
apiVersion: apps/v1
kind: Deployment
metadata:
  name:   web  # the name, spaced as written
spec:
  template:
    spec:
      containers:
      - name: main
        image: nginx:1
      - name: side
        picture: "busybox:2"
"""
FLOW_METADATA = """\
apiVersion: v1
kind: Pod
metadata: {name: flow, labels: {a: b}}
spec:
  containers: [{name: main, image: 'nginx:1'}]
"""
EXISTING_ANNOTATION = """\
apiVersion: v1
kind: Pod
metadata:
  name: noted
  annotations:
    kbld.k14s.io/images: |
      - url: old
    other: kept
spec:
  containers:
  - image: nginx:1
"""
A_LIST = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: first
  spec:
    containers:
    - image: busybox:2
- apiVersion: v1
  kind: Pod
  metadata: {name: second}
  spec: {containers: [{image: nginx:1}]}
"""
PICTURE_KEY = """\
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
keys: [picture]
"""
OVERRIDES = f"""\
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
overrides:
- image: nginx:1
  newImage: reg.local/nginx@{DIGEST}
  preresolved: true
"""
SETTINGS = """\
apiVersion: devloop.dev/v1alpha1
kind: Settings
app: shop
"""


def stream(*documents: str) -> str:
    return "".join(f"---\n{text}" for text in documents)


def found_in(text: str, keep_trees: bool) -> Found:
    docs = (
        read_inputs(["-"], io.StringIO(text))
        if keep_trees
        else iter_documents(["-"], io.StringIO(text))
    )
    return find(docs, keep_trees=keep_trees)


def resolved_for(found: Found) -> dict[str, Resolved]:
    return {
        url: Resolved(f"reg.local/{url.split(':')[0]}@{DIGEST}", ({"resolved": {"url": url}},))
        for url in found.urls
    }


def output(text: str, keep_trees: bool, annotate: bool = True) -> str:
    found = found_in(text, keep_trees)
    return rewrite(found, resolved_for(found), annotate)


CASES = {
    "config first": stream(PICTURE_KEY, OVERRIDES, DEPLOYMENT, FLOW_METADATA),
    "config last": stream(DEPLOYMENT, EXISTING_ANNOTATION, A_LIST, PICTURE_KEY),
    "config between": stream(DEPLOYMENT, PICTURE_KEY, A_LIST, SETTINGS, FLOW_METADATA),
    "no config": stream(EXISTING_ANNOTATION, A_LIST, DEPLOYMENT),
}


@pytest.mark.parametrize("text", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("annotate", [True, False])
def test_dropping_the_trees_renders_the_same_bytes_as_keeping_them(
    text: str, annotate: bool
) -> None:
    assert output(text, keep_trees=False, annotate=annotate) == output(
        text, keep_trees=True, annotate=annotate
    )


def test_a_lean_find_keeps_only_the_text_of_each_manifest() -> None:
    found = found_in(CASES["config between"], keep_trees=False)
    assert [(doc.node, doc.data) for doc in found.documents] == [(None, None)] * 4
    assert [doc.where for doc in found.settings] == ["stdin, document 4"]
    assert found.settings[0].data["app"] == "shop"


def test_search_rules_of_a_config_after_the_manifests_apply_to_them() -> None:
    found = found_in(stream(DEPLOYMENT, A_LIST, PICTURE_KEY), keep_trees=False)
    assert found.urls == ["busybox:2", "nginx:1"]
    assert [[site.value for site in sites] for sites in found.sites] == [
        ["nginx:1", "busybox:2"],
        ["busybox:2"],
        ["nginx:1"],
    ]


def test_a_syntax_error_after_a_broken_config_is_still_the_one_reported() -> None:
    broken = "apiVersion: kbld.k14s.io/v1alpha1\nkind: Confg\n"
    text = stream(broken, DEPLOYMENT, "a: [b\n")
    with pytest.raises(ManifestError, match="stdin, document 3"):
        found_in(text, keep_trees=False)
    with pytest.raises(ConfigError, match="'Confg' is not a kbld config kind"):
        found_in(stream(broken, DEPLOYMENT), keep_trees=False)
