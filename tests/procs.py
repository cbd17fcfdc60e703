"""Live processes read from /proc, for tests that must leave none behind."""

from __future__ import annotations

from pathlib import Path

_FIELDS = {"ppid": 1, "pgrp": 2}  # positions after the state in /proc/<pid>/stat


def live_processes(**match: int) -> set[int]:
    """Pids whose `ppid` or `pgrp` equal the given values; zombies are not alive."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and all(int(fields[_FIELDS[k]]) == v for k, v in match.items()):
            found.add(int(entry.name))
    return found


def describe(pid: int) -> str:
    try:
        return f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return str(pid)
