"""The Kubernetes target: server-side apply, pruning, inventory and rollout waits."""
