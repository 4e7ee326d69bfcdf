"""The ``[mcp]`` table: ``[mcp.servers.<name>]`` per server, validated (extra keys refused)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from astrid.config import PathOption
from astrid.errors import ConfigError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["SERVER_NAME", "ApprovalMode", "McpOptions", "McpServerOptions"]

SERVER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]|_(?!_))*$")
"""A server name: letters, digits, ``-`` and single ``_`` (``__`` separates server and tool)."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

ApprovalMode = Literal["ask", "policy", "trusted"]
"""How a server's calls are approved (see docs/mcp.md): ``ask`` (default), ``policy``,
``trusted``."""


class McpServerOptions(BaseModel):
    """One ``[mcp.servers.<name>]`` table: a stdio server (``command``) or an HTTP one (``url``).

    ``env`` values are given to the server as they are (for secrets use ``env_from``, which
    copies a variable of astrid's environment); ``headers_from_env`` names, per HTTP header, the
    environment variable holding its value, so no secret is ever written in the TOML.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str | None = Field(default=None, min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    env_from: dict[str, str] = Field(default_factory=dict)
    cwd: PathOption | None = None
    url: str | None = Field(default=None, min_length=1)
    headers_from_env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=60.0, gt=0, le=86_400, allow_inf_nan=False)
    startup_timeout_s: float = Field(default=30.0, gt=0, le=3_600, allow_inf_nan=False)
    approval: ApprovalMode = "ask"
    tools: list[str] | None = None
    max_restarts: int = Field(default=3, ge=0, le=100)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("env", "env_from")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("env_from", "headers_from_env")
    @classmethod
    def _source_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key, source in value.items():
            if not _ENV_NAME.match(source):
                raise ValueError(
                    f"{key!r}: {source!r} is not an environment variable name (the value "
                    "names the variable that holds it, never the value itself)"
                )
        return value

    @field_validator("headers_from_env")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerOptions:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' (stdio) or 'url' (streamable HTTP)")
        if self.url is not None:
            stdio_only = [k for k in ("args", "env", "env_from", "cwd") if getattr(self, k)]
            if stdio_only:
                raise ValueError(f"{', '.join(stdio_only)} apply to a stdio server ('command') "
                                 "only, not to 'url'")
        if self.command is not None and self.headers_from_env:
            raise ValueError("headers_from_env applies to an HTTP server ('url') only")
        return self

    def transport(self) -> str:
        """``stdio`` or ``http``."""
        return "stdio" if self.command is not None else "http"

    def resolved_env(self) -> dict[str, str]:
        """``env`` plus the ``env_from`` values read from astrid's environment now."""
        values = dict(self.env)
        for name, source in self.env_from.items():
            value = os.environ.get(source)
            if value is None:
                raise ConfigError(f"environment variable {source} (env_from.{name}) is not set")
            values[name] = value
        return values

    def resolved_headers(self) -> dict[str, str]:
        """The ``headers_from_env`` values read from astrid's environment now."""
        headers: dict[str, str] = {}
        for name, source in self.headers_from_env.items():
            value = os.environ.get(source)
            if value is None or not value.strip():
                state = "is not set" if value is None else "is empty"
                raise ConfigError(
                    f"environment variable {source} (headers_from_env.{name}) {state}"
                )
            headers[name] = value.strip()
        return headers

    def resolved_cwd(self, home: Path) -> str | None:
        """``cwd`` with ``~`` expanded, a relative one under the astrid home."""
        if self.cwd is None:
            return None
        return str(Path(home).expanduser() / Path(self.cwd).expanduser())


class McpOptions(BaseModel):
    """The ``[mcp]`` table: ``[mcp.servers.<name>]`` sub-tables, one per server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: dict[str, McpServerOptions] = Field(default_factory=dict)

    @field_validator("servers")
    @classmethod
    def _server_names(cls, value: dict[str, McpServerOptions]) -> dict[str, McpServerOptions]:
        for name in value:
            if not SERVER_NAME.match(name) or len(name) > 32:
                raise ValueError(
                    f"server name {name!r}: use at most 32 letters, digits, '-' and single '_' "
                    "(the model sees tools as <server>__<tool>)"
                )
        return value
