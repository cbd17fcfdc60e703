"""Drives `devloop up` as a user would: a subprocess in a temporary app directory.

Its `--log-format json` stream is read on a thread into a list, and tests wait for events
with a deadline instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Event = dict[str, Any]
ROOT = Path(__file__).resolve().parents[1]  # the checkout under test, whatever pip installed


class Devloop:
    def __init__(self, cwd: Path, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        cmd = [sys.executable, "-m", "devloop.cli", "up", "--log-format", "json", *args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            start_new_session=True,
        )
        self._threads = [
            threading.Thread(target=self._read_events, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "non-json", "line": line.rstrip("\n")}
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.stderr.append(line.rstrip("\n"))

    def mark(self) -> int:
        """The position after the events seen so far: `wait(..., after=mark)` looks past it."""
        with self._cond:
            return len(self.events)

    def wait(
        self,
        name: str,
        where: Callable[[Event], bool] = lambda e: True,
        after: int = 0,
        timeout: float = 90.0,
    ) -> Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[after:]:
                    if event.get("event") == name and where(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"no {name} event within {timeout} s (exit={self.proc.poll()});\n"
                        + self.transcript()
                    )
                self._cond.wait(min(remaining, 0.5))

    def named(self, name: str, after: int = 0) -> list[Event]:
        with self._cond:
            return [e for e in self.events[after:] if e.get("event") == name]

    def transcript(self, last: int = 60) -> str:
        with self._cond:
            lines = [json.dumps(e) for e in self.events[-last:]]
            return "\n".join([*lines, "--- stderr ---", *self.stderr[-20:]])

    def interrupt(self, timeout: float = 10.0) -> float:
        """Send SIGINT like Ctrl-C; return the seconds until the process exited."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=timeout)
        return time.monotonic() - start

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for thread in self._threads:
            thread.join(timeout=5)
