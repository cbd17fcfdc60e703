"""Real-node benchmark: what `local-cluster up --nodes kubelet` costs and how fast pods run.

    python bench/real_node.py [--runs 3] [--pods 5]

For each run: `up` wall time, then a Deployment of the node's own pause image (already in its
registry, so the first pull is local) from create to every replica Ready, the node's RSS
(`status`) with those pods, and `down` wall time (which also restores the host). Prints one line
per run and the medians. Needs root and scripts/dev-env's cached binaries.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "local-cluster"
NODE = ("registry", "containerd", "kubelet")
sys.path.insert(0, str(ROOT / "scripts"))

import local_node  # noqa: E402


def timed(*argv: str) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr}")
    return time.monotonic() - start, done.stdout


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    argv = ["kubectl", f"--kubeconfig={kubeconfig}", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


def deployment(registry: str, replicas: int) -> str:
    labels = {"app": "bench"}
    container = {"name": "p", "image": f"{registry}/devloop/pause:1"}
    spec = {"containers": [container], "terminationGracePeriodSeconds": 1}
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": spec},
            },
        }
    )


def node_rss(state: Path) -> int:
    """MiB of the node's processes plus every shim (containerd-shim-runc-v2) on the machine."""
    shown = subprocess.run(
        [str(SCRIPT), "status", "--dir", str(state)], capture_output=True, text=True, check=True
    ).stdout
    total = sum(
        int(m.group(1))
        for line in shown.splitlines()
        if line.split()[0] in NODE and (m := re.search(r"rss_mib=(\d+)", line))
    )
    socket = str(local_node.NodeLayout(state.resolve()).socket)  # shims name their containerd
    shims = subprocess.run(["pgrep", "-f", socket], capture_output=True, text=True).stdout
    for pid in shims.split():
        status = Path(f"/proc/{pid}/status").read_text()
        if "containerd-shim" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) // 1024  # type: ignore[union-attr]
    return total


def one_run(state: Path, pods: int) -> dict[str, float]:
    up_s, out = timed(str(SCRIPT), "up", "--dir", str(state), "--nodes", "kubelet")
    kubeconfig = Path(out.splitlines()[-1])
    hosting = kubectl(kubeconfig, "-n", "kube-public", "get", "cm", "local-registry-hosting",
                      "-o", "jsonpath={.data.localRegistryHosting\\.v1}")  # fmt: skip
    registry = re.search(r'host: "([^"]+)"', hosting).group(1)  # type: ignore[union-attr]
    start = time.monotonic()
    kubectl(kubeconfig, "apply", "-f", "-", stdin=deployment(registry, pods))
    kubectl(kubeconfig, "rollout", "status", "deployment/bench", "--timeout=120s")
    ready_s = time.monotonic() - start
    rss = node_rss(state)
    down_s, _ = timed(str(SCRIPT), "down", "--dir", str(state))
    return {"up_s": up_s, "pods_ready_s": ready_s, "node_rss_mib": rss, "down_s": down_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pods", type=int, default=5)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="devloop-bench-node-") as tmp:
        for n in range(args.runs):
            result = one_run(Path(tmp) / f"c{n}", args.pods)
            results.append(result)
            print(f"run {n + 1}: " + " ".join(f"{k}={v:.2f}" for k, v in result.items()))
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"median ({args.pods} pods): " + " ".join(f"{k}={v:.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
