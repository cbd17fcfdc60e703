""".dockerignore rules, evaluated exactly as Docker evaluates them when it sends a build context.

The watcher, the change classifier and the input digest must agree with Docker about which files
are in a context: a file Docker never sends must not trigger a build, and a file it sends must.
So this follows moby/patternmatcher (pattern syntax, `**`, parent-directory matching, `!`
exceptions, later lines winning) and BuildKit's fsutil walk (which directories may be skipped
without looking inside them). Deliberate differences, all on patterns Docker itself mangles:
a `\\` escape always means "this character literally", and a character class is read with Go
`filepath.Match` rules (`[^a-z]`, `\\]` escapes) rather than passed raw to a regexp.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from devloop.errors import InputError

IGNORE_FILE = ".dockerignore"
_BOM = "\ufeff"
_WILDCARDS = "*?[]\\"
# fsutil: an exception containing one of these may match anything, anywhere (no dir skipping).
_PATTERN_CHARS = "*[]?^\\"

# The evaluation of every pattern for one path, handed down to its children (moby's MatchInfo).
MatchInfo = tuple[bool, ...]


class BadPattern(ValueError):
    """A pattern Go's filepath.Match would reject; Docker refuses the build."""


@dataclass(frozen=True)
class Pattern:
    """One cleaned line of a .dockerignore."""

    text: str  # cleaned, without the leading "!"
    exception: bool  # a "!" line: re-includes what earlier lines excluded
    matches: Callable[[str], bool]

    @property
    def prefix_only(self) -> bool:
        """True when the pattern is a literal path (ignoring a trailing `/**` or `/*`)."""
        return not any(c in _PATTERN_CHARS for c in _without_trailing_glob(self.text))


def parse(text: str) -> list[str]:
    """The patterns of a .dockerignore file, as moby's ignorefile.ReadAll returns them."""
    return [pattern for _, pattern in parse_lines(text)]


def parse_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, pattern) for every pattern line."""
    patterns = []
    for number, line in enumerate(text.removeprefix(_BOM).splitlines(), start=1):
        if line.startswith("#"):
            continue  # a comment only when `#` is the first character, before trimming
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append((number, "!" + pattern if invert else pattern))
    return patterns


def go_clean(path: str) -> str:
    """Go's filepath.Clean on a slash path (normpath keeps a leading `//`, Go does not)."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def compile_pattern(line: str) -> Pattern:
    """Compile one line; raises BadPattern for the lines Docker rejects."""
    text = go_clean(line.strip())
    exception = text.startswith("!")
    if exception:
        if text == "!":
            raise BadPattern('illegal exclusion pattern: "!"')
        text = text[1:]
    return Pattern(text, exception, _matcher_for(text))


def _matcher_for(text: str) -> Callable[[str], bool]:
    rest = text[2:]
    if text.startswith("**") and not any(c in _WILDCARDS for c in rest):
        # moby's suffixMatch: `**/foo` and also `**foo` (which matches `xfoo`)
        return lambda path: path.endswith(rest) or (rest[:1] == "/" and path == rest[1:])
    regex = re.compile(_translate(text), re.DOTALL)
    return lambda path: regex.fullmatch(path) is not None


def _translate(pattern: str) -> str:
    """moby's pattern-to-regexp conversion with `/` as the separator."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*" and pattern[i : i + 1] == "*":
            i += 2 if pattern[i + 1 : i + 2] == "/" else 1  # `**/` is read as `**`
            out.append(".*" if i >= len(pattern) else "(?:.*/)?")
        elif ch in "*?":
            out.append("[^/]*" if ch == "*" else "[^/]")
        elif ch == "\\":
            if i >= len(pattern):
                raise BadPattern("trailing backslash")
            out.append(re.escape(pattern[i]))
            i += 1
        elif ch == "[":
            regex, i = _translate_class(pattern, i)
            out.append(regex)
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _translate_class(pattern: str, i: int) -> tuple[str, int]:
    """A Go filepath.Match character class starting after `[`; returns (regex, next index)."""
    negate = pattern[i : i + 1] == "^"
    i += negate
    ranges: list[str] = []
    while True:
        if i >= len(pattern):
            raise BadPattern("unterminated character class")
        if pattern[i] == "]" and ranges:
            return "[" + "^" * negate + "".join(ranges) + "]", i + 1
        low, i = _class_char(pattern, i)
        if pattern[i : i + 1] == "-":
            high, i = _class_char(pattern, i + 1)
            if high < low:
                raise BadPattern(f"empty range {low}-{high}")
            ranges.append(f"{re.escape(low)}-{re.escape(high)}")
        else:
            ranges.append(re.escape(low))


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern) or pattern[i] in "-]":
        raise BadPattern("bad character class")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise BadPattern("trailing backslash")
    return pattern[i], i + 1


def _without_trailing_glob(text: str) -> str:
    return text.removesuffix("/**").removesuffix("/*")


class Matcher:
    """Which paths of one build context Docker leaves out (relative, slash-separated paths)."""

    def __init__(self, lines: Sequence[str], always: Iterable[str] = ()) -> None:
        self.patterns = [compile_pattern(line) for line in lines if line.strip()]
        # The CLI always sends the Dockerfile and .dockerignore (TrimBuildFilesFromExcludes).
        for name in always:
            if self.excluded(name):
                self.patterns.append(compile_pattern("!" + name))
        self._exceptions = [p for p in self.patterns if p.exception]
        self._may_skip = all(p.prefix_only for p in self._exceptions)

    def evaluate(self, relpath: str, parent: MatchInfo = ()) -> tuple[bool, MatchInfo]:
        """(excluded?, info for the children): moby's MatchesUsingParentResults.

        Without `parent` info every ancestor directory is tried, as MatchesOrParentMatches does.
        """
        matched, info = False, []
        for index, pattern in enumerate(self.patterns):
            hit = bool(parent) and parent[index]
            if not hit:
                if pattern.exception != matched:
                    info.append(False)  # cannot change the outcome, so moby does not look
                    continue
                hit = pattern.matches(relpath) or (not parent and _parent_hit(pattern, relpath))
            info.append(hit)
            if hit:
                matched = not pattern.exception
        return matched, tuple(info)

    def excluded(self, relpath: str) -> bool:
        """True when Docker does not send this file (or directory entry)."""
        if not self.patterns:
            return False
        info: MatchInfo = ()
        parts = relpath.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            matched, info = self.evaluate("/".join(parts[:depth]), info or _root(self))
        return matched

    def dir_excluded(self, reldir: str) -> bool:
        """True when nothing under this directory can be sent, so it need not be walked."""
        return self.excluded(reldir) and self.nothing_reincluded_below(reldir)

    def nothing_reincluded_below(self, reldir: str) -> bool:
        """True when no `!` line can match below `reldir` (BuildKit's test for skipping)."""
        if not self._may_skip:
            return False
        below = reldir.strip("/") + "/"
        return not any(
            (_without_trailing_glob(p.text) + "/").startswith(below) for p in self._exceptions
        )


def walk(
    root: Path, matcher: Matcher, prune: Callable[[str], bool] = lambda rel: False
) -> Iterator[tuple[str, os.DirEntry[str], bool]]:
    """(relative path, entry, excluded?) for every entry below `root` that Docker looks at.

    Directories Docker would skip (and those `prune` names) are neither yielded nor entered;
    symlinks are not followed, as Docker sends them as links. Unreadable directories are
    passed over: a build would fail on them with a clearer message than ours.
    """
    stack: list[tuple[str, str, MatchInfo]] = [(str(root), "", _root(matcher))]
    while stack:
        path, rel, info = stack.pop()
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            child = rel + entry.name
            excluded, child_info = matcher.evaluate(child, info)
            if entry.is_dir(follow_symlinks=False):
                if prune(child) or (excluded and matcher.nothing_reincluded_below(child)):
                    continue
                stack.append((entry.path, child + "/", child_info))
            yield child, entry, excluded


def _root(matcher: Matcher) -> MatchInfo:
    """Parent info for a top-level path: no pattern matched "." (and no ancestor search)."""
    return (False,) * len(matcher.patterns)


def _parent_hit(pattern: Pattern, relpath: str) -> bool:
    parts = relpath.split("/")[:-1]
    return any(pattern.matches("/".join(parts[:n])) for n in range(1, len(parts) + 1))


def ignore_file_for(context: Path, dockerfile: Path) -> Path:
    """BuildKit prefers `<Dockerfile>.dockerignore` next to the Dockerfile over the context's."""
    specific = dockerfile.with_name(dockerfile.name + IGNORE_FILE)
    return specific if specific.is_file() else context / IGNORE_FILE


def load(context: Path, dockerfile: Path) -> Matcher:
    """The Matcher of a build context; a bad line raises InputError naming file and line."""
    path = ignore_file_for(context, dockerfile)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    always = [IGNORE_FILE]
    if dockerfile.is_relative_to(context):
        always.append(dockerfile.relative_to(context).as_posix())
    return _checked(path, parse_lines(text), always)


def _checked(path: Path, lines: list[tuple[int, str]], always: list[str]) -> Matcher:
    for number, line in lines:
        try:
            compile_pattern(line)
        except BadPattern as error:
            raise InputError(
                f"{path}, line {number}",
                f"bad pattern {line!r}: {error}",
                "Fix or remove the line; Docker rejects this context too.",
            ) from None
    return Matcher([line for _, line in lines], always)
