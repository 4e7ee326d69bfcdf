"""Built-in git capture: ``fs`` (default, reads ``.git``), ``subprocess`` and ``none``."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..plugins import NoOptions


@hookimpl
def register_git_capture(register: Any) -> None:
    """Register ``fs``, ``subprocess`` and ``none``."""
    from .. import gitstate

    register(
        "fs",
        lambda options, context: gitstate.capture_fs,
        NoOptions,
        "Reads HEAD, refs and packed-refs from .git directly; spawns no process.",
    )
    register(
        "subprocess",
        lambda options, context: gitstate.capture_subprocess,
        NoOptions,
        "Runs `git rev-parse` twice per save, as the original did.",
    )
    register(
        "none",
        lambda options, context: gitstate.capture_none,
        NoOptions,
        "Never captures git state.",
    )
