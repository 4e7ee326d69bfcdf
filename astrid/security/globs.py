"""Glob matching with the original's semantics (Rust ``globset`` with default options).

``*`` and ``?`` cross ``/``; ``**`` as a whole component is recursive; ``[...]``, ``[!...]``,
``{a,b}`` and backslash escapes are supported; matching is case-sensitive and covers the whole
string. A string with a ``..`` path component never matches (the traversal guard).
"""

from __future__ import annotations

import re
from functools import lru_cache

from astrid.errors import GlobSyntaxError as GlobSyntaxError

GLOB_METACHARACTERS = frozenset("*?[]{}\\,")


def has_traversal(value: str) -> bool:
    """True if some ``/``-separated component of ``value`` is exactly ``..``."""
    return ".." in value.split("/")


def escape_glob(literal: str) -> str:
    """Escape every glob metacharacter so ``literal`` matches only itself."""
    return "".join("\\" + ch if ch in GLOB_METACHARACTERS else ch for ch in literal)


def is_glob(pattern: str) -> bool:
    """True if the pattern contains an unescaped ``*``, ``?`` or ``[``."""
    escaped = False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "*?[":
            return True
    return False


def _parse_class(pattern: str, start: int) -> tuple[str, int]:
    """Translate the character class beginning at ``pattern[start] == '['``."""
    i = start + 1
    n = len(pattern)
    negate = False
    if i < n and pattern[i] in "!^":
        negate = True
        i += 1
    items: list[str] = []
    first = True
    while i < n:
        ch = pattern[i]
        if ch == "]" and not first:
            body = "".join(items)
            return ("[^" if negate else "[") + body + "]", i + 1
        first = False
        if ch == "\\" and i + 1 < n:
            ch = pattern[i + 1]
            i += 1
        if i + 2 < n and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            end = pattern[i + 2]
            if end == "\\" and i + 3 < n:
                end = pattern[i + 3]
                i += 1
            if ord(end) < ord(ch):
                raise GlobSyntaxError(f"invalid range {ch}-{end} in {pattern!r}")
            items.append(re.escape(ch) + "-" + re.escape(end))
            i += 3
            continue
        items.append(re.escape(ch))
        i += 1
    raise GlobSyntaxError(f"unclosed character class in {pattern!r}")


def _translate(pattern: str) -> str:
    out: list[str] = []
    i = 0
    n = len(pattern)
    depth = 0
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise GlobSyntaxError(f"dangling escape at the end of {pattern!r}")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif ch == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            stars = j - i
            at_start = i == 0 or pattern[i - 1] == "/"
            at_end = j == n or pattern[j] == "/"
            if stars >= 2 and at_start and at_end:
                if i == 0 and j < n:  # "**/rest": zero or more leading components
                    out.append("(?:.*/)?")
                    j += 1
                elif i > 0 and j == n:  # "prefix/**": everything below prefix/
                    out.append(".*")
                elif i > 0:  # "a/**/b": "/" or "/.../"
                    out.append("(?:.*/)?")
                    j += 1
                else:  # "**" alone
                    out.append(".*")
            else:
                out.append(".*")
            i = j
        elif ch == "?":
            out.append(".")
            i += 1
        elif ch == "[":
            translated, i = _parse_class(pattern, i)
            out.append(translated)
        elif ch == "{":
            if depth:
                raise GlobSyntaxError(f"nested alternate groups are not allowed in {pattern!r}")
            depth += 1
            out.append("(?:")
            i += 1
        elif ch == "}" and depth:
            depth -= 1
            out.append(")")
            i += 1
        elif ch == "," and depth:
            out.append("|")
            i += 1
        else:
            out.append(re.escape(ch))
            i += 1
    if depth:
        raise GlobSyntaxError(f"unclosed alternate group in {pattern!r}")
    return "".join(out)


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a glob to an anchored regex; raises ``GlobSyntaxError`` if it is invalid."""
    return re.compile(_translate(pattern), re.DOTALL)


def glob_match(pattern: str, value: str) -> bool:
    """Whole-string glob match; False for an invalid pattern or a ``..`` in ``value``."""
    if has_traversal(value):
        return False
    try:
        compiled = compile_glob(pattern)
    except GlobSyntaxError:
        return False
    return compiled.fullmatch(value) is not None
