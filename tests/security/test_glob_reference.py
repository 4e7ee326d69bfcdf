"""Glob matching against an independent reference matcher, on generated patterns and strings.

``astrid.security.globs`` translates a glob to a regular expression. The reference below parses
the same globset grammar into tokens and matches them by backtracking over the string, with no
regular expressions, so a translation mistake (escaping, grouping, ``**`` handling, classes)
shows up as a disagreement.

The grammar (Rust ``globset`` with default options, as documented in ``globs.py``):

* ``?`` is any one character and ``*`` any sequence, both crossing ``/``;
* ``**`` that is a whole path component is recursive: ``**/x`` is ``x`` below any number of
  leading components (none included), ``a/**/b`` is ``a/b`` or ``a/.../b``, ``a/**`` is
  everything below ``a/``; anywhere else ``**`` is just ``*``;
* ``[...]`` a class (``!`` or ``^`` negates, ``a-z`` ranges, a leading ``]`` is literal,
  ``\\`` escapes), ``{a,b}`` alternatives (not nested), ``\\x`` the literal ``x``;
* matching is case-sensitive, over the whole string, and a string with a ``..`` component
  never matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from astrid.security.globs import escape_glob, glob_match, has_traversal


class RefSyntaxError(Exception):
    """The reference cannot parse the pattern (the implementation must refuse it too)."""


@dataclass(frozen=True)
class Lit:
    char: str


@dataclass(frozen=True)
class One:
    pass


@dataclass(frozen=True)
class Star:
    pass


@dataclass(frozen=True)
class DirPrefix:
    """Empty, or any string that ends with ``/`` (from ``**/``)."""


@dataclass(frozen=True)
class Class:
    negate: bool
    ranges: tuple[tuple[str, str], ...]

    def accepts(self, char: str) -> bool:
        inside = any(lo <= char <= hi for lo, hi in self.ranges)
        return inside != self.negate


Token = Lit | One | Star | DirPrefix | Class
Alternatives = list[list[Token]]


def _parse_class(pattern: str, start: int) -> tuple[Class, int]:
    i, n = start + 1, len(pattern)
    negate = i < n and pattern[i] in "!^"
    if negate:
        i += 1
    ranges: list[tuple[str, str]] = []
    first = True
    while i < n:
        char = pattern[i]
        if char == "]" and not first:
            return Class(negate, tuple(ranges)), i + 1
        first = False
        if char == "\\" and i + 1 < n:
            i += 1
            char = pattern[i]
        if i + 2 < n and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            end = pattern[i + 2]
            if end == "\\" and i + 3 < n:
                i += 1
                end = pattern[i + 2]
            if end < char:
                raise RefSyntaxError("reversed range")
            ranges.append((char, end))
            i += 3
            continue
        ranges.append((char, char))
        i += 1
    raise RefSyntaxError("unclosed class")


def parse(pattern: str) -> list[list[Token]]:
    """Every brace-free token sequence the pattern stands for."""
    sequences: list[list[Token]] = [[]]
    group: Alternatives | None = None

    def emit(token: Token) -> None:
        if group is not None:
            group[-1].append(token)
        else:
            for sequence in sequences:
                sequence.append(token)

    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                raise RefSyntaxError("dangling escape")
            emit(Lit(pattern[i + 1]))
            i += 2
        elif char == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            whole = (i == 0 or pattern[i - 1] == "/") and (j == n or pattern[j] == "/")
            if j - i >= 2 and whole and j < n:  # "**/" at the start or "/**/" inside
                emit(DirPrefix())
                j += 1
            else:  # "**" at the end, "**" alone, or not a whole component: a plain star
                emit(Star())
            i = j
        elif char == "?":
            emit(One())
            i += 1
        elif char == "[":
            klass, i = _parse_class(pattern, i)
            emit(klass)
        elif char == "{":
            if group is not None:
                raise RefSyntaxError("nested alternatives")
            group = [[]]
            i += 1
        elif char == "}" and group is not None:
            sequences = [s + alt for s in sequences for alt in group]
            group = None
            i += 1
        elif char == "," and group is not None:
            group.append([])
            i += 1
        else:
            emit(Lit(char))
            i += 1
    if group is not None:
        raise RefSyntaxError("unclosed alternatives")
    return sequences


def match_tokens(tokens: list[Token], value: str) -> bool:
    """Backtracking match of the whole ``value``."""
    frozen = tuple(tokens)

    @cache
    def at(t: int, s: int) -> bool:
        if t == len(frozen):
            return s == len(value)
        token = frozen[t]
        if isinstance(token, Lit):
            return s < len(value) and value[s] == token.char and at(t + 1, s + 1)
        if isinstance(token, One):
            return s < len(value) and at(t + 1, s + 1)
        if isinstance(token, Class):
            return s < len(value) and token.accepts(value[s]) and at(t + 1, s + 1)
        if isinstance(token, Star):
            return any(at(t + 1, k) for k in range(s, len(value) + 1))
        # DirPrefix: nothing, or up to and including some later "/"
        return at(t + 1, s) or any(
            value[k - 1] == "/" and at(t + 1, k) for k in range(s + 1, len(value) + 1)
        )

    return at(0, 0)


def reference_match(pattern: str, value: str) -> bool:
    if ".." in value.split("/"):
        return False
    try:
        sequences = parse(pattern)
    except RefSyntaxError:
        return False
    return any(match_tokens(tokens, value) for tokens in sequences)


# -- the reference agrees with hand-checked cases ------------------------------------------------

KNOWN = [
    ("*.rs", "src/main.rs", True),
    ("**/*.rs", "main.rs", True),
    ("**/*.rs", "a/b/main.rs", True),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "ab", False),
    ("a/**", "a/", True),
    ("a/**", "a", False),
    ("a**", "a/b/c", True),
    ("[!a]", "/", True),
    ("[]a]", "]", True),
    ("[a-]", "-", True),
    ("{a,b}c", "bc", True),
    ("{a,}", "", True),
    ("{a,{b}}", "a", False),
    ("\\*", "*", True),
    ("\\*", "x", False),
    ("a?c", "a/c", True),
    ("[z-a]", "a", False),
    ("[abc", "a", False),
    ("*", "a/../b", False),
    ("A", "a", False),
]


def test_the_reference_agrees_with_hand_checked_cases() -> None:
    for pattern, value, expected in KNOWN:
        assert reference_match(pattern, value) is expected, (pattern, value)
        assert glob_match(pattern, value) is expected, (pattern, value)


# -- generated patterns and strings --------------------------------------------------------------

ALPHABET = "ab/."
_piece = st.one_of(
    st.sampled_from(list(ALPHABET)),
    st.sampled_from(["*", "**", "?", "/**/", "**/", "/**", "\\*", "\\a", "\\[", ","]),
    st.sampled_from(["[ab]", "[!a]", "[^/]", "[a-c]", "[]a]", "[a-]", "[.-/]", "[\\]]", "[!]]"]),
    st.sampled_from(["{a,b}", "{,a}", "{a*,b?}", "{a/,**/b}", "{[ab],.}", "{a}"]),
)
structured_patterns = st.lists(_piece, max_size=6).map("".join)
raw_patterns = st.text(alphabet=ALPHABET + "*?[]!^-{},\\", max_size=10)
values = st.text(alphabet=ALPHABET, max_size=8) | st.text(
    alphabet=ALPHABET + "*?[]{},\\-\n", max_size=8
)


@st.composite
def instances(draw: st.DrawFn, pattern: str) -> str:
    """A string the reference says ``pattern`` matches, built from its tokens (or "")."""
    try:
        sequences = parse(pattern)
    except RefSyntaxError:
        return ""
    tokens = draw(st.sampled_from(sequences))
    out: list[str] = []
    for token in tokens:
        if isinstance(token, Lit):
            out.append(token.char)
        elif isinstance(token, One):
            out.append(draw(st.sampled_from(list(ALPHABET))))
        elif isinstance(token, Class):
            choices = [c for c in ALPHABET + "]-^!*" if token.accepts(c)]
            if not choices:
                return ""
            out.append(draw(st.sampled_from(choices)))
        elif isinstance(token, Star):
            out.append(draw(st.text(alphabet=ALPHABET, max_size=3)))
        else:
            out.append(draw(st.sampled_from(["", "a/", "a/b/", "./"])))
    return "".join(out)


@settings(max_examples=600, deadline=None)
@given(st.data(), structured_patterns | raw_patterns)
def test_glob_match_agrees_with_the_reference(data: st.DataObject, pattern: str) -> None:
    value = data.draw(values | instances(pattern))
    assert glob_match(pattern, value) == reference_match(pattern, value), (pattern, value)


@settings(max_examples=300, deadline=None)
@given(structured_patterns, st.data())
def test_generated_instances_match(pattern: str, data: st.DataObject) -> None:
    value = data.draw(instances(pattern))
    if reference_match(pattern, value):
        assert glob_match(pattern, value), (pattern, value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.text(max_size=12))
def test_an_escaped_literal_matches_only_itself(literal: str, other: str) -> None:
    pattern = escape_glob(literal)
    assert glob_match(pattern, literal) == (not has_traversal(literal))
    assert glob_match(pattern, other) == (other == literal and not has_traversal(other))
    assert reference_match(pattern, literal) == glob_match(pattern, literal)
