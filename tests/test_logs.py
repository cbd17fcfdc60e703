"""Whole prefixed lines from chunked, concurrent output; structlog routing."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from devloop.events import Events
from devloop.logs import LineSplitter, LineWriter, log_file_name


class Writes(io.StringIO):
    """A stream that records every write() call separately."""

    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.tty = tty

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)

    def isatty(self) -> bool:
        return self.tty


@given(st.lists(st.text(alphabet="ab \n", max_size=12), max_size=12))
def test_any_chunking_yields_the_same_lines(chunks: list[str]) -> None:
    splitter = LineSplitter()
    lines = [line for chunk in chunks for line in splitter.feed(chunk)] + splitter.finish()
    text = "".join(chunks)
    expected = text.split("\n")
    if expected[-1] == "":
        expected.pop()
    assert lines == expected


def test_carriage_returns_keep_only_the_last_redraw() -> None:
    splitter = LineSplitter()
    assert splitter.feed("10%\r50%\r100%\n") == ["100%"]
    assert splitter.feed("windows line\r\n") == ["windows line"]


def test_a_partial_line_waits_for_its_newline() -> None:
    stream = Writes()
    out = LineWriter(stream, color=False)
    out.feed("app", "Step 1/2 : FR")
    assert stream.calls == []
    out.feed("app", "OM scratch\nStep 2/2")
    assert stream.calls == ["app | Step 1/2 : FROM scratch\n"]
    out.flush()
    assert stream.calls[-1] == "app | Step 2/2\n"


def test_partial_lines_of_two_prefixes_do_not_mix() -> None:
    stream = Writes()
    out = LineWriter(stream, color=False)
    out.feed("a", "one-")
    out.feed("b", "two-")
    out.feed("a", "end\n")
    out.feed("b", "end\n")
    assert stream.calls == ["a | one-end\n", "b | two-end\n"]


def test_a_multi_line_text_becomes_several_prefixed_lines() -> None:
    stream = Writes()
    LineWriter(stream, color=False).line("resolve", "first\nsecond")
    assert stream.calls == ["resolve | first\n", "resolve | second\n"]


def test_threads_writing_at_once_never_split_a_line() -> None:
    stream = Writes()
    out = LineWriter(stream, color=False)
    barrier = threading.Barrier(4)

    def write(n: int) -> None:
        barrier.wait()
        for i in range(300):
            out.feed(f"p{n}", f"{n}-{i}-" + "x" * 40)
            out.feed(f"p{n}", f"-{n}\n")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stream.calls) == 4 * 300
    for call in stream.calls:
        prefix, _, text = call.partition(" | ")
        n = prefix.removeprefix("p")
        assert text.startswith(f"{n}-") and text.endswith(f"-{n}\n")


def test_a_terminal_gets_a_colored_prefix_and_a_pipe_does_not() -> None:
    tty, pipe = Writes(tty=True), Writes(tty=False)
    LineWriter(tty).line("app", "hi")
    LineWriter(pipe).line("app", "hi")
    assert tty.calls[0].startswith("\033[") and "app\033[0m | hi" in tty.calls[0]
    assert pipe.calls == ["app | hi\n"]


def test_each_prefix_is_teed_to_its_own_log_file(tmp_path: Path) -> None:
    out = LineWriter(Writes(), color=False, tee_dir=tmp_path / "logs")
    out.line("ghcr.io/org/app", "built")
    out.feed("other", "partial")
    out.close()
    assert (tmp_path / "logs" / "ghcr.io-org-app.log").read_text() == "built\n"
    assert (tmp_path / "logs" / "other.log").read_text() == "partial\n"


def test_log_file_names_are_safe() -> None:
    assert log_file_name("127.0.0.1:5000/a/b") == "127.0.0.1-5000-a-b"
    assert log_file_name("../..") == "output"


def test_sdk_warnings_reach_the_output_as_events_and_their_debug_lines_do_not() -> None:
    stream = io.StringIO()
    events = Events("json", stream)
    events.capture_sdk_logs()
    try:
        logging.getLogger("urllib3.connectionpool").debug("noise")
        logging.getLogger("docker.api").warning("engine is slow")
        logging.getLogger("kubernetes.client.rest").error("TLS handshake failed")
    finally:
        events.close()
    logging.getLogger("docker.api").warning("after close: not ours any more")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["event"], r["logger"], r["reason"]) for r in records] == [
        ("sdk.warning", "docker.api", "engine is slow"),
        ("sdk.error", "kubernetes.client.rest", "TLS handshake failed"),
    ]
