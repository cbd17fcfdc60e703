"""The long-lived streams of the Kubernetes target: watches, followed pod logs, port-forwards.

`applying.Cluster.request` answers one request within a read timeout; these stay open for as
long as the app runs, so they have no read timeout and instead end when the call that opened
them is stopped (`blocking.Stop.on_set` shuts the socket down, which wakes the blocked read).
This is the second module that imports `kubernetes`, for its portforward websocket only; the
watches and logs are raw GETs through the Cluster's ApiClient.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from devloop import blocking
from devloop.errors import ClusterUnavailable, TemporaryError
from devloop.targets.kubernetes.applying import Cluster

CONNECT_TIMEOUT_S = 3.0


class StreamFailed(TemporaryError):
    """The API server refused a stream (a pod gone, a container not started yet)."""


class Lines:
    """One streamed GET, read as whole lines (bytes, without the newline)."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._lock, self._closed = threading.Lock(), False
        stop = blocking.current_stop()
        self._unregister = stop.on_set(self.close) if stop is not None else (lambda: None)

    def __iter__(self) -> Iterator[bytes]:
        from urllib3.exceptions import HTTPError

        try:
            for line in self._response:
                yield line.rstrip(b"\n")
        except (HTTPError, OSError, ValueError):
            return  # shut down under us, or the connection broke: the caller resumes
        finally:
            self.close()

    def close(self) -> None:
        """End the stream; from any thread, any number of times."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._unregister()
        try:
            self._response.shutdown()
        except (OSError, ValueError, RuntimeError):
            pass  # it ended already (released to the pool): nothing is blocked on it
        self._response.release_conn()


def open_lines(cluster: Cluster, path: str, query: Sequence[tuple[str, str]]) -> Lines:
    """GET `path` as a stream; StreamFailed with the server's message unless it answers 200."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    blocking.check()
    api = cluster.api
    try:
        call = api.param_serialize(
            "GET", path, query_params=list(query), header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"],
        )  # fmt: skip
        response = api.call_api(*call, _request_timeout=(CONNECT_TIMEOUT_S, None)).response
    except (HTTPError, OSError, ApiException) as error:
        raise ClusterUnavailable(f"cannot reach the Kubernetes API at {cluster.server}") from error
    if response.status != 200:
        body = response.read()
        response.release_conn()
        raise StreamFailed(_message(body, response.status))
    return Lines(response)


def watch_events(lines: Lines) -> Iterator[dict[str, Any]]:
    """The events of a `?watch=1` stream: {"type": ..., "object": {...}}."""
    for line in lines:
        if line.strip():
            yield json.loads(line)


def _message(body: bytes, status: int) -> str:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")[:200]
    return str(message or f"HTTP {status}")


class Tunnel:
    """One port-forward connection to a pod's port: `socket` reaches the pod's port."""

    def __init__(self, forward: Any, port: int) -> None:
        self._forward, self._port = forward, port
        self.socket: socket.socket = forward.socket(port)._socket

    def error(self) -> str | None:
        text = self._forward.error(self._port)
        return str(text) if text else None

    def close(self) -> None:
        self._forward.close()


def open_tunnel(cluster: Cluster, namespace: str, pod: str, port: int) -> Tunnel:
    """A websocket port-forward to `pod`:`port` (kubectl port-forward's protocol)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import portforward
    from websocket import WebSocketException

    blocking.check()
    core: Any = client.CoreV1Api(cluster.api)
    try:
        forward = portforward(core.connect_get_namespaced_pod_portforward, pod, namespace,
                              ports=str(port))  # fmt: skip
    except (ApiException, WebSocketException, OSError) as error:
        raise StreamFailed(f"port-forward to pod {pod} port {port}: {error}") from error
    return Tunnel(forward, port)
