"""The `load` rung's action on the real engine: an image archive streamed into a node container.

There is no kind here, so the "node" is a busybox container on the real engine whose `ctr` and
`crictl` are two-line scripts (the narrow seam): `ctr ... import -` keeps what arrives on its
stdin, so the test can check it is the image's whole `docker save` archive, sent as kind sends it.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devloop.errors import RegistryError
from devloop.kbld.building import Engine, build_image
from devloop.kbld.model import ImageRef, Resolved, Source
from devloop.kbld.registry import Registry
from devloop.targets.kubernetes.delivering import Deliverer
from devloop.targets.kubernetes.delivery import Choice
from tests.fixtures.engine import BaseImages, Leftovers

pytestmark = pytest.mark.docker

NODE_DOCKERFILE = """FROM {busybox}
COPY ctr crictl /bin/
CMD ["sleep", "600"]
"""
FAKE_CTR = """#!/bin/sh
echo "$@" > /import.args
cat > /import.tar
echo "unpacking $(wc -c < /import.tar) bytes"
"""
FAKE_CRICTL = """#!/bin/sh
echo '{"config": {"containerd": {"snapshotter": "overlayfs"}}}'
"""


@dataclass(frozen=True)
class Node:
    container: str
    image: str  # the kbld: tag the node was built as: also the image the test loads into it


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def line(self, prefix: str, text: str) -> None:
        self.lines.append((prefix, text))


@pytest.fixture
def node(
    engine: Engine, tmp_path: Path, leftovers: Leftovers, base_images: BaseImages
) -> Iterator[Node]:
    """A running container that answers like a kind node's `ctr` and `crictl`."""
    context = tmp_path / "node"
    context.mkdir()
    (context / "Dockerfile").write_text(NODE_DOCKERFILE.format(busybox=base_images.busybox))
    for name, text in (("ctr", FAKE_CTR), ("crictl", FAKE_CRICTL)):
        (context / name).write_text(text)
        (context / name).chmod(0o755)
    image = f"{leftovers.image}-node"
    built = build_image(engine, Source(ImageRef(image=image), str(context)), image, Lines())
    name = f"devloop-test-{leftovers.token}-control-plane"
    engine.api.create_container(built.tag, name=name)
    engine.api.start(name)
    yield Node(name, built.tag)
    engine.api.remove_container(name, force=True)


def file_of(engine: Engine, container: str, path: str) -> bytes:
    stream, _ = engine.api.get_archive(container, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as outer:
        member = outer.next()
        assert member is not None
        extracted = outer.extractfile(member)
        assert extracted is not None
        return extracted.read()


def test_kind_load_streams_the_whole_image_archive_into_each_node_once(
    engine: Engine, node: Node
) -> None:
    out = Lines()
    choice = Choice("load", "", product="kind", nodes=(node.container,))
    deliverer = Deliverer(choice, out, engine, Registry())
    built = {"web": Resolved(node.image)}

    assert deliverer.deliver(built) == built  # the tag is used as built
    args = file_of(engine, node.container, "/import.args").decode().split()
    assert args == [
        "--namespace=k8s.io", "images", "import", "--all-platforms", "--digests",
        "--snapshotter=overlayfs", "-",
    ]  # fmt: skip
    archive = tarfile.open(fileobj=io.BytesIO(file_of(engine, node.container, "/import.tar")))
    manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == [built["web"].url]
    assert deliverer.local == {built["web"].url}

    deliverer.deliver(built)  # the same image again: not sent again
    assert len([text for _, text in out.lines if text.startswith("loading into node")]) == 1


def test_a_failed_load_names_the_node(engine: Engine, base_images: BaseImages) -> None:
    choice = Choice("load", "", product="k3d", nodes=("devloop-test-no-such-node",))
    deliverer = Deliverer(choice, Lines(), engine, Registry())
    with pytest.raises(RegistryError, match="into node devloop-test-no-such-node failed"):
        deliverer.deliver({"web": Resolved(f"kbld:{base_images.busybox}")})
