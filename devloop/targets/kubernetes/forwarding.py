"""Reaching the app on a cluster at the URL the Docker target would publish: port-forwards.

The official client's portforward is a websocket that hands back one end of a socket pair, not a
listener, and a forward made once (as `kubectl port-forward` does) dies with its pod at the next
rollout. So each forwarded port is an anyio listener on 127.0.0.1, and every connection to it
gets its own forward stream to the pod serving at that moment (ready first, then newest; the
board follows the pod events), relayed both ways until either side closes.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc
from anyio.abc import UNIXSocketStream

from devloop import blocking
from devloop.errors import DevloopError
from devloop.targets.kubernetes.pods import AppWorkload, ForwardPort, PodBoard, serving

TUNNEL_DEADLINE_S = 10.0  # to open one forward stream to a pod
TUNNELS_MAX = 16  # forward streams being opened at once
CHUNK = 65536
Emit = Callable[..., None]


class Tunnel(Protocol):
    socket: socket.socket

    def close(self) -> None: ...


OpenTunnel = Callable[[str, str, int], Tunnel]  # (namespace, pod, port), blocking


class PortTaken(DevloopError):
    def __init__(self, workload: AppWorkload, port: ForwardPort) -> None:
        super().__init__(
            f"{workload.kind}/{workload.name}: cannot forward port {port.remote} to "
            f"127.0.0.1:{port.local}: that port is already in use on this machine. Stop what "
            "listens there, change the Service's port, or pass --port-forward=false"
        )


Listener = anyio.abc.Listener[anyio.abc.SocketStream]


async def listen(workload: AppWorkload, port: ForwardPort) -> Listener:
    """The listener of one forwarded port; PortTaken when something else holds it."""
    try:
        return await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port.local)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortTaken(workload, port) from error
        raise


class Forwarder:
    """Serves one listener: each connection is relayed to the workload's serving pod."""

    def __init__(
        self,
        board: PodBoard,
        workload: AppWorkload,
        port: ForwardPort,
        open_tunnel: OpenTunnel,
        emit: Emit,
    ) -> None:
        self._board, self._workload, self._port = board, workload, port
        self._open, self._emit = open_tunnel, emit
        self._limiter = anyio.CapacityLimiter(TUNNELS_MAX)
        self._trouble = ""  # the failure being reported, so it is said once

    def retarget(self, workload: AppWorkload, port: ForwardPort) -> None:
        """From the next connection on, reach this workload's port (the same local port)."""
        self._workload, self._port = workload, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port.local}"

    async def serve(self, listener: Listener) -> None:
        async with listener:
            self._emit("portforward.ready", workload=self._workload.name, url=self.url,
                       port=self._port.remote)  # fmt: skip
            await listener.serve(self._connection)

    async def _connection(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            tunnel = await self._tunnel()
            if tunnel is None:
                return
            try:
                async with await UNIXSocketStream.from_socket(tunnel.socket) as pod:
                    await relay(client, pod)
            finally:
                tunnel.close()

    async def _tunnel(self) -> Tunnel | None:
        pod = serving(self._board.pods_of(self._workload))
        if pod is None:
            self._say(f"no running pod of {self._workload.kind}/{self._workload.name} yet")
            return None
        meta = pod["metadata"]
        try:
            tunnel = await blocking.call(
                self._open, meta["namespace"], meta["name"], self._port.remote,
                limiter=self._limiter, deadline_s=TUNNEL_DEADLINE_S, what="opening a port-forward",
            )  # fmt: skip
        except DevloopError as error:
            self._say(str(error))
            return None
        if self._trouble:
            self._trouble = ""
            self._emit("portforward.recovered", workload=self._workload.name, url=self.url)
        return tunnel

    def _say(self, reason: str) -> None:
        if reason != self._trouble:
            self._trouble = reason
            self._emit("portforward.failed", workload=self._workload.name, url=self.url,
                       reason=reason)  # fmt: skip


async def relay(a: anyio.abc.ByteStream, b: anyio.abc.ByteStream) -> None:
    """Copy bytes both ways until both directions ended (a half-close is passed on)."""

    async def copy(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
        try:
            while True:
                data = await source.receive(CHUNK)
                await sink.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        try:
            await sink.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async with anyio.create_task_group() as group:
        group.start_soon(copy, a, b)
        group.start_soon(copy, b, a)
