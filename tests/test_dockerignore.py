"""The .dockerignore rules agree with moby/patternmatcher and BuildKit's context walk."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devloop.errors import InputError
from devloop.loop.dockerignore import BadPattern, Matcher, compile_pattern, load, parse

# (pattern, path, matches the path itself, matches it or a parent): moby's TestMatches table.
MOBY_CASES = [
    ("**", "file", True, True),
    ("**/", "file", True, True),
    ("**", "dir/file", True, True),
    ("**/**", "dir/file", True, True),
    ("dir/**", "dir/file", True, True),
    ("dir/**", "dir/dir2/file", True, True),
    ("**/dir", "dir", True, True),
    ("**/dir", "dir/file", False, True),
    ("**/dir2/*", "dir/dir2/file", True, True),
    ("**/dir2/*", "dir/dir2/file/sub", False, True),
    ("**/dir2/**", "dir/dir2/dir3/file", True, True),
    ("**file", "file", True, True),
    ("**file", "dir/dir/file", True, True),
    ("**/file*.txt", "dir/dir/file.txt", True, True),
    ("**/**/*.txt2", "dir/dir/file.txt", False, False),
    ("**/*.txt", "file.txt", True, True),
    ("a**/*.txt", "a/dir/dir/file.txt", True, True),
    ("a/*.txt", "a/dir/file.txt", False, False),
    ("a/*.txt**", "a/file.txt", True, True),
    ("a[b-d]e", "ae", False, False),
    ("a[b-d]e", "ace", True, True),
    ("a[^b-d]e", "aze", True, True),
    (".*", ".foo", True, True),
    (".*", "foo", False, False),
    ("abc.def", "abcZdef", False, False),
    ("abc?def", "abcZdef", True, True),
    ("abc?def", "abcdef", False, False),
    ("**/foo/bar", "dir/dir2/foo/bar", True, True),
    ("abc/**", "abc", False, False),
    ("abc/**", "abc/def/ghi", True, True),
    ("**/.foo", "bar.foo", False, False),
    ("a(b)c/def", "a(b)c/def", True, True),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True, True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True, True),
    ("a\\\\", "a\\", True, True),
    ("a\\*b", "a*b", True, True),
    ("a\\*b", "ab", False, False),
    ("a*/b", "a/c/b", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True, True),
    ("a?b", "a☺b", True, True),
    ("a???b", "a☺b", False, False),
    ("[a-ζ]*", "\u03b1", True, True),  # a Greek alpha, inside the range
    ("a*b", "a/b", False, False),
    ("[\\]a]", "]", True, True),
    ("[x\\-]", "-", True, True),
    ("[\\-x]", "a", False, False),
    ("docs", "docs/README.md", False, True),
    ("*.go", "x.go/y", False, True),
]

BAD_PATTERNS = ["[", "[^", "[^bc", "a[", "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "!"]


@pytest.mark.parametrize(("pattern", "path", "exact", "or_parent"), MOBY_CASES)
def test_patterns_match_like_moby(pattern: str, path: str, exact: bool, or_parent: bool) -> None:
    assert compile_pattern(pattern).matches(path) == exact
    assert Matcher([pattern]).excluded(path) == or_parent


@pytest.mark.parametrize("pattern", BAD_PATTERNS)
def test_patterns_go_rejects_are_rejected(pattern: str) -> None:
    with pytest.raises(BadPattern):
        compile_pattern(pattern)


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["!fileutils.go", "*.go"], "fileutils.go", True),
        (["*.go", "!fileutils.go"], "fileutils.go", False),
        (["docs", "!docs/README.md"], "docs/README.md", False),
        (["docs/*", "!docs/README.md"], "docs/README.md", False),
        (["docs/*", "!docs/README.md"], "docs/other.md", True),
        (["**", "!util/docker/web"], "util/docker/web/foo", False),
        (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
        (["**", "!dist/*.whl"], "dist/a-1.whl", False),
        ([], "any/path/there", False),
    ],
)
def test_later_lines_win(patterns: list[str], path: str, excluded: bool) -> None:
    assert Matcher(patterns).excluded(path) == excluded


def test_comments_blanks_spaces_leading_and_trailing_slashes_are_read_like_docker() -> None:
    text = "\ufeff# comment\n\n  node_modules/  \n/build\n ! keep/me \n #not-a-comment\n"
    text += "./a//b/../c\n"
    assert parse(text) == ["node_modules", "build", "!keep/me", "#not-a-comment", "a/c"]


def test_the_dockerfile_and_dockerignore_are_always_sent() -> None:
    matcher = Matcher(["*", "!src"], always=[".dockerignore", "build/Dockerfile"])
    assert not matcher.excluded(".dockerignore")
    assert not matcher.excluded("build/Dockerfile")
    assert matcher.excluded("build/other")
    assert not matcher.dir_excluded("build")  # the Dockerfile lies beneath


def test_an_excluded_directory_is_skipped_only_when_no_exception_reaches_inside() -> None:
    matcher = Matcher(["node_modules", "vendor", "!vendor/keep.txt"])
    assert matcher.dir_excluded("node_modules")
    assert not matcher.dir_excluded("vendor")
    assert not matcher.excluded("vendor/keep.txt")
    assert not matcher.dir_excluded("src")


def test_a_wildcard_exception_forbids_skipping_any_directory() -> None:
    matcher = Matcher(["node_modules", "!**/*.keep"])
    assert not matcher.dir_excluded("node_modules")
    assert not matcher.excluded("node_modules/a/b.keep")
    assert matcher.excluded("node_modules/a/b.js")


def test_a_bad_line_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("# fine\nnode_modules\n\nsrc/[a-\n")
    with pytest.raises(InputError, match=r"\.dockerignore, line 4: bad pattern 'src/\[a-'"):
        load(tmp_path, tmp_path / "Dockerfile")


def test_a_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("a\n")
    (tmp_path / "dev.Dockerfile.dockerignore").write_text("b\n")
    matcher = load(tmp_path, tmp_path / "dev.Dockerfile")
    assert matcher.excluded("b") and not matcher.excluded("a")
    assert not matcher.excluded("dev.Dockerfile")


# -- properties ------------------------------------------------------------------------------

SEGMENTS = st.sampled_from(["a", "b", "ab", "ba", "a.b"])
PATHS = st.lists(SEGMENTS, min_size=1, max_size=4).map("/".join)
TOKENS = st.sampled_from(["a", "b", ".", "*", "?", "**", "/", "[ab]", "[^a]", "[a-b]", "\\*"])
PATTERNS = st.lists(TOKENS, min_size=1, max_size=6).map("".join)
LINES = st.lists(st.tuples(st.booleans(), PATTERNS), max_size=5).map(
    lambda pairs: [("!" if bang else "") + p for bang, p in pairs]
)


def reference_match(pattern: str, path: str) -> bool:
    """A backtracking interpreter of the pattern language (not a regexp translation)."""
    rest = pattern[2:]
    if pattern.startswith("**") and not any(c in "*?[]\\" for c in rest):
        return path.endswith(rest) or (rest.startswith("/") and path == rest[1:])

    @functools.cache
    def at(p: int, s: int) -> bool:
        if p == len(pattern):
            return s == len(path)
        if pattern.startswith("**", p):
            q = p + 2 + (pattern[p + 2 : p + 3] == "/")
            if q == len(pattern):
                return True
            ends = [s] + [i + 1 for i in range(s, len(path)) if path[i] == "/"]
            return any(at(q, e) for e in ends)
        if pattern[p] == "*":
            return any(at(p + 1, e) for e in range(s, len(path) + 1) if "/" not in path[s:e])
        if s == len(path):
            return False
        if pattern[p] == "?":
            return path[s] != "/" and at(p + 1, s + 1)
        if pattern[p] == "[":
            close = pattern.index("]", p + 2)
            body, negate = pattern[p + 1 : close], pattern[p + 1] == "^"
            members = body[1:] if negate else body
            inside = path[s] in _expand(members)
            return inside != negate and at(close + 1, s + 1)
        if pattern[p] == "\\":
            return path[s] == pattern[p + 1] and at(p + 2, s + 1)
        return path[s] == pattern[p] and at(p + 1, s + 1)

    return at(0, 0)


def _expand(members: str) -> set[str]:
    chars, i = set(), 0
    while i < len(members):
        if i + 2 < len(members) and members[i + 1] == "-":
            chars |= {chr(c) for c in range(ord(members[i]), ord(members[i + 2]) + 1)}
            i += 3
        else:
            chars.add(members[i])
            i += 1
    return chars


@settings(max_examples=300, deadline=None)
@given(PATTERNS, PATHS)
def test_compiled_patterns_agree_with_a_reference_interpreter(pattern: str, path: str) -> None:
    cleaned = compile_pattern(pattern).text
    assert compile_pattern(pattern).matches(path) == reference_match(cleaned, path)


def valid_matcher(lines: list[str]) -> Matcher:
    """Drop the lines Docker rejects (a generated "!/" cleans to "!")."""
    kept = []
    for line in lines:
        try:
            compile_pattern(line)
        except BadPattern:
            continue
        kept.append(line)
    return Matcher(kept)


@settings(max_examples=300, deadline=None)
@given(LINES, st.lists(PATHS, min_size=1, max_size=8))
def test_a_skipped_directory_holds_nothing_docker_would_send(
    lines: list[str], paths: list[str]
) -> None:
    matcher = valid_matcher(lines)
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if matcher.dir_excluded("/".join(parts[:depth])):
                assert matcher.excluded(path), (path, "/".join(parts[:depth]))


def test_paths_are_judged_like_buildkits_walk_not_like_a_lone_path() -> None:
    # Found by hypothesis: moby's two entry points disagree. Walking, `!a` is skipped at `a`
    # (nothing matched there yet), so `a/a` stays excluded; judged alone, `!a` matches the
    # parent and re-includes it. BuildKit sends contexts by walking, so we follow the walk.
    matcher = Matcher(["a**a", "!a"])
    assert matcher.excluded("a/a")
    assert matcher.evaluate("a/a") == (False, (True, True))
