"""The one rule for JSON values a store may hold (every backend applies it the same way).

A value is storable when it reads back equal from any backend and from the documented SQL: no
lone surrogate in any string or key (UTF-8 cannot carry one), no NaN or infinity (not JSON),
integers within 64 bits (SQLite ``INTEGER`` and JSON functions, PostgreSQL ``bigint``, the
original's ``i64``), string keys only, and only JSON types.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import SerializationError

MIN_JSON_INT = -(2**63)
MAX_JSON_INT = 2**63 - 1
"""The integers a stored JSON value may hold."""

_Found = tuple[list[str], str]
_SURROGATES = re.compile("[\ud800-\udfff]")


def _text_ok(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate(text: str) -> str:
    first = next((ch for ch in text if "\ud800" <= ch <= "\udfff"), "?")
    return f"a lone surrogate (U+{ord(first):04X})" if first != "?" else "text UTF-8 cannot hold"


def _key_part(key: str) -> str:
    return f".{key}" if key.isidentifier() and key.isascii() else f"[{key!a}]"


def _find(value: Any) -> _Found | None:
    """None when ``value`` is storable, else (reversed path parts, what is wrong)."""
    kind = type(value)
    if kind is str:
        return None if _text_ok(value) else ([], _surrogate(value))
    if value is None or kind is bool:
        return None
    if kind is int:
        if MIN_JSON_INT <= value <= MAX_JSON_INT:
            return None
        return [], "an integer outside the 64-bit range"
    if kind is float:
        return None if math.isfinite(value) else ([], f"{value!r}, which JSON cannot hold")
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    return [f"[{key!r}]"], "a key that is not a string"
                key = str.__str__(key)
            if not _text_ok(key):
                return [f"[{key!a}]"], f"{_surrogate(key)} in a key"
            found = _find(item)
            if found is not None:
                found[0].append(_key_part(key))
                return found
        return None
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            found = _find(item)
            if found is not None:
                found[0].append(f"[{index}]")
                return found
        return None
    # Subclasses of the JSON types (an IntEnum, a str subclass) encode as their base type.
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return _find(base(value)) if base is not bool else None
    if isinstance(value, dict):
        return _find(dict(value))
    if isinstance(value, list | tuple):
        return _find(list(value))
    return [], f"a {type(value).__name__}, which is not a JSON value"


def json_problem(value: Any) -> str | None:
    """Where and why ``value`` cannot be stored (``$.a[0]: a lone surrogate ...``), or None."""
    try:
        found = _find(value)
    except RecursionError:
        return "$: nested too deeply"
    if found is None:
        return None
    parts, why = found
    return "$" + "".join(reversed(parts)) + f": {why}"


def storable_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (what a UTF-8 decoder does)."""
    return text if _text_ok(text) else _SURROGATES.sub("\ufffd", text)


def check_storable(value: Any, where: str) -> None:
    """Raise ``SerializationError`` naming ``where`` and the place in ``value`` it cannot hold."""
    problem = json_problem(value)
    if problem is not None:
        raise SerializationError(f"{where} cannot be stored: {problem}")


__all__ = ["MAX_JSON_INT", "MIN_JSON_INT", "check_storable", "json_problem", "storable_text"]
