"""The ``openai`` provider passes astrid's provider conformance suite (fake Chat Completions)."""

from __future__ import annotations

from typing import ClassVar, Literal

from astrid.llm import LLMProviderV2
from astrid.plugins import PluginContext
from astrid.testing.provider_conformance import ProviderConformance, ProviderTarget

from astrid_openai import OpenAIOptions, create_provider


class TestOpenAIConformance(ProviderConformance):
    """The provider as a host builds it: options, the key from a 0600 file, the factory."""

    wire: ClassVar[Literal["openai", "anthropic"]] = "openai"

    def make_provider(self, target: ProviderTarget) -> LLMProviderV2:
        options = OpenAIOptions(
            model=target.model,
            base_url=target.base_url,
            api_key_file=str(target.api_key_file),
            max_retries=target.max_retries,
            timeout_s=target.timeout_s,
        )
        return create_provider(options, PluginContext(home=target.api_key_file.parent))

