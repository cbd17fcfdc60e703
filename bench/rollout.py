"""Rollout-wait benchmark: from the apply answered to the rollout seen done, polling vs watching.

    python bench/rollout.py [--rollouts 10] [--kubeconfig K]

Starts a throwaway kwok cluster (scripts/local-cluster) unless --kubeconfig is given, then rolls
a 1-replica Deployment out N times (a changed env value each time) and times
`wait_for_rollouts` twice per rollout shape: with the old 0.25 s polling pause and with the
pause woken by watches (rollout_watch.changes), alternating so both see the same cluster.
The part of that time spent by the controllers is the same for both; the difference is what
the wait adds. kubectl's `rollout status` answers in 0.08-0.15 s on the same cluster shape.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devloop.targets.kubernetes import rollout_watch  # noqa: E402
from devloop.targets.kubernetes.applying import (  # noqa: E402
    Cluster,
    ManifestObject,
    apply_objects,
    delete_app,
)
from devloop.targets.kubernetes.rollout import wait_for_rollouts  # noqa: E402


def deployment(value: str) -> ManifestObject:
    container = {
        "name": "app",
        "image": "example.test/web:v1",
        "env": [{"name": "V", "value": value}],
    }
    return ManifestObject({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench-web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "bench-web"}},
                 "template": {"metadata": {"labels": {"app": "bench-web"}},
                              "spec": {"containers": [container]}}},
    }, "bench")  # fmt: skip


def one(kube: Cluster, value: str, watch: bool) -> float:
    result = apply_objects(kube, [deployment(value)], "bench-rollout", "default", None)
    workloads = result.changed_workloads()
    started = time.perf_counter()
    if watch:
        with rollout_watch.changes(kube, workloads) as changes:
            wait_for_rollouts(kube, workloads, 60, sleep=changes.wait)
    else:
        wait_for_rollouts(kube, workloads, 60)
    return time.perf_counter() - started


def run(kubeconfig: Path, rollouts: int) -> None:
    kube = Cluster(str(kubeconfig))
    one(kube, "warm", watch=False)
    polled, watched = [], []
    for n in range(rollouts):
        polled.append(one(kube, f"p{n}", watch=False))
        watched.append(one(kube, f"w{n}", watch=True))
    delete_app(kube, "bench-rollout", "default")
    for name, values in (("polling every 0.25 s", polled), ("woken by watches", watched)):
        print(
            f"{name:24} apply answered -> rollout done: median {statistics.median(values):.3f} s, "
            f"min {min(values):.3f} s, max {max(values):.3f} s ({len(values)} rollouts)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--kubeconfig", type=Path)
    args = parser.parse_args()
    if args.kubeconfig:
        run(args.kubeconfig, args.rollouts)
        return
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as state:
        script = str(ROOT / "scripts" / "local-cluster")
        up = subprocess.run([script, "up", "--dir", state], capture_output=True, text=True)
        if up.returncode != 0:
            sys.exit(f"bench: the local cluster did not start:\n{up.stderr}")
        try:
            run(Path(up.stdout.splitlines()[-1]), args.rollouts)
        finally:
            subprocess.run([script, "down", "--dir", state], capture_output=True)


if __name__ == "__main__":
    main()
