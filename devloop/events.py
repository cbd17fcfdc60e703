"""The daemon's outcome events: one canonical line per outcome, for people or for programs.

`--log-format console` writes short human lines to stderr (`build.finished image=app
seconds=2.1 ref=...`); `--log-format json` writes one JSON object per line to stdout with `event`,
`timestamp` and the event's fields. Tests and tools read the JSON stream instead of scraping text.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog

from devloop.logs import LineWriter

SDK_LOGGERS = ("docker", "urllib3", "kubernetes")
_LEVEL_OF = {"failed": "error", "cancelled": "warning", "unavailable": "warning"}


class Events:
    """Thread-safe emitter of events and of prefixed output lines, in one format."""

    def __init__(
        self, fmt: str = "console", stream: TextIO | None = None, tee_dir: Path | None = None
    ) -> None:
        self.fmt = fmt
        self.stream = stream or (sys.stdout if fmt == "json" else sys.stderr)
        self.color = fmt == "console" and self.stream.isatty()
        self._lock = threading.Lock()
        self._bridge: _SdkLogBridge | None = None
        self._saved: dict[str, tuple[int, bool]] = {}  # SDK logger -> (level, propagate)
        # Console output lines go through a LineWriter (colors, whole lines); in JSON mode it
        # only keeps the per-prefix log files under `tee_dir`.
        self._discard = open(os.devnull, "w") if fmt == "json" else None
        self._lines = LineWriter(self._discard or self.stream, color=self.color, tee_dir=tee_dir)
        renderer: Any = (
            structlog.processors.JSONRenderer(serializer=_dumps)
            if fmt == "json"
            else structlog.dev.ConsoleRenderer(colors=self.color, pad_event_to=0)
        )
        self._log = structlog.wrap_logger(
            structlog.PrintLogger(self.stream),
            processors=[_add_timestamp if fmt == "json" else _add_clock_time, renderer],
            wrapper_class=structlog.BoundLogger,
            cache_logger_on_first_use=False,
        )

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event line; `seconds` is rounded, None fields are dropped."""
        clean = {k: _round(v) for k, v in fields.items() if v is not None}
        with self._lock:
            self._log.msg(event, **clean)
            self.stream.flush()

    def line(self, prefix: str, text: str) -> None:
        """One line of a build's (or a container's) output, written whole."""
        with self._lock:
            if self.fmt == "json":
                record = {"event": "output", "timestamp": _now(), "source": prefix, "line": text}
                self.stream.write(_dumps(record) + "\n")
                self.stream.flush()
            self._lines.line(prefix, text)

    def capture_sdk_logs(self) -> None:
        """Bring the SDKs' warnings (docker, urllib3, kubernetes) into this output as
        `sdk.warning` events; their debug and info chatter (every HTTP request) stays out.
        `close` puts the loggers back as they were."""
        self._bridge = _SdkLogBridge(self)
        for name in SDK_LOGGERS:
            logger = logging.getLogger(name)
            self._saved[name] = (logger.level, logger.propagate)
            logger.addHandler(self._bridge)
            logger.setLevel(logging.WARNING)
            logger.propagate = False  # not also to stderr through the root logger's last resort

    def close(self) -> None:
        for name, (level, propagate) in self._saved.items():
            logger = logging.getLogger(name)
            if self._bridge is not None:
                logger.removeHandler(self._bridge)
            logger.setLevel(level)
            logger.propagate = propagate
        self._saved.clear()
        self._lines.close()
        if self._discard is not None:
            self._discard.close()


class _SdkLogBridge(logging.Handler):
    def __init__(self, events: Events) -> None:
        super().__init__(logging.WARNING)
        self._events = events

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warning"
        self._events.emit("sdk." + level, logger=record.name, reason=record.getMessage())


class Stopwatch:
    """Seconds since creation, for the `seconds` field."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start


def _add_timestamp(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict["timestamp"] = _now()
    return event_dict


def _add_clock_time(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Console lines carry the local wall-clock time only: short, and what a person reads."""
    event_dict["timestamp"] = datetime.now().strftime("%H:%M:%S")
    return event_dict


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"))
