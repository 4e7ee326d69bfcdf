"""Built-in summarizers: ``extractive`` (offline, the default) and ``llm`` (asks the provider)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..context import ExtractiveSummarizer, LLMSummarizer
from ..hookspecs import hookimpl
from ..plugins import NoOptions


class ExtractiveOptions(BaseModel):
    """Options of the ``extractive`` summarizer."""

    model_config = ConfigDict(extra="forbid")

    max_chars: int = Field(default=4000, ge=200)
    """The longest summary, in characters."""


@hookimpl
def register_summarizers(register: Any) -> None:
    """Register ``extractive`` and ``llm``."""
    register(
        "extractive",
        lambda options, context: ExtractiveSummarizer(max_chars=options.max_chars),
        ExtractiveOptions,
        "Offline and deterministic: user requests, tool calls, tool errors and the last answer.",
    )
    register(
        "llm",
        lambda options, context: LLMSummarizer(),
        NoOptions,
        "Asks the configured LLM provider, with the original astrid's summarization prompt.",
    )


__all__ = ["ExtractiveOptions"]
