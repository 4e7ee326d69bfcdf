"""astrid-openai: an ``openai`` LLM provider for astrid (Chat Completions, streamed).

Installed, it is found through the entry point ``openai`` in the group ``astrid``. Select it::

    [llm]
    provider = "openai"

    [llm.options]
    model = "gpt-4.1-mini"
    # base_url = "http://127.0.0.1:11434/v1"   # any OpenAI-compatible server
    # api_key_env = "OPENAI_API_KEY"           # or: api_key_file = "secrets/openai.key"

The key is read when the provider is created (``open_runtime``), never from the TOML, and held
only inside the provider. The ``openai`` SDK is imported only then. See ``docs/openai.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from astrid import hookimpl
from astrid.config import PathOption
from astrid.errors import AuthenticationFailed
from astrid.plugins import PluginContext, version_attribute
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

if TYPE_CHECKING:
    from .provider import OpenAIProvider

    __version__: str
else:  # from the package metadata, on first access
    __getattr__ = version_attribute(__name__, "astrid-openai")

PROVIDER_NAME = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIOptions(BaseModel):
    """Options of the ``openai`` provider (``[llm.options]``).

    ``model`` is the default model (a session's own model wins). ``base_url`` points at any
    OpenAI-compatible server (default OpenAI's). The key comes from the environment variable
    ``api_key_env`` or, when given, the file ``api_key_file`` (relative paths are under the
    astrid home, like the other path options). ``timeout_s`` bounds each network operation
    (each read of the stream; connecting at most 10 s); ``max_retries`` is the SDK's retry count for
    connection errors, 408, 409, 429 and 5xx. ``max_output_tokens`` and ``temperature`` are
    defaults a request's settings override; ``max_tokens_field`` names the body field the limit
    goes in (``max_tokens`` for servers that predate ``max_completion_tokens``).
    ``extra_headers`` are sent with every request (not ``Authorization``: that is the key's).
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    base_url: str | None = Field(default=None, min_length=1)
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1)
    api_key_file: PathOption | None = None
    timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    max_retries: int = Field(default=2, ge=0, le=20)
    max_output_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    extra_headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("extra_headers")
    @classmethod
    def _no_authorization(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name.strip():
                raise ValueError("a header name must not be empty")
            if name.strip().lower() == "authorization":
                raise ValueError(
                    "'Authorization' is set from the API key (api_key_env / api_key_file); "
                    "keep the key out of the configuration file"
                )
        return value


def key_file_path(api_key_file: str, home: Path) -> Path:
    """Where ``api_key_file`` points: ``~`` expanded, a relative path under the astrid home."""
    return Path(home).expanduser() / Path(api_key_file).expanduser()


def read_api_key(options: OpenAIOptions, home: Path) -> SecretStr:
    """The API key from ``api_key_file`` (when given) or ``api_key_env``.

    A missing or empty key is ``AuthenticationFailed`` naming the variable or the file, raised
    when the provider is created, so a host learns it at start-up and not at the first turn.
    """
    if options.api_key_file is not None:
        path = key_file_path(options.api_key_file, home)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            )
            raise AuthenticationFailed(
                f"{PROVIDER_NAME}: cannot read the API key file {path} "
                f"(llm.options.api_key_file): {reason}",
                provider=PROVIDER_NAME,
            ) from None
        value = text.strip()
        if not value:
            raise AuthenticationFailed(
                f"{PROVIDER_NAME}: the API key file {path} (llm.options.api_key_file) is empty",
                provider=PROVIDER_NAME,
            )
        return SecretStr(value)
    name = options.api_key_env
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        state = "is not set" if raw is None else "is empty"
        raise AuthenticationFailed(
            f"{PROVIDER_NAME}: no API key: the environment variable {name} "
            f"(llm.options.api_key_env) {state}",
            provider=PROVIDER_NAME,
        )
    return SecretStr(raw.strip())


def create_provider(options: OpenAIOptions, context: PluginContext) -> OpenAIProvider:
    """The provider the options describe; reads the key now, opens no connection."""
    from .provider import OpenAIProvider

    return OpenAIProvider(options, api_key=read_api_key(options, context.home))


@hookimpl
def register_llm_providers(register: Any) -> None:
    """Register ``openai``."""
    register(
        PROVIDER_NAME,
        create_provider,
        OpenAIOptions,
        "OpenAI Chat Completions, streamed; any OpenAI-compatible server through base_url.",
    )


__all__ = [
    "DEFAULT_BASE_URL",
    "PROVIDER_NAME",
    "OpenAIOptions",
    "__version__",
    "create_provider",
    "key_file_path",
    "read_api_key",
]
