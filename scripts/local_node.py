"""The local cluster's real node: a kubelet on containerd (CRI) with CNI bridge networking.

kwok marks pods Running and runs nothing, so devloop's Kubernetes half never ran an image it
built. This node really runs them: its own containerd (root, state and socket under DIR), a
bridge of its own with a /24 inside 10.244.0.0/16, a kubelet on 127.0.0.1 named `localhost`
(resolved through /etc/hosts, never DNS), the pause image made from a local static binary, and a
docker-registry on a free 127.0.0.1 port that containerd pulls from over plain HTTP, announced by
the KEP-1755 ConfigMap kube-public/local-registry-hosting.

Why the host ledger: no kubelet or containerd option keeps everything inside DIR. The kubelet
sets sysctls (kernel.panic_on_oops among them), adds KUBE-* iptables chains and nft tables, and
writes fixed paths (/var/lib/kubelet, /var/log/containers, /var/lib/cni); runc makes kubepods
cgroups and shims mount root filesystems. So `up` writes DIR/node/host.json with the before-state
*before* anything starts, and `restore` (run by `down` and by the watchdog) undoes exactly what
changed since: it never restores an iptables snapshot, because dockerd changes its own rules
meanwhile. Fixed host paths make two real nodes on one machine impossible, so a marker file
refuses a second one clearly.

Pitfalls from /work/shared/reference/real-node.md that shape the configs: the machine has no
CAP_SYS_RESOURCE (containerd must clamp oom_score_adj), and the apiserver reaches the kubelet by
its Hostname address (the node name), so the name must resolve locally.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE_NAME = "localhost"  # the apiserver dials the node name: /etc/hosts has it, no DNS needed
MARKER = Path("/run/devloop-local-node.json")  # one real node per machine: fixed host paths
PAUSE_REPO = "devloop/pause"
CNI_BIN = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
# What the kubelet's setupKernelTunables and the CNI bridge plugin (ip_forward) may write.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
)
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")
# Fixed paths the kubelet, containerd's CNI library and shims write despite every *-dir option.
HOST_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/netns",
    "/run/containerd",
    "/etc/cni",
    "/etc/kubernetes",
)
SHIM_SOCKETS = Path("/run/containerd/s")  # hard-coded in containerd 1.6, shared with others
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAMES = ("kubepods", "k8s.io")


class NodeError(Exception):
    """A failure the user can act on; local-cluster prints it as one line."""


@dataclass(frozen=True)
class NodeLayout:
    """Where the node's parts live, all under DIR/node."""

    root: Path  # the cluster DIR

    @property
    def base(self) -> Path:
        return self.root / "node"

    @property
    def ledger(self) -> Path:
        return self.base / "host.json"

    @property
    def ctr(self) -> Path:
        return self.base / "containerd"

    @property
    def sockets(self) -> Path:
        """containerd's sockets, outside DIR: a unix socket path must stay under 104 bytes."""
        return Path("/run") / bridge_name(self.root)

    @property
    def socket(self) -> Path:
        return self.sockets / "containerd.sock"

    @property
    def kubelet(self) -> Path:
        return self.base / "kubelet"

    @property
    def registry(self) -> Path:
        return self.base / "registry"


# ---------------------------------------------------------------------------------------------
# Prerequisites (built and installed by scripts/dev-env, never here)


def pause_binary(scripts: Path) -> Path:
    """The pause binary node-images built for this exact source (the cache key is its hash)."""
    source = b"".join((scripts / "pause" / name).read_bytes() for name in ("go.mod", "main.go"))
    cache = Path(
        os.environ.get("DEVLOOP_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "devloop"
    )
    return cache / "bin" / f"pause-{hashlib.sha256(source).hexdigest()[:12]}" / "pause"


def check_prerequisites(kubelet: Path, pause: Path) -> None:
    missing = [str(kubelet)] if not kubelet.is_file() else []
    missing += [] if pause.is_file() else [str(pause)]
    for command in ("containerd", "runc", "docker-registry", "iptables", "ip6tables", "nft", "ip"):
        if shutil.which(command) is None:
            missing.append(command)
    missing += [str(CNI_BIN / p) for p in CNI_PLUGINS if not (CNI_BIN / p).is_file()]
    if missing:
        raise NodeError(f"the real node needs {', '.join(missing)}; run scripts/dev-env first.")
    if os.geteuid() != 0:
        raise NodeError("the real node (kubelet, containerd) must run as root.")
    if not any(
        line.split()[:1] == ["127.0.0.1"] and NODE_NAME in line.split()[1:]
        for line in Path("/etc/hosts").read_text().splitlines()
    ):
        raise NodeError(
            f"/etc/hosts does not map {NODE_NAME} to 127.0.0.1; the API server reaches the "
            "node by that name and must not ask DNS."
        )
    if read_cgroups():
        raise NodeError(
            f"{', '.join(read_cgroups())} already exist: another kubelet runs on this machine."
        )


# ---------------------------------------------------------------------------------------------
# The host ledger: what the node may change, as it was before


def run(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    return {name: sysctl_path(name).read_text().strip() for name in SYSCTLS}


def read_chains() -> dict[str, list[str]]:
    """`family/table` -> the chain names that exist; listing never creates a table."""
    chains: dict[str, list[str]] = {}
    for family in IPTABLES:
        for table in TABLES:
            listed = run(family, "-w", "-t", table, "-S", check=False)
            names = [line.split()[1] for line in listed.splitlines() if line[:3] in ("-N ", "-P ")]
            chains[f"{family}/{table}"] = sorted(names)
    return chains


def read_nft_tables() -> list[str]:
    return sorted(line.removeprefix("table ") for line in run("nft", "list", "tables").splitlines())


def read_cgroups() -> list[str]:
    return sorted(str(p) for name in CGROUP_NAMES for p in CGROUP_ROOT.glob(f"*/{name}"))


def read_shim_sockets() -> list[str]:
    return sorted(p.name for p in SHIM_SOCKETS.iterdir()) if SHIM_SOCKETS.is_dir() else []


def snapshot() -> dict[str, Any]:
    """The host state the node can change; the test compares two of these."""
    return {
        "sysctls": read_sysctls(),
        "chains": read_chains(),
        "nft_tables": read_nft_tables(),
        "paths": {path: os.path.lexists(path) for path in HOST_PATHS},
        "cgroups": read_cgroups(),
        "shim_sockets": read_shim_sockets(),
    }


def refuse_another_node(root: Path) -> None:
    """One real node per machine; the marker names the DIR whose node owns the host."""
    if MARKER.exists():
        owner = json.loads(MARKER.read_text())["dir"]
        if Path(owner) != root and (Path(owner) / "node" / "host.json").exists():
            raise NodeError(
                f"a real node already runs on this machine from {owner} (fixed host paths allow "
                f"one); run `local-cluster down --dir {owner}` first."
            )


def claim_host(layout: NodeLayout) -> None:
    refuse_another_node(layout.root)
    layout.base.mkdir(parents=True, exist_ok=True)
    MARKER.write_text(json.dumps({"dir": str(layout.root)}) + "\n")


def record_host(layout: NodeLayout, bridge: str, subnet: str) -> None:
    """Written before anything changes the host, so even a crash half-way can be undone."""
    ledger = {"bridge": bridge, "subnet": subnet, "before": snapshot()}
    layout.ledger.write_text(json.dumps(ledger, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Undoing it all: `down` and the watchdog


def restore(root: Path, log: Callable[[str], None]) -> None:
    """Undo what the node changed on the host since its ledger was written; idempotent.

    Runs after the kubelet and containerd are stopped: then kills what they left (container
    processes, shims), unmounts, and removes cgroups, the bridge, new iptables chains, new nft
    tables and new host paths, and writes the sysctls back. Each step goes on if another failed;
    the failures are raised together at the end.
    """
    layout = NodeLayout(root)
    if not layout.ledger.is_file():
        release_marker(root)  # an up that failed before it changed anything
        return
    ledger = json.loads(layout.ledger.read_text())
    before = ledger["before"]
    problems: list[str] = []
    steps: list[tuple[str, Callable[[], None]]] = [
        ("killing container processes", kill_cgroup_processes),
        ("stopping shims", lambda: kill_shims(layout)),
        ("unmounting", lambda: unmount_under(root)),
        ("removing cgroups", lambda: remove_cgroups(before["cgroups"])),
        ("removing the bridge", lambda: remove_link(ledger["bridge"])),
        ("removing iptables chains", lambda: remove_chains(before["chains"])),
        ("removing nft tables", lambda: remove_nft_tables(before["nft_tables"])),
        ("removing shim sockets", lambda: remove_shim_sockets(before["shim_sockets"])),
        ("removing host paths", lambda: remove_paths(before["paths"])),
        ("removing containerd's sockets", lambda: remove_sockets(layout)),
        ("restoring sysctls", lambda: write_sysctls(before["sysctls"])),
    ]
    for what, step in steps:
        try:
            step()
        except (OSError, NodeError) as e:
            problems.append(f"{what}: {e}")
    if problems:
        raise NodeError("restoring the host failed: " + "; ".join(problems))
    layout.ledger.unlink()
    release_marker(root)
    log("host restored")


def release_marker(root: Path) -> None:
    if MARKER.exists() and json.loads(MARKER.read_text())["dir"] == str(root):
        MARKER.unlink()


def cgroup_dirs() -> Iterator[Path]:
    """Every cgroup under kubepods (and containerd's k8s.io), deepest first."""
    found = [d for name in CGROUP_NAMES for top in CGROUP_ROOT.glob(f"*/{name}") for d in walk(top)]
    return iter(sorted(found, key=lambda d: len(d.parts), reverse=True))


def walk(top: Path) -> list[Path]:
    return [Path(d) for d, _, _ in os.walk(top)]


def kill_cgroup_processes() -> None:
    """SIGKILL every process in a pod cgroup until none is left (the kubelet is already gone)."""
    deadline = time.monotonic() + 10
    while True:
        pids = {int(p) for d in cgroup_dirs() for p in read_procs(d)}
        if not pids:
            return
        if time.monotonic() > deadline:
            raise NodeError(f"processes {sorted(pids)} survived SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def read_procs(cgroup: Path) -> list[str]:
    try:
        return (cgroup / "cgroup.procs").read_text().split()
    except OSError:
        return []


def kill_shims(layout: NodeLayout) -> None:
    """Shims outlive containerd (they are re-parented to init); ours name our socket."""
    needle = f"-address\0{layout.socket}\0".encode()
    deadline = time.monotonic() + 10
    while shims := [pid for pid in all_pids() if needle in cmdline(pid)]:
        if time.monotonic() > deadline:
            raise NodeError(f"shims {shims} survived SIGKILL")
        for pid in shims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def mounts_under(root: Path) -> list[str]:
    """Mount points at or under `root`, from /proc/self/mountinfo (octal escapes decoded)."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == str(root) or point.startswith(prefix):
            points.append(point)
    return points


def unmount_under(root: Path) -> None:
    """Deepest first; a busy mount is detached lazily so the directory can still be removed."""
    for _ in range(10):
        points = sorted(set(mounts_under(root)), key=lambda p: p.count("/"), reverse=True)
        if not points:
            return
        for point in points:
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    raise NodeError(f"still mounted: {', '.join(mounts_under(root))}")


def remove_cgroups(before: list[str]) -> None:
    kept = set(before)
    for directory in cgroup_dirs():
        if not any(str(directory) == k or str(directory).startswith(k + "/") for k in kept):
            directory.rmdir()


def remove_link(name: str) -> None:
    if Path(f"/sys/class/net/{name}").exists():
        run("ip", "link", "delete", name)


def remove_chains(before: dict[str, list[str]]) -> None:
    """New KUBE-* chains: first the rules jumping to them, then their rules, then the chains."""
    now = read_chains()
    for key, names in now.items():
        family, table = key.split("/")
        new = [n for n in names if n.startswith("KUBE-") and n not in before.get(key, [])]
        if not new:
            continue
        for rule in run(family, "-w", "-t", table, "-S").splitlines():
            words = rule.split()
            if words[0] == "-A" and words[1] not in new and jumps_to(words, new):
                run(family, "-w", "-t", table, "-D", *words[1:])
        for name in new:
            run(family, "-w", "-t", table, "-F", name)
        for name in new:
            run(family, "-w", "-t", table, "-X", name)


def jumps_to(words: list[str], chains: list[str]) -> bool:
    return any(
        w in ("-j", "-g") and i + 1 < len(words) and words[i + 1] in chains
        for i, w in enumerate(words)
    )


def remove_nft_tables(before: list[str]) -> None:
    """A table the kubelet's iptables calls created is deleted once it holds no rule."""
    for table in sorted(set(read_nft_tables()) - set(before)):
        listed = run("nft", "list", "table", *table.split())
        rules = [line for line in listed.splitlines() if line.strip() and not is_skeleton(line)]
        if rules:
            raise NodeError(f"nft table {table} still holds rules; left in place")
        run("nft", "delete", "table", *table.split())


def is_skeleton(line: str) -> bool:
    """Table, chain, policy and brace lines: what an emptied iptables-nft table still lists."""
    text = line.strip()
    return text.startswith(("table ", "chain ", "type ", "}")) or text == ""


def remove_shim_sockets(before: list[str]) -> None:
    """Sockets our killed shims left; one a live process still listens on is someone else's."""
    if not SHIM_SOCKETS.is_dir():
        return
    live = listening_unix_paths()
    for entry in SHIM_SOCKETS.iterdir():
        if entry.name not in before and str(entry) not in live:
            entry.unlink()


def listening_unix_paths() -> set[str]:
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return {fields[7] for fields in (line.split() for line in lines) if len(fields) > 7}


def remove_paths(before: dict[str, bool]) -> None:
    """Host paths that did not exist before; /run/containerd only when nobody else uses it."""
    for path, existed in before.items():
        if existed or not os.path.lexists(path):
            continue
        if path == "/run/containerd" and SHIM_SOCKETS.is_dir() and any(SHIM_SOCKETS.iterdir()):
            for child in Path(path).iterdir():
                if child != SHIM_SOCKETS:
                    remove_tree(child)
            continue
        remove_tree(Path(path))


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        if mounts_under(path):
            raise NodeError(f"{path} still has mounts; left in place")
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_sockets(layout: NodeLayout) -> None:
    if layout.sockets.is_dir():
        shutil.rmtree(layout.sockets)


def write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        path = sysctl_path(name)
        if path.read_text().strip() != value:
            path.write_text(value + "\n")


# ---------------------------------------------------------------------------------------------
# Network: a bridge and a /24 of our own


def bridge_name(root: Path) -> str:
    """Unique to the cluster DIR and within the 15-byte interface name limit."""
    return "dlk" + hashlib.sha256(str(root).encode()).hexdigest()[:8]


def pick_subnet(root: Path) -> ipaddress.IPv4Network:
    """A /24 inside 10.244.0.0/16 that no route of this machine overlaps."""
    routes = [
        ipaddress.ip_network(r["dst"])
        for r in json.loads(run("ip", "-j", "route"))
        if r["dst"] != "default"
    ]
    start = int(hashlib.sha256(str(root).encode()).hexdigest(), 16) % 256
    for offset in range(256):
        subnet = ipaddress.IPv4Network(f"10.244.{(start + offset) % 256}.0/24")
        if not any(subnet.overlaps(route) for route in routes):
            return subnet
    raise NodeError("no free /24 inside 10.244.0.0/16; this machine routes all of them")


def make_bridge(name: str, subnet: ipaddress.IPv4Network) -> str:
    """Made here (not by CNI) so the kubelet's node IP is its gateway: nothing names eth0."""
    gateway = f"{next(subnet.hosts())}"
    if not Path(f"/sys/class/net/{name}").exists():
        run("ip", "link", "add", "name", name, "type", "bridge")
    run("ip", "addr", "replace", f"{gateway}/{subnet.prefixlen}", "dev", name)
    run("ip", "link", "set", name, "up")
    return gateway


# ---------------------------------------------------------------------------------------------
# Config files


def registry_config(layout: NodeLayout, port: int) -> Path:
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(layout.registry / "storage")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": os.urandom(16).hex()},
    }
    path = layout.registry / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    return path


def containerd_config(layout: NodeLayout, registry: str, bridge: str, subnet: str) -> Path:
    ctr = layout.ctr
    layout.sockets.mkdir(parents=True, exist_ok=True)
    hosts = ctr / "certs.d" / registry / "hosts.toml"
    hosts.parent.mkdir(parents=True, exist_ok=True)
    hosts.write_text(
        f'server = "http://{registry}"\n'
        f'[host."http://{registry}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    net = ctr / "cni" / "net.d"
    net.mkdir(parents=True, exist_ok=True)
    ipam = {
        "type": "host-local",
        "dataDir": str(ctr / "cni" / "ipam"),
        "ranges": [[{"subnet": subnet}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    bridge_plugin = {
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "ipMasq": False,  # no NAT rule: pods reach nothing outside; the host reaches them
        "hairpinMode": True,
        "ipam": ipam,
    }
    conflist = {"cniVersion": "1.0.0", "name": bridge, "plugins": [bridge_plugin]}
    (net / "10-devloop.conflist").write_text(json.dumps(conflist, indent=1) + "\n")
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    root, state = ctr / "root", ctr / "state"
    config = f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{layout.socket}"
[ttrpc]
  address = "{layout.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{registry}/{PAUSE_REPO}:1"
  netns_mounts_under_state_dir = true
  # This machine has no CAP_SYS_RESOURCE: without the clamp every sandbox fails (oom_score_adj).
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{state}/runc"
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{net}"
  [{cri}.registry]
    config_path = "{hosts.parent.parent}"
"""
    path = ctr / "config.toml"
    path.write_text(config)
    return path


def kubelet_config(layout: NodeLayout, pki: Path, port: int) -> Path:
    kubelet = layout.kubelet
    endpoint = f"unix://{layout.socket}"
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # 1.35 refuses cgroup v1 hosts unless told
        "cgroupDriver": "cgroupfs",  # containerd 1.6 has no RuntimeConfig RPC to say so
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "failSwapOn": False,
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        # Only the apiserver's client certificate (from the cluster CA) gets in.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "podLogsDir": str(kubelet / "pod-logs"),
        "resolvConf": "",  # pods get no resolver: nothing resolves names outside the machine
        "clusterDomain": "cluster.local",
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 30,
        "syncFrequency": "10s",
        "fileCheckFrequency": "60s",
    }
    path = kubelet / "kubelet.yaml"
    kubelet.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def kubelet_argv(binary: Path, layout: NodeLayout, config: Path, node_ip: str) -> list[str]:
    kubelet = layout.kubelet
    return [
        str(binary),
        f"--config={config}",
        f"--kubeconfig={kubelet / 'kubeconfig'}",
        f"--root-dir={kubelet / 'root'}",
        f"--cert-dir={kubelet / 'pki'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={node_ip}",
        "--v=1",
    ]


# ---------------------------------------------------------------------------------------------
# The pause image: one layer with the local binary, pushed with the registry's HTTP API


def push_pause(registry: str, pause: Path) -> str:
    """Pushes `pause` as REGISTRY/devloop/pause:1 and returns the manifest digest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tar.gettarinfo(str(pause), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        with pause.open("rb") as f:
            tar.addfile(info, f)
    layer_tar = raw.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
    }
    config_blob = json.dumps(image_config, sort_keys=True).encode()
    base = f"http://{registry}/v2/{PAUSE_REPO}"
    for blob in (layer, config_blob):
        upload_blob(base, blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": len(config_blob),
            "digest": digest(config_blob),
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": len(layer),
                "digest": digest(layer),
            }
        ],
    }
    body = json.dumps(manifest).encode()
    media = {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}
    http("PUT", f"{base}/manifests/1", body, media)
    return digest(body)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload_blob(base: str, blob: bytes) -> None:
    location = http("POST", f"{base}/blobs/uploads/", b"")["Location"]
    if location.startswith("/"):
        location = base.split("/v2/")[0] + location
    joiner = "&" if "?" in location else "?"
    octets = {"Content-Type": "application/octet-stream"}
    http("PUT", f"{location}{joiner}digest={digest(blob)}", blob, octets)


def http(method: str, url: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.headers
    except (urllib.error.URLError, OSError) as e:
        raise NodeError(f"pushing the pause image: {method} {url}: {e}") from e


def registry_answers(registry: str) -> bool:
    try:
        urllib.request.urlopen(f"http://{registry}/v2/", timeout=2).close()
    except (urllib.error.URLError, OSError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Objects in the API


def registry_hosting(registry: str) -> dict[str, Any]:
    """KEP-1755: how tools (devloop, Tilt, ctlptl) learn where to push for this cluster."""
    hosting = (
        f'host: "{registry}"\n'
        f'hostFromContainerRuntime: "{registry}"\n'
        'help: "https://github.com/kubernetes/enhancements/tree/master/keps/sig-cluster-lifecycle/'
        'generic/1755-communicating-a-local-registry"\n'
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "local-registry-hosting", "namespace": "kube-public"},
        "data": {"localRegistryHosting.v1": hosting},
    }


def node_ready(node: dict[str, Any], node_ip: str) -> bool:
    """Ready, untainted and addressed only by its name and the bridge gateway."""
    conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
    addresses = {a["address"] for a in node["status"].get("addresses", [])}
    untainted = not node["spec"].get("taints")
    return conditions.get("Ready") == "True" and untainted and addresses <= {node_ip, NODE_NAME}
