"""Where the app runs: a Kubernetes cluster or the local Docker engine, behind one protocol."""
