"""What the build tests of both builders share: a line sink, a Source, three builds at once."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable
from pathlib import Path

from devloop.kbld.building import Engine, build_image
from devloop.kbld.model import DockerBuild, ImageRef, Source
from devloop.logs import LineWriter
from tests.fixtures.engine import Leftovers

MakeContext = Callable[..., Path]


class Lines:
    """(prefix, line) pairs; `seen` is set once a line ending in `wanted` arrives (the step's
    output, not the step line that quotes the command)."""

    def __init__(self, wanted: str = "") -> None:
        self.pairs: list[tuple[str, str]] = []
        self.wanted = wanted
        self.seen = threading.Event()

    def line(self, prefix: str, text: str) -> None:
        self.pairs.append((prefix, text))
        if self.wanted and text.endswith(self.wanted):
            self.seen.set()

    def texts(self) -> list[str]:
        return [text for _, text in self.pairs]


def source(path: Path, **docker: object) -> Source:
    return Source(ImageRef(image="app"), str(path), DockerBuild(**docker))  # type: ignore[arg-type]


def three_builds_at_once(
    engine: Engine, busybox: str, leftovers: Leftovers, make_context: MakeContext
) -> tuple[list[str], list[str]]:
    """Each build prints 200 long lines; returns every write to the shared stream and the images.

    Asserts what holds for any builder: one write per whole line, each under its own prefix.
    """
    writes: list[str] = []
    stream = io.StringIO()
    stream.write = writes.append  # type: ignore[method-assign,assignment]
    out = LineWriter(stream, color=False)
    images = [f"{leftovers.image}-{n}" for n in range(3)]
    errors: list[BaseException] = []

    def build(n: int) -> None:
        loop = f"for i in $(seq 1 200); do echo build-{n}-says-$i-{'x' * 50}; done"
        dockerfile = f"FROM {busybox}\nRUN {loop}  # {leftovers.token}\n"
        try:
            build_image(engine, source(make_context(f"c{n}", dockerfile)), images[n], out)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=build, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in writes)  # one write per line
    for text in writes:
        prefix, bar, rest = text.partition(" | ")
        assert bar and prefix in images
        assert re.findall(r"build-(\d)-says", rest) in ([], [str(images.index(prefix))])
    return writes, images
