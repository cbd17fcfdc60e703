"""`devloop inspect`: images, the origins recorded in annotations, and the resources using them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from devloop.cli import main
from devloop.errors import ManifestError
from devloop.kbld.documents import read_inputs
from devloop.kbld.inspecting import describe_resource, image_rows, inspect
from devloop.kbld.pipeline import find

NGINX = "index.docker.io/library/nginx@sha256:" + "a" * 64
CURRENT = f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  annotations:
    kbld.k14s.io/images: |
      - origins:
        - resolved:
            tag: 1.14.2
            url: nginx:1.14.2
        url: {NGINX}
spec:
  template:
    spec:
      containers:
      - image: {NGINX}
      - image: {NGINX}
      - image: busybox
"""
LEGACY = """\
apiVersion: v1
kind: Pod
metadata:
  generateName: job-
  annotations:
    kbld.k14s.io/images: |
      - Metas:
        - Type: local
          Path: /src/app
        URL: kbld:app-sha256-1
spec:
  containers:
  - image: kbld:app-sha256-1
"""
CONFIG = """\
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
keys: [picture]
"""
CLUSTER_SCOPED = """\
apiVersion: example.com/v1
kind: Gallery
metadata: {name: art}
spec: {picture: reg/art:1}
"""


def rows_of(text: str) -> list[tuple[str, str, str]]:
    found = find(read_inputs(["-"], io.StringIO(text)))
    return [(r.image, r.resource, r.metadata) for r in image_rows(found.documents, found.config)]


def test_each_image_of_each_resource_is_one_row_sorted_by_image_then_resource() -> None:
    rows = rows_of("---\n".join([CURRENT, LEGACY, CONFIG, CLUSTER_SCOPED]))
    assert [(image, resource) for image, resource, _ in rows] == [
        ("busybox", "deployment/web (apps/v1) namespace: shop"),
        (NGINX, "deployment/web (apps/v1) namespace: shop"),
        ("kbld:app-sha256-1", "pod/job-* (v1) cluster"),
        ("reg/art:1", "gallery/art (example.com/v1) cluster"),
    ]


def test_origins_are_read_from_the_current_annotation_format() -> None:
    metadata = {image: meta for image, _, meta in rows_of(CURRENT)}
    assert yaml.safe_load(metadata[NGINX]) == [
        {"resolved": {"tag": "1.14.2", "url": "nginx:1.14.2"}}
    ]
    assert metadata["busybox"] == ""


def test_origins_are_read_from_the_legacy_annotation_format() -> None:
    [(_, _, metadata)] = rows_of(LEGACY)
    assert yaml.safe_load(metadata) == [{"Path": "/src/app", "Type": "local"}]


def test_an_image_gets_one_row_per_resource_however_often_it_is_used_there() -> None:
    other = CURRENT.replace("name: web", "name: api")
    rows = rows_of(f"{CURRENT}---\n{other}")
    assert [resource for image, resource, _ in rows if image == NGINX] == [
        "deployment/api (apps/v1) namespace: shop",
        "deployment/web (apps/v1) namespace: shop",
    ]


def test_the_text_table_has_one_labelled_block_per_row_and_a_count() -> None:
    found = find(read_inputs(["-"], io.StringIO(CURRENT)))
    text = inspect(found.documents, found.config)
    blocks = text.split("\n\n")
    assert blocks[0] == "Images"
    assert blocks[-1] == "2 images\n"
    assert blocks[2].splitlines() == [
        f"Image     {NGINX}",
        "Metadata  - resolved:",
        "              tag: 1.14.2",
        "              url: nginx:1.14.2",
        "Resource  deployment/web (apps/v1) namespace: shop",
    ]
    assert blocks[1].splitlines()[1] == "Metadata"


def test_the_json_output_is_a_table_of_rows() -> None:
    found = find(read_inputs(["-"], io.StringIO(f"{CURRENT}---\n{LEGACY}")))
    table = json.loads(inspect(found.documents, found.config, as_json=True))["Tables"][0]
    assert table["Content"] == "images"
    assert [row["image"] for row in table["Rows"]] == ["busybox", NGINX, "kbld:app-sha256-1"]
    assert set(table["Rows"][0]) == {"image", "metadata", "resource"}


def test_a_broken_images_annotation_names_the_document() -> None:
    broken = CURRENT.replace("      - origins:", "      - origins: [")
    with pytest.raises(ManifestError) as caught:
        rows_of(broken)
    assert str(caught.value).startswith(
        'stdin, document 1: metadata.annotations["kbld.k14s.io/images"]: expected a YAML list'
    )


@pytest.mark.parametrize(
    ("data", "described"),
    [
        (
            {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s"}},
            "service/s (v1) cluster",
        ),
        (
            {"kind": "Job", "metadata": {"generateName": "j-", "namespace": "n"}},
            "job/j-* () namespace: n",
        ),
        ({}, "/ () cluster"),
    ],
)
def test_resources_are_described_like_kbld(data: dict[str, object], described: str) -> None:
    assert describe_resource(data) == described


def test_the_inspect_command_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "live.yml"
    file.write_text(f"{CURRENT}---\n{CONFIG}")
    assert main(["inspect", "-f", str(file)]) == 0
    assert capsys.readouterr().out.endswith("\n2 images\n")
