"""Watcher benchmark: latency, idle cost and inotify budget on a 100,000-file tree.

    python bench/watch.py [--files 100000] [--writes 20] [--idle 10]

Builds a context whose .dockerignore excludes node_modules/ (holding almost all the files),
then prints: save-to-batch latency (median and max of N writes) with the default 100 ms quiet
period and with no quiet period (the floor the watcher itself adds), idle CPU% and RSS while
watching, the inotify watch count, and the same numbers for watchfiles' recursive mode.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devloop.kbld.model import ImageRef, Source
from devloop.loop import inputs
from devloop.loop.watching import _ReadyProbe, inotify_watch_count, watcher
from devloop.loop.watchset import Changes, WatchSet, watch_roots, watch_set

FILES_PER_DIR = 20


def make_tree(root: Path, files: int) -> WatchSet:
    app = root / "app"
    for d in range(20):
        for f in range(10):
            write(app / f"src/pkg{d}/file{f}.go", "package pkg\n")
    for n in range(files - 200):
        d = n // FILES_PER_DIR
        write(app / f"node_modules/m{d // 100}/p{d % 100}/f{n % FILES_PER_DIR}.js", "")
    write(app / "Dockerfile", "FROM scratch\nCOPY . /\n")
    write(app / ".dockerignore", "node_modules\n")
    return watch_set({"app": Source(ImageRef(image="app"), "app")}, base=root)


def write(path: Path, text: str) -> None:
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True)
    path.write_text(text)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def latency(ws: WatchSet, writes: int, quiet: float) -> list[float]:
    send, receive = anyio.create_memory_object_stream[Changes](10)
    samples = []
    async with receive, anyio.create_task_group() as tg:
        await tg.start(partial(watcher, ws, send, quiet=quiet))
        for i in range(writes):
            target = ws.base / f"app/src/pkg{i % 20}/file0.go"
            started = time.perf_counter()
            target.write_text(f"package pkg // {i}\n")
            await receive.receive()
            samples.append((time.perf_counter() - started) * 1000)
        tg.cancel_scope.cancel()
    return samples


async def new_directory_latency(ws: WatchSet, count: int) -> list[float]:
    """mkdir + a file in it -> batch holding that file: includes restarting the watch."""
    send, receive = anyio.create_memory_object_stream[Changes](10)
    samples = []
    async with receive, anyio.create_task_group() as tg:
        await tg.start(partial(watcher, ws, send, quiet=0.0))
        for i in range(count):
            started = time.perf_counter()
            write(ws.base / f"app/src/new{i}/file.go", "package new\n")
            while f"src/new{i}/file.go" not in (await receive.receive()).images.get("app", ()):
                pass
            samples.append((time.perf_counter() - started) * 1000)
        tg.cancel_scope.cancel()
    return samples


async def idle(ws: WatchSet, seconds: float) -> tuple[float, float, int]:
    send, receive = anyio.create_memory_object_stream[Changes](10)
    async with receive, anyio.create_task_group() as tg:
        await tg.start(partial(watcher, ws, send))
        cpu, wall = cpu_seconds(), time.perf_counter()
        await anyio.sleep(seconds)
        percent = 100 * (cpu_seconds() - cpu) / (time.perf_counter() - wall)
        result = (percent, rss_mib(), inotify_watch_count())
        tg.cancel_scope.cancel()
    return result


async def recursive_idle(root: Path, seconds: float) -> tuple[float, float, int]:
    """watchfiles' recursive mode on the context root, dropping node_modules by filter."""
    from watchfiles import awatch

    def keep(change: object, path: str) -> bool:
        return "/node_modules/" not in path

    probe = _ReadyProbe()  # its first is_set() call means the watches are in place
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            async for _ in awatch(root, watch_filter=keep, step=20, stop_event=probe):
                pass

        tg.start_soon(run)
        await probe.ready.wait()
        setup = time.perf_counter() - started
        print(f"recursive: watches added in {setup * 1000:.0f} ms")
        cpu, wall = cpu_seconds(), time.perf_counter()
        await anyio.sleep(seconds)
        percent = 100 * (cpu_seconds() - cpu) / (time.perf_counter() - wall)
        result = (percent, rss_mib(), inotify_watch_count())
        probe.set()
    return result


def report_digest(ws: WatchSet) -> None:
    source = ws.sources["app"]
    for label in ("cold", "warm (no-op save)"):
        started = time.perf_counter()
        inputs.input_digest(source, ws.base)
        print(f"input digest {label}: {(time.perf_counter() - started) * 1000:.1f} ms")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ws = make_tree(Path(tmp), args.files)
        print(f"tree: {args.files} files in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        roots = watch_roots(ws)
        took = (time.perf_counter() - started) * 1000
        print(f"pruned: {len(roots)} directories to watch, listed in {took:.1f} ms")
        for quiet in (0.1, 0.0):
            samples = await latency(ws, args.writes, quiet)
            print(
                f"save-to-batch, quiet {quiet * 1000:.0f} ms: median "
                f"{statistics.median(samples):.1f} ms, max {max(samples):.1f} ms"
            )
        samples = await new_directory_latency(ws, args.writes)
        print(
            f"new directory to batch (restarts the watch), quiet 0 ms: median "
            f"{statistics.median(samples):.1f} ms, max {max(samples):.1f} ms"
        )
        cpu, rss, watches = await idle(ws, args.idle)
        print(f"pruned idle: CPU {cpu:.2f}%, RSS {rss:.0f} MiB, inotify watches {watches}")
        report_digest(ws)
        cpu, rss, watches = await recursive_idle(ws.base / "app", args.idle)
        print(f"recursive idle: CPU {cpu:.2f}%, RSS {rss:.0f} MiB, inotify watches {watches}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--idle", type=float, default=10.0)
    anyio.run(main, parser.parse_args())
