"""astrid-anthropic passes the provider conformance suite (``astrid.testing``), created the way
a host creates it: through the registered factory, the key from ``api_key_env`` or
``api_key_file``, against the fake Anthropic server."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from astrid.llm import LLMProviderV2
from astrid.plugins import PluginContext, get_implementation
from astrid.testing.provider_conformance import ProviderConformance, ProviderTarget

from astrid_anthropic.provider import AnthropicProvider


class TestAnthropicConformance(ProviderConformance):
    wire: ClassVar[Literal["openai", "anthropic"]] = "anthropic"
    _made = 0

    def make_provider(self, target: ProviderTarget) -> LLMProviderV2:
        # alternate the two key sources, so both are exercised by the whole suite
        type(self)._made += 1
        key: dict[str, str] = (
            {"api_key_env": target.api_key_env}
            if self._made % 2
            else {"api_key_file": str(target.api_key_file)}
        )
        provider = get_implementation("llm_provider", "anthropic").create(
            {
                "model": target.model,
                "base_url": target.base_url,
                "max_retries": target.max_retries,
                "timeout_s": target.timeout_s,
                **key,
            },
            PluginContext(home=Path(target.api_key_file).parent),
        )
        assert isinstance(provider, AnthropicProvider)
        return provider
