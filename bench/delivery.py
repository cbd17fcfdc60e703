"""Benchmark the delivery rungs' actions: what a push or a node load costs per edit.

An image FROM the local busybox with one big layer (`--mb` MB of random bytes, built once) and
one small layer that each "edit" changes. Measured through devloop's own `Deliverer` on the real
engine and a Debian docker-registry on 127.0.0.1:

- `push, empty registry`: the first push (every layer sent); `push, new repo`: the same layers
  to another repository of that registry (the engine mounts the blobs it pushed before);
- `push, held`: the same image again (one HEAD, nothing sent: a manifest-only change);
- `push, edit`: the image after an edit (only the small layer is sent);
- `load, edit`: the image after an edit streamed into a node container (the whole archive, as
  `kind load` does; the node's `ctr` is a script that reads stdin to the end).

    python bench/delivery.py [--mb 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devloop.kbld.building import Engine, build_image
from devloop.kbld.model import ImageRef, Resolved, Source
from devloop.kbld.registry import Registry, RegistryOptions
from devloop.targets.kubernetes.delivering import Deliverer
from devloop.targets.kubernetes.delivery import Choice
from tests.fixtures.engine import BUSYBOX
from tests.fixtures.registry import running_registry

ROOT = Path(__file__).resolve().parents[1]
APP = "FROM {busybox}\nCOPY big.bin /big.bin\nCOPY edit.txt /edit.txt\n"
NODE = 'FROM {busybox}\nCOPY ctr /bin/ctr\nCMD ["sleep", "3600"]\n'
FAKE_CTR = "#!/bin/sh\ncat > /dev/null\n"


class Quiet:
    def line(self, prefix: str, text: str) -> None:
        pass


def build(engine: Engine, context: Path, name: str) -> str:
    return build_image(engine, Source(ImageRef(image=name), str(context)), name, Quiet()).tag


def timed(deliverer: Deliverer, built: dict[str, Resolved]) -> float:
    start = time.perf_counter()
    deliverer.deliver(built)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    subprocess.run([str(ROOT / "scripts" / "base-images")], check=True, capture_output=True)
    engine, token = Engine(), secrets.token_hex(4)
    with tempfile.TemporaryDirectory() as tmp:
        app, node_dir = Path(tmp) / "app", Path(tmp) / "node"
        app.mkdir(), node_dir.mkdir()
        (app / "Dockerfile").write_text(APP.format(busybox=BUSYBOX))
        (app / "big.bin").write_bytes(os.urandom(args.mb << 20))
        (node_dir / "Dockerfile").write_text(NODE.format(busybox=BUSYBOX))
        (node_dir / "ctr").write_text(FAKE_CTR)
        (node_dir / "ctr").chmod(0o755)
        node = f"devloop-bench-{token}-node"
        engine.api.create_container(build(engine, node_dir, f"bench/{token}-node"), name=node)
        engine.api.start(node)
        times: dict[str, list[float]] = {}
        tags: list[str] = []
        try:
            with running_registry(Path(tmp) / "registry") as (host, _url, _storage):
                push = Choice("push", "", push_to=f"{host}/bench", pull_from=f"{host}/bench")
                load = Choice("load", "", product="k3d", nodes=(node,))
                registry = Registry(RegistryOptions(insecure=True))
                for run in range(args.runs):
                    (app / "edit.txt").write_text(f"{token} run {run} cold\n")
                    name = f"bench/{token}-app-{run}"  # a new repository: a cold push
                    tags.append(build(engine, app, name))
                    pusher = Deliverer(push, Quiet(), engine, registry)
                    one = {name: Resolved(tags[-1])}
                    cold = "push, empty registry" if run == 0 else "push, new repo"
                    times.setdefault(cold, []).append(timed(pusher, one))
                    times.setdefault("push, held", []).append(timed(pusher, one))
                    (app / "edit.txt").write_text(f"{token} run {run} edited\n")
                    tags.append(build(engine, app, name))
                    edited = {name: Resolved(tags[-1])}
                    times.setdefault("push, edit", []).append(timed(pusher, edited))
                    loader = Deliverer(load, Quiet(), engine, registry)
                    times.setdefault("load, edit", []).append(timed(loader, edited))
                registry.close()
        finally:
            engine.api.remove_container(node, force=True)
            for tag in tags:
                engine.api.remove_image(tag, force=True)
    print(f"image: busybox + {args.mb} MB layer + a one-line layer; {args.runs} runs each")
    for what, values in times.items():
        each = ", ".join(f"{v:.3f}" for v in values)
        print(f"  {what:20s} median {statistics.median(values):6.3f} s  (runs: {each})")


if __name__ == "__main__":
    main()
