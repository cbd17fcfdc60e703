"""A real node leaves the machine as it found it, after `down` and after its owner is killed.

The kubelet writes sysctls (kernel.panic_on_oops among them), iptables chains and fixed host
paths; runc makes cgroups and mounts, CNI a bridge and network namespaces. The state is read
here independently of local_node.py's own ledger, so a cleanup bug cannot hide itself. Each test
starts its own node, so they run before the session's `real_cluster` (see the cluster plugin).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.fixtures.cluster import SCRIPT, local_cluster, wait_until

SYSCTLS = ("kernel", "vm", "net/ipv4/ip_forward", "net/ipv4/conf/all", "net/ipv6/conf/all")
VOLATILE = re.compile(r"^kernel/(random|ns_last_pid|pty/nr|keys/(?!root_max))|/stable_secret$")
HOST_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/netns",
    "/run/containerd",
    "/etc/cni",
    "/etc/kubernetes",
    "/run/devloop-local-node.json",
)


def sysctls() -> dict[str, str]:
    values = {}
    for top in SYSCTLS:
        base = Path("/proc/sys") / top
        for path in [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()):
            name = str(path.relative_to("/proc/sys"))
            if VOLATILE.search(name):
                continue
            try:
                values[name] = path.read_text().strip()
            except OSError:  # write-only or not readable here
                continue
    return values


def kube_chains() -> set[str]:
    found = set()
    for save in ("iptables-save", "ip6tables-save"):
        dump = subprocess.run([save], capture_output=True, text=True, check=True).stdout
        table = ""
        for line in dump.splitlines():
            if line.startswith("*"):
                table = line[1:]
            if line.startswith(":KUBE-") or " -j KUBE-" in line:
                found.add(f"{save}/{table}: {line.split(' [')[0]}")
    return found


def host_state(directory: Path) -> dict[str, Any]:
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {
        "sysctls": sysctls(),
        "kube chains": kube_chains(),
        "nft tables": subprocess.run(
            ["nft", "list", "tables"], capture_output=True, text=True
        ).stdout,
        "mounts under DIR": [m for m in mounts if str(directory) in m],
        # Network namespaces are nsfs mounts; dockerd's own (other tests') are not ours.
        "nsfs mounts": [m for m in mounts if " nsfs " in m and "/run/docker/" not in m],
        "kubepods cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods")),
        "bridges": re.findall(r"^\d+: (dlk[0-9a-f]+)", links, re.M),
        "socket dirs": sorted(str(p) for p in Path("/run").glob("dlk*")),
        "veths on our bridges": re.findall(r"^\d+: (veth\S+) .* master dlk", links, re.M),
        "host paths": {path: os.path.lexists(path) for path in HOST_PATHS},
    }


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    diff = {k: (before[k], after[k]) for k in before if before[k] != after[k] and k != "sysctls"}
    sysctl_diff = {
        name: (value, after["sysctls"].get(name))
        for name, value in before["sysctls"].items()
        if after["sysctls"].get(name) != value
    }
    return {**diff, **({"sysctls": sysctl_diff} if sysctl_diff else {})}


def run_a_pod(kubeconfig: Path) -> None:
    """A pod with the node's own pause image: a sandbox, a container, a netns, cgroups, mounts."""
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    with api:
        core = client.CoreV1Api(api)
        hosting = core.read_namespaced_config_map("local-registry-hosting", "kube-public")
        registry = re.search(r'host: "([^"]+)"', hosting.data["localRegistryHosting.v1"])
        assert registry is not None
        pod = {
            "metadata": {"name": "holder"},
            "spec": {
                "containers": [{"name": "p", "image": f"{registry.group(1)}/devloop/pause:1"}]
            },
        }
        wait_until(
            core.list_namespaced_service_account,
            lambda found: bool(found.items),
            "the default ServiceAccount",
            namespace="default",
        )
        core.create_namespaced_pod("default", pod)
        wait_until(
            core.list_namespaced_pod,
            lambda found: bool(found.items) and found.items[0].status.phase == "Running",
            "pod holder to run",
            namespace="default",
            field_selector="metadata.name=holder",
        )


def test_down_restores_every_host_change_the_node_made(
    host_for_a_node: None, tmp_path: Path
) -> None:
    state = tmp_path / "c"
    before = host_state(state)
    try:
        started = local_cluster("up", state, "--nodes", "kubelet")
        assert started.returncode == 0, started.stderr
        run_a_pod(state / "kubeconfig")
        during = host_state(state)
    finally:
        stopped = local_cluster("down", state)

    assert stopped.returncode == 0, stopped.stderr
    # Falsifiable: the node did change the host while it ran.
    during_changes = set(changed(before, during))
    assert {"sysctls", "kube chains", "mounts under DIR", "kubepods cgroups"} <= during_changes
    assert {"bridges", "veths on our bridges", "socket dirs"} <= during_changes
    assert changed(before, host_state(state)) == {}


def test_the_watchdog_restores_the_host_when_the_owner_is_killed(
    host_for_a_node: None, tmp_path: Path
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    state = tmp_path / "c"
    before = host_state(state)
    try:
        started = local_cluster("up", state, "--nodes", "kubelet", owner=owner.pid)
        assert started.returncode == 0, started.stderr
        run_a_pod(state / "kubeconfig")
        watchdog = os.pidfd_open(
            int(re.findall(r'"pid": (\d+)', (state / "run" / "watchdog.json").read_text())[0])
        )
    finally:
        owner.kill()
        owner.wait()
    ended, _, _ = select.select([watchdog], [], [], 120)
    os.close(watchdog)
    if not ended:
        local_cluster("down", state)
        pytest.fail("the watchdog did not stop the node within 120 s")

    assert changed(before, host_state(state)) == {}
    assert not (state / "node").exists()


def test_up_without_the_cached_node_binaries_says_to_run_dev_env(
    host_for_a_node: None, tmp_path: Path
) -> None:
    env = {**os.environ, "DEVLOOP_CACHE_DIR": str(tmp_path / "empty")}
    argv = [str(SCRIPT), "up", "--dir", str(tmp_path / "c"), "--nodes", "kubelet"]

    failed = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)

    assert failed.returncode == 1
    assert "is not built" in failed.stderr and "run scripts/dev-env" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "c" / "node").exists()  # it failed before touching the host


def test_up_without_the_pause_binary_says_to_run_dev_env(
    host_for_a_node: None, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    (cache / "bin").mkdir(parents=True)
    for component in ("etcd", "kubernetes"):  # the real, cached cluster binaries; no pause
        found = subprocess.run(
            [str(SCRIPT.parent / "build-cluster-binaries"), "--cached", component],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        real = Path(found.strip().split("=", 1)[1])
        (cache / "bin" / real.name).symlink_to(real)
    env = {**os.environ, "DEVLOOP_CACHE_DIR": str(cache)}
    argv = [str(SCRIPT), "up", "--dir", str(tmp_path / "c"), "--nodes", "kubelet"]

    failed = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)

    assert failed.returncode == 1
    assert "/pause" in failed.stderr and "run scripts/dev-env first" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "c" / "node").exists()
