"""How fast a cancelled BuildKit build really stops.

    python bench/cancel.py [--runs 5] [--builder NAME]

Each run builds `RUN echo started-<token> && sleep 300` through `docker buildx build` (buildx's
current builder, or --builder), cancels it once the step has printed, and reports the time from
the cancel to (a) build_image returning BuildCancelled and (b) no process on the machine
mentioning the token (the RUN step, which runs inside dockerd's or buildkitd's runc). It also
checks that no temporary `kbld:rand-*` tag of the run is left.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devloop.errors import BuildCancelled  # noqa: E402
from devloop.kbld.building import Engine, build_image, clean_str  # noqa: E402
from devloop.kbld.model import DockerBuild, ImageRef, Source  # noqa: E402

BASE = "devloop.local/busybox:1"


class Seen:
    def __init__(self, wanted: str) -> None:
        self.wanted, self.event = wanted, threading.Event()

    def line(self, prefix: str, text: str) -> None:
        if self.wanted in text:
            self.event.set()


def mentioning(token: str) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += token.encode() in (entry / "cmdline").read_bytes()
            except OSError:
                continue
    return count


def one_run(engine: Engine, base: str, directory: Path) -> tuple[float, float, int]:
    token = secrets.token_hex(5)
    context = directory / token
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {base}\nRUN echo started-{token} && sleep 300\n")
    seen, cancel, raised = Seen(f"started-{token}"), threading.Event(), []

    def build() -> None:
        try:
            source = Source(ImageRef(image="bench"), str(context), DockerBuild())
            build_image(engine, source, f"devloop.bench/{token}", seen, cancel.is_set)
        except BaseException as e:
            raised.append(e)

    thread = threading.Thread(target=build)
    thread.start()
    if not seen.event.wait(120):
        raise RuntimeError("the step never started")
    cancelled = time.monotonic()
    cancel.set()
    thread.join(30)
    returned = time.monotonic() - cancelled
    while mentioning(token) and time.monotonic() - cancelled < 30:
        time.sleep(0.01)
    gone = time.monotonic() - cancelled
    assert [type(e) for e in raised] == [BuildCancelled], raised
    tags = [t for i in engine.api.images(name="kbld") for t in i.get("RepoTags") or ()]
    return returned, gone, len([t for t in tags if clean_str(token) in t])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--builder", help="a buildx builder name (its FROM: busybox)")
    args = parser.parse_args()
    engine = Engine(builder=args.builder)
    base = "busybox" if args.builder else BASE
    returned, gone, left = [], [], 0
    with tempfile.TemporaryDirectory(prefix="devloop-bench-cancel-") as temp:
        for _ in range(args.runs):
            r, g, tags = one_run(engine, base, Path(temp))
            returned.append(r)
            gone.append(g)
            left += tags
    engine.close()
    print(f"{args.runs} cancelled builds ({args.builder or 'buildx current builder'}):")
    for label, values in (("cancel -> BuildCancelled", returned), ("cancel -> step gone", gone)):
        print(
            f"  {label:28} median {statistics.median(values):.2f} s, "
            f"min {min(values):.2f} s, max {max(values):.2f} s"
        )
    print(f"  temporary tags left: {left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
