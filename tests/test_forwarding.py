"""Port-forwards: a real listener on 127.0.0.1, one forward stream per connection.

The seam is the tunnel: instead of the API server's portforward websocket, a socket pair whose
far end is served by a thread playing the pod (it answers with its own name). Everything on
this side (the listener, the pod choice on the board, the relay, the events) is the real code;
the real-node tests (test_real_node_streams.py) forward to a kubelet's pod.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import anyio
import pytest

from devloop.targets.kubernetes.forwarding import Forwarder, PortTaken, listen
from devloop.targets.kubernetes.pods import AppWorkload, ForwardPort, PodBoard

pytestmark = pytest.mark.anyio
OWNER = ("Deployment", "web")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pod(name: str, ready: bool = True, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    return {
        "metadata": {"uid": name, "name": name, "namespace": "dev", "labels": {"a": "b"},
                     "creationTimestamp": created},
        "status": {"phase": "Running", "conditions": [condition]},
    }  # fmt: skip


class Tunnels:
    """Opens a 'tunnel' to a pod: a socket pair whose other end answers `<pod> <port>`."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, namespace: str, pod: str, port: int) -> Any:
        ours, theirs = socket.socketpair()
        self.opened.append(pod)

        def answer() -> None:
            with theirs:
                theirs.recv(1024)
                theirs.sendall(f"{pod} {port}\n".encode())

        thread = threading.Thread(target=answer)
        thread.start()
        self.threads.append(thread)

        class Tunnel:
            socket = ours

            def close(self) -> None:
                ours.close()

        return Tunnel()


async def ask(port: int) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as client:
        await client.send(b"GET / HTTP/1.0\r\n\r\n")
        received = b""
        try:
            while True:
                received += await client.receive()
        except anyio.EndOfStream:
            return received


async def test_the_same_local_port_reaches_the_new_pod_after_a_rollout() -> None:
    port = free_port()
    web = AppWorkload("Deployment", "dev", "web", {"matchLabels": {"a": "b"}},
                      (ForwardPort(port, 8080),))  # fmt: skip
    events: list[tuple[str, dict[str, Any]]] = []
    tunnels = Tunnels()
    async with anyio.create_task_group() as group:
        board = PodBoard(None, group)  # type: ignore[arg-type]  # no watch: the test is it
        board.workloads = [web]
        board.record("ADDED", pod("web-1"), OWNER)
        forwarder = Forwarder(
            board, web, web.ports[0], tunnels, lambda e, **f: events.append((e, f))
        )
        group.start_soon(forwarder.serve, await listen(web, web.ports[0]))
        assert await ask(port) == b"web-1 8080\n"
        board.record("ADDED", pod("web-2", ready=False, created="2026-01-01T00:05:00Z"), OWNER)
        assert await ask(port) == b"web-1 8080\n"  # the new pod is not ready yet
        board.record("MODIFIED", pod("web-2", created="2026-01-01T00:05:00Z"), OWNER)
        board.record("DELETED", pod("web-1"), OWNER)
        assert await ask(port) == b"web-2 8080\n"
        forwarder.retarget(web, ForwardPort(port, 9090))  # a redeploy changed the pod's port
        assert await ask(port) == b"web-2 9090\n"
        group.cancel_scope.cancel()
    for thread in tunnels.threads:
        thread.join(5)
    assert events == [("portforward.ready", {"workload": "web", "url": f"http://127.0.0.1:{port}",
                                              "port": 8080})]  # fmt: skip
    with pytest.raises(OSError):  # the listener is closed with its task group
        await anyio.connect_tcp("127.0.0.1", port)


async def test_without_a_running_pod_connections_close_and_the_failure_is_said_once() -> None:
    port = free_port()
    web = AppWorkload("Deployment", "dev", "web", {}, (ForwardPort(port, 8080),))
    events: list[str] = []
    async with anyio.create_task_group() as group:
        board = PodBoard(None, group)  # type: ignore[arg-type]
        board.workloads = [web]
        forwarder = Forwarder(board, web, web.ports[0], Tunnels(), lambda e, **f: events.append(e))
        group.start_soon(forwarder.serve, await listen(web, web.ports[0]))
        assert await ask(port) == b""
        assert await ask(port) == b""
        group.cancel_scope.cancel()
    assert events == ["portforward.ready", "portforward.failed"]


async def test_a_local_port_already_taken_is_an_error_naming_it_and_the_way_out() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        web = AppWorkload("Deployment", "dev", "web", {}, (ForwardPort(port, 8080),))
        with pytest.raises(PortTaken) as raised:
            await listen(web, web.ports[0])
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message and "Deployment/web" in message
    assert "--port-forward=false" in message and "Service's port" in message
