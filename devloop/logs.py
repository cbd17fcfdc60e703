"""Whole, prefixed output lines from concurrent builds, and structlog set up once.

Builds stream their output in arbitrary chunks (half a line, three lines, a progress bar redrawn
with carriage returns), and several builds write to one terminal at once. kbld's contract, which
users grep, is one `<image> | <line>` per output line; lines of two builds may interleave, text
inside a line never does. `LineSplitter` turns chunks into lines, `LineWriter` writes each line
with one `write()` under a lock.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from typing import IO, Protocol, TextIO

_COLORS = ("\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[91m")
_RESET = "\033[0m"
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class LineSink(Protocol):
    """Where whole output lines go: a `LineWriter`, or the daemon's event stream."""

    def line(self, prefix: str, text: str) -> None: ...


class LineSplitter:
    """Cuts one source's chunks into whole lines, keeping the unfinished tail for later.

    A carriage return redraws the current line (progress bars): only what follows the last one
    survives, so a log file or a non-terminal gets the final state instead of every redraw.
    """

    def __init__(self) -> None:
        self._partial = ""

    def feed(self, chunk: str) -> list[str]:
        """The lines `chunk` completes, without their line ends."""
        *done, self._partial = (self._partial + chunk).split("\n")
        return [_last_redraw(line) for line in done]

    def finish(self) -> list[str]:
        """The unterminated remainder as a last line (none if empty)."""
        rest, self._partial = _last_redraw(self._partial), ""
        return [rest] if rest else []


def _last_redraw(line: str) -> str:
    # "\r\n" line ends leave a trailing "\r"; it redraws nothing.
    return line.rstrip("\r").rpartition("\r")[2]


class LineWriter:
    """Writes `<prefix> | <line>` lines to a stream, whole, safe to share between threads.

    `color` (default: when the stream is a terminal) paints each prefix in its own color.
    `tee_dir`, when given, also appends each prefix's lines, unprefixed, to
    `<tee_dir>/<prefix>.log` (the daemon keeps `.devloop/logs/<image>.log`).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        color: bool | None = None,
        tee_dir: Path | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.color = _is_tty(self.stream) if color is None else color
        self.tee_dir = tee_dir
        self._lock = threading.Lock()
        self._splitters: dict[str, LineSplitter] = {}
        self._tees: dict[str, IO[str]] = {}

    def line(self, prefix: str, text: str) -> None:
        """Write `text` as whole line(s); embedded newlines make several prefixed lines."""
        with self._lock:
            self._write(prefix, LineSplitter().feed(text + "\n"))

    def feed(self, prefix: str, chunk: str) -> None:
        """Write the lines `chunk` completes; an unfinished line waits for its newline."""
        with self._lock:
            splitter = self._splitters.setdefault(prefix, LineSplitter())
            self._write(prefix, splitter.feed(chunk))

    def flush(self) -> None:
        """Write every prefix's unfinished line (at the end of its output)."""
        with self._lock:
            for prefix, splitter in self._splitters.items():
                self._write(prefix, splitter.finish())
            self._splitters.clear()

    def close(self) -> None:
        """Flush, then close the tee files (the stream belongs to the caller)."""
        self.flush()
        with self._lock:
            for file in self._tees.values():
                file.close()
            self._tees.clear()

    def _write(self, prefix: str, lines: list[str]) -> None:
        head = self._paint(prefix)
        for text in lines:
            self.stream.write(f"{head} | {text}\n")  # one write per line: never split by others
            if self.tee_dir is not None:
                self._tee(prefix).write(text + "\n")
        if lines:
            self.stream.flush()
            if self.tee_dir is not None:
                self._tee(prefix).flush()

    def _paint(self, prefix: str) -> str:
        if not self.color:
            return prefix
        import hashlib

        # Hash, not order of appearance: an image keeps its color across runs and restarts.
        index = hashlib.sha1(prefix.encode()).digest()[0] % len(_COLORS)
        return f"{_COLORS[index]}{prefix}{_RESET}"

    def _tee(self, prefix: str) -> IO[str]:
        if prefix not in self._tees:
            assert self.tee_dir is not None
            self.tee_dir.mkdir(parents=True, exist_ok=True)
            path = self.tee_dir / f"{log_file_name(prefix)}.log"
            self._tees[prefix] = path.open("a", encoding="utf-8")
        return self._tees[prefix]


def log_file_name(prefix: str) -> str:
    """A file name for a prefix such as `ghcr.io/org/app` (slashes and colons are unsafe)."""
    return _UNSAFE_FILE_CHARS.sub("-", prefix).strip("-.") or "output"


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
