"""Built-in token estimators: ``content`` (default, by real size) and ``original`` (Rust rule)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..plugins import NoOptions
from ..tokens import ContentEstimator, OriginalEstimator


@hookimpl
def register_token_estimators(register: Any) -> None:
    """Register ``content`` and ``original``."""
    register(
        "content",
        lambda options, context: ContentEstimator(),
        NoOptions,
        "Every content kind by its real size (about 4 UTF-8 bytes a token).",
    )
    register(
        "original",
        lambda options, context: OriginalEstimator(),
        NoOptions,
        "The Rust astrid rule: text bytes // 4, any other content a flat 100.",
    )
