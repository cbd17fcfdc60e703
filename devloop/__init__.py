"""devloop: an instant, trustworthy Kubernetes inner loop, and a drop-in for kbld."""

__version__ = "0.1.0"
