"""Where the app runs: a Kubernetes cluster or the local Docker engine, behind one protocol.

`open_target` is the one place that knows both: it picks the target the settings name, says which
(and why, when it picked on its own), and owns the target's lifetime: the Docker target removes
its containers on exit unless `keep`, the Kubernetes target deletes the app when `cleanup`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from devloop.events import Events
from devloop.settings import Settings
from devloop.targets.base import Placement, Target

SHUTDOWN_GRACE_S = 2.5  # exit-time cleanup is cut after this, so Ctrl-C stays under 3 s
NO_CLUSTER = (
    "no Kubernetes context is configured, so the app runs on the local Docker engine; "
    "pass --kubeconfig or --context (or set KUBECONFIG) to deploy to a cluster instead"
)


def placement(settings: Settings) -> Placement:
    return Placement(settings.app_name, settings.namespace, settings.rollout_timeout_s)


@asynccontextmanager
async def open_target(settings: Settings, events: Events) -> AsyncIterator[Target]:
    """The target of this run, open for as long as the context is."""
    if settings.resolved_target() == "docker":
        if settings.target == "auto":
            events.emit("target.selected", target="docker", reason=NO_CLUSTER)
        async with _docker(settings, events) as docker:
            yield docker
    else:
        async with _kubernetes(settings, events) as kubernetes:
            yield kubernetes


@asynccontextmanager
async def _docker(settings: Settings, events: Events) -> AsyncIterator[Target]:
    from devloop.targets.docker.target import docker_target

    on_line = events.line if settings.logs else _quiet
    async with docker_target(on_line, emit=events.emit) as target:
        await target.adopt_or_clean(settings.app_name)
        try:
            yield target
        finally:
            if not settings.keep:
                with anyio.move_on_after(SHUTDOWN_GRACE_S, shield=True):
                    await target.cleanup(settings.app_name)


@asynccontextmanager
async def _kubernetes(settings: Settings, events: Events) -> AsyncIterator[Target]:
    from devloop.targets.kubernetes.target import KubernetesTarget

    target = KubernetesTarget(
        settings.kubeconfig, settings.context, events, settings.delivery, settings.default_repo
    )
    await target.cluster()  # a kubeconfig it cannot use ends `up` at once, before any build
    crashed = False
    async with anyio.create_task_group() as streams:  # pod logs and port-forwards
        await target.open_streams(streams, logs=settings.logs, forward=settings.port_forward)
        try:
            yield target
        except Exception:
            crashed = True
            raise
        finally:  # a clean exit or Ctrl-C cleans up; a crash leaves things to look at
            streams.cancel_scope.cancel()  # every listener closes, every follower stops
            if settings.cleanup and not crashed:
                with anyio.move_on_after(SHUTDOWN_GRACE_S, shield=True):
                    deleted = await target.delete_app(placement(settings))
                    events.emit("cleanup.finished", deleted=len(deleted))
            target.close()


def _quiet(_prefix: str, _line: str) -> None:
    """--logs=false: the app's output is not shown."""


async def delete_app(settings: Settings, events: Events) -> list[str]:
    """`devloop down`: remove what `up` applied or started for the app, on its target."""
    if settings.resolved_target() == "docker":
        from devloop.targets.docker.target import docker_target

        async with docker_target(events.line) as docker:
            return await docker.delete_app(placement(settings))
    from devloop.targets.kubernetes.target import KubernetesTarget

    return await KubernetesTarget(settings.kubeconfig, settings.context, events).delete_app(
        placement(settings)
    )
