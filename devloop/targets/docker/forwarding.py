"""devloop's own listeners on the Service ports, so a replace never takes the app away.

When the engine publishes a host port itself, the new container cannot bind it until the old one
has stopped, and a request that arrives while the new one starts waits for the kernel to retry
its SYN (about 1 s, measured: `bench/loop.py --target docker`). So each TCP Service port is a
listener of ours on 127.0.0.1, and every connection is piped to the container that currently
serves it, which the engine publishes on a port of its choosing. A replace starts and checks the
new container on its own port while the old one keeps answering, then switches the route: new
connections go to the new container, open ones finish on the old one until it is removed.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
from anyio.abc import TaskGroup

from devloop.errors import DevloopError

CONNECT_TIMEOUT_S = 5.0  # to the container's published port
CHUNK = 65536


class Forwarder:
    """127.0.0.1:<public> -> 127.0.0.1:<backend>, per public port; listeners live in `group`."""

    def __init__(self, group: TaskGroup) -> None:
        self._group = group
        self._routes: dict[int, int] = {}
        self._listeners: dict[int, anyio.abc.Listener[anyio.abc.SocketStream]] = {}

    async def route(self, public: int, backend: int, prefix: str) -> None:
        """Send new connections on `public` to `backend`; opens the listener on first use."""
        if public not in self._listeners:
            self._listeners[public] = await _listen(public, prefix)
            self._group.start_soon(self._serve, public)
        self._routes[public] = backend

    def backend(self, public: int) -> int | None:
        return self._routes.get(public)

    def forget(self, backends: set[int]) -> None:
        """Drop the routes to `backends` (their container is going away)."""
        for public, backend in list(self._routes.items()):
            if backend in backends:
                del self._routes[public]

    async def _serve(self, public: int) -> None:
        listener = self._listeners[public]
        try:
            async with anyio.create_task_group() as connections:
                await listener.serve(self._pipe_for(public), connections)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            self._listeners.pop(public, None)

    def _pipe_for(self, public: int) -> Callable[[anyio.abc.SocketStream], Awaitable[None]]:
        async def pipe(client: anyio.abc.SocketStream) -> None:
            async with client:
                backend = self._routes.get(public)
                if backend is None:
                    return  # nothing serves it right now: the client sees the connection close
                with contextlib.suppress(*_GONE):
                    with anyio.fail_after(CONNECT_TIMEOUT_S):
                        upstream = await anyio.connect_tcp("127.0.0.1", backend)
                    async with upstream, anyio.create_task_group() as both:
                        both.start_soon(_copy, client, upstream)
                        await _copy(upstream, client)
                        both.cancel_scope.cancel()  # the container is done: so is the client

        return pipe


# A peer that went away mid-connection ends only that connection.
_GONE = (OSError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError)


async def _copy(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
    """Bytes from `source` to `sink` until EOF, then half-close `sink`."""
    with contextlib.suppress(*_GONE):
        while True:
            try:
                data = await source.receive(CHUNK)
            except anyio.EndOfStream:
                break
            await sink.send(data)
        await sink.send_eof()


async def _listen(public: int, prefix: str) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    try:
        return await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=public)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise DevloopError(
                f"{prefix}: the host port 127.0.0.1:{public} is taken by another process or "
                "container; stop that or change the Service port"
            ) from error
        raise
