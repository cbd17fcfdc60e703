"""Dev-loop benchmark: what a developer waits for between a save and the change rolled out.

    python bench/loop.py [--edits 10] [--debounce-ms 100 --debounce-ms 20] [--kubeconfig K]
                         [--idle-files 100000] [--idle-seconds 10] [--target docker]

`--target docker` runs the app on the local engine instead (no cluster): each edit is timed from
the save to the first HTTP answer that carries the new greeting, with the build's share and the
wait of the container replace (build.finished to the new answer).

Starts a throwaway cluster (scripts/local-cluster) unless --kubeconfig is given, copies the
sample app (sample-app-go/, config/) to a temporary project and drives `devloop up --log-format
json` there as a developer would: per quiet period, N edits of main.go's greeting and N no-op
saves, timed from the JSON events. Then the idle cost of a daemon whose context holds a
100,000-file tree (mostly under an ignored node_modules/), and the scripted `devloop resolve |
kubectl apply` loop as a baseline. Everything it starts is stopped on exit, Ctrl-C included.

Save times are this process's time.time(); event times are the daemon's `timestamp` (same
clock, truncated to the millisecond, so save -> event reads up to 1 ms short).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devloop.loop.watching import inotify_watch_count  # noqa: E402
from tests.daemon_driver import Devloop, Event  # noqa: E402

GREETING = '"Hello %s!\\n"'  # the literal in sample-app-go/main.go that each edit rewrites
FAILURES = ("build.failed", "apply.failed", "rollout.failed", "config.failed")
BUILD_TIMEOUT_S = 600.0  # a cold Go build on 2 busy cores takes ~30 s; leave plenty
W = 40  # width of the tables' label column
STEP_IMAGE = re.compile(r" ---> (Using cache|[0-9a-f]{12})\s*$")
KBLD_NOTE = "kbld: not installed (the Go module proxy refuses carvel.dev/kbld), no comparison"


# -- the events of one save ---------------------------------------------------------------


def at(event: Event) -> float:
    """The event's timestamp as seconds since the epoch (comparable with time.time())."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def first(events: Sequence[Event], name: str, start: int = 0) -> tuple[int, Event]:
    for index in range(start, len(events)):
        if events[index].get("event") == name:
            return index, events[index]
    raise LookupError(f"no {name} event among {len(events) - start}")


def await_any(dl: Devloop, names: Sequence[str], after: int, timeout: float) -> Event:
    """The first event after `after` named in `names` or failing; polls, since event times
    come from the daemon, so how soon this notices does not change any measurement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and dl.proc.poll() is None:
        for event in dl.events[after:]:
            if event.get("event") in (*names, *FAILURES):
                if event["event"] in FAILURES:
                    raise RuntimeError(f"{event['event']}: {event.get('reason')}")
                return event
        time.sleep(0.02)
    raise RuntimeError(f"no {'/'.join(names)} within {timeout} s\n{dl.transcript()}")


def settle(dl: Devloop, quiet: float) -> None:
    """Wait until the daemon has said nothing for `quiet` seconds: a save's trailing batch
    (the rest of the burst after its leading edge) must not land in the next sample."""
    seen = -1
    while seen != dl.mark():
        seen = dl.mark()
        time.sleep(quiet)


def fresh_layers(lines: Iterable[str]) -> list[str]:
    """Image ids of the steps a classic-builder build ran rather than took from its cache.

    A multi-stage build leaves its builder stage (here ~90 MB of Go cache per edit) as
    dangling images; these ids let the cleanup remove exactly what this run made.
    """
    ids, cached = [], False
    for line in lines:
        found = STEP_IMAGE.search(line)
        if found and found[1] == "Using cache":
            cached = True
        elif found:
            ids += [] if cached else [found[1]]
            cached = False
    return ids


def save(path: Path, data: bytes) -> float:
    """Write the file in place as an editor does; the time the save completed."""
    path.write_bytes(data)
    return time.time()


# -- one session of `devloop up` ----------------------------------------------------------


@dataclass
class Session:
    """The samples of one `devloop up` run (one quiet period)."""

    debounce_ms: int
    startup_s: float = 0.0
    save_to_build_ms: list[float] = field(default_factory=list)
    build_s: list[float] = field(default_factory=list)
    build_to_apply_ms: list[float] = field(default_factory=list)
    save_to_rollout_s: list[float] = field(default_factory=list)
    noop_to_skip_ms: list[float] = field(default_factory=list)
    noop_builds: int = 0
    noop_applies: int = 0
    noop_apply_ms: list[float] = field(default_factory=list)  # apply.finished.seconds
    rss_mib: float = 0.0
    hwm_mib: float = 0.0
    refs: list[str] = field(default_factory=list)


def start_devloop(project: Path, kubeconfig: Path, *extra: str) -> tuple[Devloop, float]:
    """Start `devloop up` and wait for its first rollout; the seconds that took."""
    args = ["--app", "bench", "--namespace", "default", "--kubeconfig", str(kubeconfig), *extra]
    started = time.time()
    dl = Devloop(project, args)
    try:
        rollout = await_any(dl, ["rollout.finished"], 0, BUILD_TIMEOUT_S)
    except BaseException:
        stop_devloop(dl)
        raise
    return dl, at(rollout) - started


def stop_devloop(dl: Devloop) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired, ProcessLookupError):
        if dl.proc.poll() is None:
            dl.interrupt()
    dl.stop()


def edit_once(dl: Devloop, main_go: Path, text: str, session: Session) -> None:
    mark = dl.mark()
    saved = save(main_go, text.encode())
    await_any(dl, ["rollout.finished"], mark, BUILD_TIMEOUT_S)
    events = dl.events[mark:]
    _, started = first(events, "build.started")
    done, finished = first(events, "build.finished")
    _, applying = first(events, "apply.started", done)
    _, rolled = first(events, "rollout.finished", done)
    session.save_to_build_ms.append((at(started) - saved) * 1000)
    session.build_s.append(float(finished["seconds"]))
    session.build_to_apply_ms.append((at(applying) - at(finished)) * 1000)
    session.save_to_rollout_s.append(at(rolled) - saved)
    output = [str(e.get("line")) for e in events[:done] if e.get("event") == "output"]
    session.refs += [str(finished["ref"]), *fresh_layers(output)]


def noop_once(dl: Devloop, main_go: Path, session: Session, quiet: float) -> None:
    mark = dl.mark()
    saved = save(main_go, main_go.read_bytes())
    outcome = await_any(dl, ["build.skipped", "build.started"], mark, 60.0)
    settle(dl, quiet)
    session.noop_to_skip_ms.append((at(outcome) - saved) * 1000)
    session.noop_builds += len(dl.named("build.started", mark))
    session.noop_applies += len(dl.named("apply.started", mark))
    session.noop_apply_ms += [e["seconds"] * 1000 for e in dl.named("apply.finished", mark)]


def run_session(project: Path, kubeconfig: Path, debounce_ms: int, edits: int) -> Session:
    session = Session(debounce_ms)
    main_go = project / "sample-app-go" / "main.go"
    original = main_go.read_text()
    token = secrets.token_hex(3)  # every run's images are new: no build is a cache hit
    dl, session.startup_s = start_devloop(project, kubeconfig, "--debounce-ms", str(debounce_ms))
    quiet = debounce_ms / 1000 + 0.5
    try:
        settle(dl, quiet)
        for n in range(edits):
            greeting = f'"Hello from edit {n} of {token}, %s!\\n"'
            edit_once(dl, main_go, original.replace(GREETING, greeting), session)
            settle(dl, quiet)
        for _ in range(edits):
            noop_once(dl, main_go, session, quiet)
        session.rss_mib, session.hwm_mib = memory_mib(dl.proc.pid)
    finally:
        stop_devloop(dl)
        main_go.write_text(original)
    return session


# -- the Docker target: save to the new answer ------------------------------------------------


@dataclass
class Answers:
    """The samples of one `devloop up --target docker` run."""

    startup_s: float = 0.0
    save_to_answer_s: list[float] = field(default_factory=list)
    build_s: list[float] = field(default_factory=list)  # build.finished.seconds
    build_to_answer_s: list[float] = field(default_factory=list)  # the replace, as seen by curl
    deploy_s: list[float] = field(default_factory=list)  # rollout.finished.seconds
    builder: str = ""
    refs: list[str] = field(default_factory=list)


def answer(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def await_answer(port: int, wanted: str, timeout: float) -> float:
    """Poll every 5 ms until the app answers with `wanted`; the time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted in answer(port):
            return time.time()
        time.sleep(0.005)
    raise RuntimeError(f"no answer with {wanted!r} on 127.0.0.1:{port} within {timeout} s")


def docker_project(destination: Path) -> tuple[Path, int]:
    """The sample app on a free host port (the Service port is what the target publishes)."""
    project = copy_project(destination)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    service = project / "config" / "service.yml"
    service.write_text(service.read_text().replace("port: 8080", f"port: {port}"))
    return project, port


def run_docker_session(project: Path, port: int, edits: int) -> Answers:
    runs = Answers()
    main_go = project / "sample-app-go" / "main.go"
    original = main_go.read_text()
    token = secrets.token_hex(3)
    app = f"bench-{token}"
    started = time.time()
    dl = Devloop(project, ["--app", app, "--target", "docker"])
    try:
        rollout = await_any(dl, ["rollout.finished"], 0, BUILD_TIMEOUT_S)
        runs.startup_s = at(rollout) - started
        output = [str(e.get("line")) for e in dl.events if e.get("event") == "output"]
        runs.builder = next((line for line in output if line.startswith("starting build")), "")
        settle(dl, 0.6)
        for n in range(edits):
            greeting = f"from edit {n} of {token}"
            mark = dl.mark()
            saved = save(
                main_go, original.replace(GREETING, f'"Hello {greeting}, %s!\\n"').encode()
            )
            answered = await_answer(port, greeting, BUILD_TIMEOUT_S)
            await_any(dl, ["rollout.finished"], mark, BUILD_TIMEOUT_S)
            _, finished = first(dl.events[mark:], "build.finished")
            _, rolled = first(dl.events[mark:], "rollout.finished")
            runs.save_to_answer_s.append(answered - saved)
            runs.build_s.append(float(finished["seconds"]))
            runs.build_to_answer_s.append(answered - at(finished))
            runs.deploy_s.append(float(rolled["seconds"]))
            runs.refs.append(str(finished["ref"]))
            settle(dl, 0.6)
    finally:
        stop_devloop(dl)
        main_go.write_text(original)
    return runs


def answers_table(a: Answers, edits: int) -> list[str]:
    return [
        f"devloop up --target docker, {edits} edits of main.go: first answer "
        f"{sec(a.startup_s)} after start; {a.builder.partition(':')[0]}",
        f"  {'':{W}}{'median':>9} {'min':>9} {'max':>9}",
        f"  {'save -> new answer (HTTP)':{W}}{spread(a.save_to_answer_s, sec)}",
        f"  {'  of which the build':{W}}{spread(a.build_s, sec)}",
        f"  {'  build.finished -> new answer':{W}}{spread(a.build_to_answer_s, sec)}",
        f"  {'replace until checked (rollout.seconds)':{W}}{spread(a.deploy_s, sec)}",
        f"  {'target: save -> answer < 2 s median':{W}}"
        f"{'ok' if a.save_to_answer_s and statistics.median(a.save_to_answer_s) < 2 else 'MISSED'}",
    ]


def run_docker(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="devloop-bench-") as temp:
        project, port = docker_project(Path(temp) / "project")
        print(f"running devloop up --target docker on 127.0.0.1:{port} ...", file=sys.stderr)
        runs = run_docker_session(project, port, args.edits)
        remove_images(runs.refs)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"{os.cpu_count()} CPUs, load average {load}", "", *answers_table(runs, args.edits)]


# -- idle cost ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Idle:
    files: int
    seconds: float
    cpu_percent: float
    rss_mib: float
    hwm_mib: float
    watches: int
    startup_s: float


def cpu_ticks(pid: int) -> int:
    # utime and stime are fields 14 and 15; split after the ")" that ends the command name
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def memory_mib(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (the peak RSS) of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def make_tree(context: Path, files: int) -> None:
    """`files` files: 200 in 20 directories of the context, the rest under node_modules/."""
    for n in range(files):
        if n < 200:
            path = context / f"static/d{n // 10}/f{n % 10}.txt"
        else:
            d = (n - 200) // 20
            path = context / f"node_modules/m{d // 100}/p{d % 100}/f{n % 20}.js"
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    (context / ".dockerignore").write_text("node_modules/\n*_test.go\n")


def measure_idle(project: Path, kubeconfig: Path, files: int, seconds: float) -> Idle:
    make_tree(project / "sample-app-go", files)
    dl, startup = start_devloop(project, kubeconfig)
    try:
        settle(dl, 1.0)
        pid, hz = dl.proc.pid, os.sysconf("SC_CLK_TCK")
        ticks, wall = cpu_ticks(pid), time.monotonic()
        time.sleep(seconds)
        cpu = 100 * (cpu_ticks(pid) - ticks) / hz / (time.monotonic() - wall)
        rss, hwm = memory_mib(pid)
        return Idle(files, seconds, cpu, rss, hwm, inotify_watch_count(pid), startup)
    finally:
        stop_devloop(dl)


# -- baseline: the scripted loop ------------------------------------------------------------


@dataclass
class Scripted:
    """Seconds per edit of each step of the scripted loop."""

    resolve_s: list[float] = field(default_factory=list)
    apply_s: list[float] = field(default_factory=list)
    rollout_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)


def timed(cmd: Sequence[str], cwd: Path, stdin: str | None = None) -> tuple[float, str, str]:
    started = time.monotonic()
    done = subprocess.run(
        cmd, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{done.stderr[-2000:]}")
    return time.monotonic() - started, done.stdout, done.stderr


def scripted_loop(project: Path, kubeconfig: Path, edits: int) -> Scripted:
    """On each save: `devloop resolve -f config/ | kubectl apply -f -`, then rollout status.

    In its own namespace, so kubectl's client-side apply does not take over devloop's objects.
    """
    kubectl = ["kubectl", "--kubeconfig", str(kubeconfig), "-n", "bench-kubectl"]
    subprocess.run([*kubectl[:3], "create", "namespace", "bench-kubectl"], capture_output=True)
    main_go = project / "sample-app-go" / "main.go"
    original, token, result = main_go.read_text(), secrets.token_hex(3), Scripted()
    for n in range(-1, edits):  # -1: the first deploy, not counted
        greeting = f'"Hello from scripted edit {n} of {token}, %s!\\n"'
        main_go.write_text(original.replace(GREETING, greeting))
        resolve, manifests, log = timed(
            [sys.executable, "-m", "devloop.cli", "resolve", "-f", "config/"], project
        )
        apply, _, _ = timed([*kubectl, "apply", "-f", "-"], project, manifests)
        rollout, _, _ = timed([*kubectl, "rollout", "status", "deployment/sample-app"], project)
        result.refs += [*re.findall(r"kbld:[\w.-]+", manifests), *fresh_layers(log.splitlines())]
        if n >= 0:
            result.resolve_s.append(resolve)
            result.apply_s.append(apply)
            result.rollout_s.append(rollout)
            result.total_s.append(resolve + apply + rollout)
    main_go.write_text(original)
    return result


# -- the report -----------------------------------------------------------------------------


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    if not values:
        return "no samples"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{fmt(mid):>9} {fmt(low):>9} {fmt(high):>9}"


def share(parts: Sequence[float], wholes: Sequence[float]) -> list[float]:
    return [part / whole * 100 for part, whole in zip(parts, wholes, strict=False) if whole]


def pct(value: float) -> str:
    return f"{value:.0f} %"


def ms(value: float) -> str:
    return f"{value:.0f} ms"


def sec(value: float) -> str:
    return f"{value:.2f} s"


def session_table(s: Session) -> list[str]:
    build_share = share(s.build_s, s.save_to_rollout_s)
    return [
        f"devloop up --debounce-ms {s.debounce_ms}: first rollout {sec(s.startup_s)} after start",
        f"  {'':{W}}{'median':>9} {'min':>9} {'max':>9}",
        f"  {'save -> build.started':{W}}{spread(s.save_to_build_ms, ms)}",
        f"  {'build (build.finished.seconds)':{W}}{spread(s.build_s, sec)}",
        f"  {'build share of save -> rollout':{W}}{spread(build_share, pct)}",
        f"  {'build.finished -> apply.started':{W}}{spread(s.build_to_apply_ms, ms)}",
        f"  {'save -> rollout.finished':{W}}{spread(s.save_to_rollout_s, sec)}",
        f"  {'no-op save -> build.skipped':{W}}{spread(s.noop_to_skip_ms, ms)}",
        f"  {'no-op save: apply.finished.seconds':{W}}{spread(s.noop_apply_ms, ms)}",
        f"  no-op saves: {len(s.noop_to_skip_ms)}, builds started: {s.noop_builds}, "
        f"applies started: {s.noop_applies}",
        f"  daemon memory after the run: VmRSS {s.rss_mib:.0f} MiB, VmHWM {s.hwm_mib:.0f} MiB",
    ]


def idle_table(idle: Idle) -> list[str]:
    return [
        f"idle devloop up, context with {idle.files:,} files (node_modules/ ignored), "
        f"first rollout {sec(idle.startup_s)} after start",
        f"  CPU over {idle.seconds:.0f} s: {idle.cpu_percent:.2f} %   VmRSS {idle.rss_mib:.0f} MiB"
        f"   VmHWM {idle.hwm_mib:.0f} MiB   inotify watches: {idle.watches}",
    ]


def scripted_table(s: Scripted | None, devloop: Sequence[Session]) -> list[str]:
    if s is None:
        return ["scripted loop: kubectl not found, no baseline"]
    lines = [
        "scripted loop per edit: devloop resolve -f config/ | kubectl apply -f -; "
        "kubectl rollout status",
        f"  {'':{W}}{'median':>9} {'min':>9} {'max':>9}",
        f"  {'devloop resolve (builds)':{W}}{spread(s.resolve_s, sec)}",
        f"  {'kubectl apply':{W}}{spread(s.apply_s, sec)}",
        f"  {'kubectl rollout status':{W}}{spread(s.rollout_s, sec)}",
        f"  {'total (no watcher: a lower bound)':{W}}{spread(s.total_s, sec)}",
    ]
    for session in devloop:
        label = f"vs devloop up save -> rollout ({session.debounce_ms} ms)"
        lines.append(f"  {label:{W}}{spread(session.save_to_rollout_s, sec)}")
    return lines


def target_lines(sessions: Sequence[Session], idle: Idle | None) -> list[str]:
    checks: list[tuple[str, float | None, float, str]] = []
    for s in sessions:
        q = f"({s.debounce_ms} ms)"
        checks.append((f"save -> build start < 50 ms {q}", med(s.save_to_build_ms), 50, "ms"))
        checks.append((f"build end -> apply < 50 ms {q}", med(s.build_to_apply_ms), 50, "ms"))
        checks.append((f"no-op save starts no build {q}", s.noop_builds, 0.5, "builds"))
    if idle is not None:
        checks.append(("idle CPU < 1 %", idle.cpu_percent, 1.0, "%"))
        checks.append(("idle memory < 100 MB (VmRSS)", idle.rss_mib * 1.048576, 100, "MB"))
    return ["targets:"] + [
        f"  {'ok    ' if value is not None and value < limit else 'MISSED'} {label:44} "
        f"{'-' if value is None else f'{value:.1f}'} {unit}"
        for label, value, limit, unit in checks
    ]


def med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# -- setup and cleanup ------------------------------------------------------------------------


def start_cluster(stack: contextlib.ExitStack, directory: Path) -> Path:
    """A local cluster in `directory`; its watchdog also stops it if this process is killed."""
    script = str(ROOT / "scripts" / "local-cluster")
    stack.callback(subprocess.run, [script, "down", "--dir", str(directory)], capture_output=True)
    up = [script, "up", "--dir", str(directory), "--stop-with", str(os.getpid())]
    done = subprocess.run(up, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"local-cluster up failed:\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def copy_project(destination: Path) -> Path:
    for name in ("sample-app-go", "config"):
        shutil.copytree(ROOT / name, destination / name)
    return destination


def remove_images(refs: Sequence[str]) -> None:
    """Remove the images this run built (each edit's greeting carries a random token), the
    newest first so that a parent is free of children when its turn comes."""
    if refs:
        newest_first = list(dict.fromkeys(reversed(refs)))
        subprocess.run(["docker", "image", "rm", *newest_first], capture_output=True)


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C, so the cleanup runs


@contextlib.contextmanager
def workspace(kubeconfig: str | None) -> Iterator[tuple[Path, Path, list[str]]]:
    """(temporary directory, kubeconfig, image refs to remove at the end)."""
    refs: list[str] = []
    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="devloop-bench-")))
        stack.callback(remove_images, refs)
        kube = Path(kubeconfig) if kubeconfig else start_cluster(stack, temp / "cluster")
        yield temp, kube, refs


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=10, help="edits and no-op saves per run")
    parser.add_argument(
        "--debounce-ms", type=int, action="append", help="quiet periods to run (default 100, 20)"
    )
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting one")
    parser.add_argument("--idle-files", type=int, default=100_000, help="0 skips the idle run")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--target",
        choices=["kubernetes", "docker"],
        default="kubernetes",
        help="docker: time save -> new HTTP answer on the local engine instead",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[list[str], bool]:
    """The report's lines, and whether every no-op save stayed without a build."""
    sessions: list[Session] = []
    idle: Idle | None = None
    scripted: Scripted | None = None
    with workspace(args.kubeconfig) as (temp, kubeconfig, refs):
        project = copy_project(temp / "project")
        for debounce in args.debounce_ms or [100, 20]:
            print(f"running devloop up --debounce-ms {debounce} ...", file=sys.stderr)
            sessions.append(run_session(project, kubeconfig, debounce, args.edits))
            refs += sessions[-1].refs
        if args.idle_files:
            print(f"idle run with {args.idle_files:,} files ...", file=sys.stderr)
            idle_project = copy_project(temp / "idle")
            idle = measure_idle(idle_project, kubeconfig, args.idle_files, args.idle_seconds)
        if shutil.which("kubectl"):
            print("scripted loop ...", file=sys.stderr)
            scripted = scripted_loop(project, kubeconfig, args.edits)
            refs += scripted.refs
    return report(args, sessions, idle, scripted), all(s.noop_builds == 0 for s in sessions)


def report(
    args: argparse.Namespace, sessions: list[Session], idle: Idle | None, scripted: Scripted | None
) -> list[str]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"edits per run: {args.edits}; {os.cpu_count()} CPUs, load average {load}", ""]
    for session in sessions:
        lines += [*session_table(session), ""]
    if idle is not None:
        lines += [*idle_table(idle), ""]
    lines += [*scripted_table(scripted, sessions), f"  {KBLD_NOTE}", ""]
    return lines + target_lines(sessions, idle)


def main(argv: Sequence[str] | None = None) -> int:
    # SIGINT explicitly too: a shell starts background jobs with it ignored, and Python then
    # keeps it ignored, so `kill -INT` would not reach the cleanup
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_interrupt)
    args = parse_args(argv)
    try:
        lines, ok = (run_docker(args), True) if args.target == "docker" else run(args)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
