"""Configuration: one TOML file, validated with pydantic; no file needed for the defaults.

Found in this order: an explicit path, ``$ASTRID_CONFIG``, ``./astrid.toml``,
``<home>/config.toml``. Home is ``$ASTRID_HOME`` or ``~/.astrid`` (absolute, no ``..``).
Sections name an implementation registered by a plugin and its options; the plugin's own options
model validates them. Errors name the file, the key and the valid choices.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from .errors import ConfigError, PluginError
from .fsutil import atomic_write, make_private_dirs

CONFIG_ENV = "ASTRID_CONFIG"
HOME_ENV = "ASTRID_HOME"
LOCAL_CONFIG = "astrid.toml"


def astrid_home() -> Path:
    """``$ASTRID_HOME`` or ``$HOME/.astrid``; must be absolute and free of ``..``."""
    raw = os.environ.get(HOME_ENV)
    source = HOME_ENV
    if raw is None:
        home_env = os.environ.get("HOME")
        if home_env is None:
            home_env = str(Path.home())
        source = "HOME"
        if not home_env:
            raise ConfigError("HOME is empty; set ASTRID_HOME to an absolute path")
        raw_path = Path(home_env)
        _check_home(raw_path, source)
        return raw_path / ".astrid"
    if not raw:
        raise ConfigError(f"{HOME_ENV} is set but empty; unset it or give an absolute path")
    path = Path(raw)
    _check_home(path, source)
    return path


def _check_home(path: Path, source: str) -> None:
    if not path.is_absolute():
        raise ConfigError(f"{source} must be an absolute path, got {str(path)!r}")
    if ".." in path.parts:
        raise ConfigError(f"{source} must not contain '..', got {str(path)!r}")


def check_path_option(value: Any) -> Any:
    """Refuse an empty (or blank) path or one holding NUL before it is made a ``Path``.

    ``Path("")`` is the current directory and NUL fails only when the path is first used, so
    both are caught when the configuration is validated (``config validate``), naming the key.
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(text, str):
        if not text.strip():
            raise PydanticCustomError(
                "path_empty", "a path must not be empty (leave the key out for the default)"
            )
        if "\x00" in text:
            raise PydanticCustomError("path_nul", "a path must not contain a NUL character")
    return text  # a pathlib.Path given in code is taken as its text


class _UnderHome:
    """The mark of a ``PathOption``: a relative path is taken under the astrid home."""


UNDER_HOME = _UnderHome()

PathOption = Annotated[str, BeforeValidator(check_path_option), UNDER_HOME]
"""The type of every path in the configuration, plugins' options included: one check, and one
rule, a relative path is under the astrid home (``resolve_path_options``)."""


def resolve_home_path(value: str | os.PathLike[str], home: Path) -> Path:
    """The path a path option names: ``~`` expanded, a relative path under ``home``."""
    return Path(home) / Path(value).expanduser()


def _is_path_option(annotation: Any, metadata: Sequence[Any] = ()) -> bool:
    if any(item is UNDER_HOME for item in metadata):
        return True
    if get_origin(annotation) is Annotated:
        return any(item is UNDER_HOME for item in annotation.__metadata__)
    return any(_is_path_option(arg) for arg in get_args(annotation))


_M = TypeVar("_M", bound=BaseModel)


def resolve_path_options(options: _M, home: Path) -> _M:
    """``options`` with every ``PathOption`` that is set made absolute by the one rule.

    Applied where options reach a factory (``Implementation.create``) and by ``config show``,
    so no plugin resolves a path itself and every backend agrees on where a relative one is.
    """
    updates = {
        name: str(resolve_home_path(value, home))
        for name, field in type(options).model_fields.items()
        if _is_path_option(field.annotation, field.metadata)
        and isinstance(value := getattr(options, name), str | os.PathLike)
    }
    return options.model_copy(update=updates) if updates else options


def _allows_bool(annotation: Any) -> bool:
    """True if a field of this type may hold a boolean (TOML true/false)."""
    if annotation is bool or annotation is Any:
        return True
    return any(_allows_bool(arg) for arg in get_args(annotation))


def _bool_misuse(model: type[BaseModel], data: Any) -> str | None:
    """The first key of ``data`` holding a boolean where ``model`` wants something else."""
    if not isinstance(data, dict):
        return None
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is not None and isinstance(value, bool) and not _allows_bool(field.annotation):
            return str(key)
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1; in a config file that is always a mistake.
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and not _allows_bool(field.annotation):
            raise ValueError("expected a number or a string, not a boolean")
        return value


class StorageSection(_Section):
    """``[storage]``: the session storage backend and its options."""

    backend: str = "sqlite"
    options: dict[str, Any] = Field(default_factory=dict)


class TokensSection(_Section):
    """``[tokens]``: the token estimator."""

    estimator: str = "content"
    options: dict[str, Any] = Field(default_factory=dict)


class GitSection(_Section):
    """``[git]``: how a workspace's git state is captured on save."""

    capture: str = "fs"
    options: dict[str, Any] = Field(default_factory=dict)


class CapabilitiesSection(_Section):
    """``[capabilities]``: where persistent capability tokens and revocations live."""

    store: str = "sqlite"
    options: dict[str, Any] = Field(default_factory=dict)


class BudgetSection(_Section):
    """``[budget]``: limits for new sessions and for each workspace (USD)."""

    session_max_usd: float = Field(default=100.0, ge=0, allow_inf_nan=False)
    per_action_max_usd: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    warn_at_percent: int = Field(default=80, ge=0, le=100)
    workspace_max_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class LlmSection(_Section):
    """``[llm]``: the LLM provider the runtime talks to."""

    provider: str = "scripted"
    options: dict[str, Any] = Field(default_factory=dict)


class SummarizerSection(_Section):
    """``[summarizer]``: how old turns are summarised when the context fills up."""

    name: str = "extractive"
    options: dict[str, Any] = Field(default_factory=dict)


class RuntimeSection(_Section):
    """``[runtime]``: the turn loop, context window and sub-agent limits."""

    max_context_tokens: int = Field(default=100_000, ge=0)
    summarization_threshold: float = Field(default=0.85, ge=0.5, le=0.95, allow_inf_nan=False)
    keep_recent_count: int = Field(default=10, ge=0)
    auto_summarize: bool = True
    system_prompt: str = ""
    max_iterations: int = Field(default=25, ge=1)
    max_concurrent_subagents: int = Field(default=4, ge=0)
    max_subagent_depth: int = Field(default=3, ge=0)
    default_subagent_timeout: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    estimated_output_tokens: int = Field(default=1024, ge=0)
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    builtin_prices: bool = True
    workspace_root: PathOption | None = None


class ToolsSection(_Section):
    """``[tools]``: the registered tools offered to the model, their options, and toolsets."""

    enabled: list[str] | None = None
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    toolsets: list[str] = Field(default_factory=list)


class PricingEntry(_Section):
    """``[pricing."<model>"]``: USD per million tokens of one model (``[pricing.default]``:
    of every model neither listed nor known to the built-in price source). A cache rate left
    out is the input rate; a reasoning rate left out is the output rate."""

    input_per_million: float = Field(default=3.0, ge=0, allow_inf_nan=False)
    output_per_million: float = Field(default=15.0, ge=0, allow_inf_nan=False)
    cache_read_per_million: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cache_write_per_million: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    reasoning_per_million: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class AstridConfig(_Section):
    """The whole configuration; every section has defaults."""

    storage: StorageSection = Field(default_factory=StorageSection)
    tokens: TokensSection = Field(default_factory=TokensSection)
    git: GitSection = Field(default_factory=GitSection)
    capabilities: CapabilitiesSection = Field(default_factory=CapabilitiesSection)
    budget: BudgetSection = Field(default_factory=BudgetSection)
    llm: LlmSection = Field(default_factory=LlmSection)
    summarizer: SummarizerSection = Field(default_factory=SummarizerSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    tools: ToolsSection = Field(default_factory=ToolsSection)
    pricing: dict[str, PricingEntry] = Field(default_factory=dict)
    _toolset_tables: dict[str, dict[str, Any]] = PrivateAttr(default_factory=dict)

    @property
    def toolset_tables(self) -> dict[str, dict[str, Any]]:
        """The top-level tables naming a registered toolset (``[mcp]``): raw options by name."""
        return self._toolset_tables

    def toolsets_to_open(self) -> list[str]:
        """The toolsets the runtime opens: those with a table, then those in ``[tools]
        toolsets``, each once, in that order."""
        return list(dict.fromkeys([*self._toolset_tables, *self.tools.toolsets]))

    @field_validator(
        "storage",
        "tokens",
        "git",
        "capabilities",
        "budget",
        "llm",
        "summarizer",
        "runtime",
        "tools",
        mode="before",
    )
    @classmethod
    def _table(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict | BaseModel):
            raise ValueError("must be a table")
        return value


# Each pluggable section: (section, key naming the implementation, registry kind).
PLUGGABLE: tuple[tuple[str, str, str], ...] = (
    ("storage", "backend", "storage"),
    ("tokens", "estimator", "token_estimator"),
    ("git", "capture", "git_capture"),
    ("capabilities", "store", "capability_store"),
    ("llm", "provider", "llm_provider"),
    ("summarizer", "name", "summarizer"),
)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration, the file it came from (None: defaults) and the home."""

    config: AstridConfig
    source: Path | None
    home: Path

    @property
    def where(self) -> str:
        """How to name the configuration in messages."""
        return str(self.source) if self.source is not None else "<defaults>"


def find_config_file(explicit: str | Path | None = None) -> Path | None:
    """The config file to use, by the discovery order; None when there is none."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (from ${CONFIG_ENV})")
        return path
    local = Path.cwd() / LOCAL_CONFIG
    if local.is_file():
        return local
    home_file = astrid_home() / "config.toml"
    if home_file.is_file():
        return home_file
    return None


def _format_errors(
    where: str, exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    parts = []
    for err in exc.errors()[:5]:
        head = prefix.split(".") if prefix else []
        loc = ".".join(str(p) for p in [*head, *err["loc"]] if p != "")
        if err["type"] == "extra_forbidden":
            parent = loc.rpartition(".")[0]
            allowed = sorted(model.model_fields) if model is not None else _allowed_keys(parent)
            hint = f"; valid keys: {', '.join(allowed)}" if allowed else ""
            parts.append(f"unknown key {loc!r}{hint}")
        else:
            parts.append(f"key {loc!r}: {err['msg']}")
    return f"{where}: " + "; ".join(parts)


def _allowed_keys(section: str) -> list[str]:
    if not section:  # the top level: the core sections and every registered toolset
        return sorted([*AstridConfig.model_fields, *_toolset_names()])
    model: type[BaseModel] = AstridConfig
    for part in [p for p in section.split(".") if p]:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        if not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def _toolset_names() -> list[str]:
    from .plugins import registry

    try:
        return sorted(registry("toolset"))
    except PluginError:
        return []


def _split_toolset_tables(
    data: dict[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``data`` without its top-level tables that name a registered toolset, and those tables."""
    names = set(_toolset_names()) - set(AstridConfig.model_fields)
    core = {key: value for key, value in data.items() if key not in names}
    tables: dict[str, dict[str, Any]] = {}
    for key in [key for key in data if key in names]:  # in the file's order
        if not isinstance(data[key], dict):
            raise ConfigError(f"{where}: key {key!r}: must be a table (options of toolset {key!r})")
        tables[key] = data[key]
    return core, tables


def parse_config(data: dict[str, Any], *, where: str = "<config>") -> AstridConfig:
    """Validate a parsed TOML document (sections and, via plugins, their options)."""
    core, tables = _split_toolset_tables(data, where)
    try:
        config = AstridConfig.model_validate(core)
    except ValidationError as exc:
        raise ConfigError(_format_errors(where, exc)) from None
    config._toolset_tables = tables
    validate_plugin_options(config, where=where)
    validate_tools(config, where=where)
    return config


def _check_options(
    impl: Any, options: dict[str, Any], prefix: str, where: str, what: str
) -> BaseModel:
    """``options`` validated by ``impl``'s model; a ``ConfigError`` naming ``prefix`` if not."""
    misuse = _bool_misuse(impl.options, options)
    if misuse is not None:
        raise ConfigError(
            f"{where}: key '{prefix}.{misuse}': expected a number or a string, "
            f"not a boolean (options of {what})"
        )
    try:
        model: BaseModel = impl.options.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(
            _format_errors(where, exc, prefix=prefix, model=impl.options) + f" (options of {what})"
        ) from None
    return model


def validate_tools(config: AstridConfig, *, where: str = "<config>") -> None:
    """Check ``[tools]`` (every name is a registered tool or toolset, options by each model)
    and the options table of every toolset to open."""
    from .plugins import registry

    def require(registered: Any, names: list[str], key: str) -> None:
        try:  # a name two plugins claim, or one a failed plugin may have provided
            registered.require(names)
        except PluginError as exc:
            raise ConfigError(f"{where}: key {key!r}: {exc}") from None

    tools = registry("tool")
    known = ", ".join(sorted(tools)) or "none installed"
    section = config.tools
    require(tools, section.enabled or [], "tools.enabled")
    require(tools, list(section.options), "tools.options")
    for name in section.enabled or []:
        if name not in tools:
            raise ConfigError(
                f"{where}: key 'tools.enabled': unknown tool {name!r}; known tools: {known}"
            )
    if section.enabled is not None and len(set(section.enabled)) != len(section.enabled):
        raise ConfigError(f"{where}: key 'tools.enabled': a tool is listed twice")
    for name, options in section.options.items():
        if name not in tools:
            raise ConfigError(
                f"{where}: key 'tools.options.{name}': unknown tool {name!r}; known tools: {known}"
            )
        _check_options(tools[name], options, f"tools.options.{name}", where, f"tool {name!r}")
    toolsets = registry("toolset")
    require(toolsets, section.toolsets, "tools.toolsets")
    for name in section.toolsets:
        if name not in toolsets:
            raise ConfigError(
                f"{where}: key 'tools.toolsets': unknown toolset {name!r}; known toolsets: "
                + (", ".join(sorted(toolsets)) or "none installed")
            )
    for name in config.toolsets_to_open():
        _check_options(
            toolsets[name], config.toolset_tables.get(name, {}), name, where, f"toolset {name!r}"
        )


def validate_plugin_options(config: AstridConfig, *, where: str = "<config>") -> None:
    """Check every implementation name against the registries and its options model."""
    from .plugins import get_implementation

    for section, key, kind in PLUGGABLE:
        sect = getattr(config, section)
        name = getattr(sect, key)
        try:
            impl = get_implementation(kind, name, where=f"{where}: key '{section}.{key}'")
        except PluginError as exc:
            raise ConfigError(str(exc)) from None
        prefix = f"{section}.options"
        checked = _check_options(impl, sect.options, prefix, where, f"{kind} {name!r}")
        check_nested_options(checked, prefix, where)


def check_nested_options(options: BaseModel, prefix: str, where: str) -> None:
    """Check the options of the implementations an options model names for itself (its
    ``nested_implementations()``: ``(kind, name key, name, options key, options)`` tuples, e.g.
    the ``encrypted`` backend's ``inner``), so a mistake there is named like any other key
    and no value is echoed."""
    from .plugins import get_implementation

    nested = getattr(options, "nested_implementations", None)
    for kind, name_key, name, options_key, values in nested() if callable(nested) else ():
        try:
            impl = get_implementation(kind, name, where=f"{where}: key '{prefix}.{name_key}'")
        except PluginError as exc:
            raise ConfigError(str(exc)) from None
        _check_options(impl, values, f"{prefix}.{options_key}", where, f"{kind} {name!r}")


def load_config(path: str | Path | None = None) -> LoadedConfig:
    """Find, read and validate the configuration (defaults when no file exists)."""
    home = astrid_home()
    source = find_config_file(path)
    if source is None:
        config = parse_config({}, where="<defaults>")
        return LoadedConfig(config, None, home)
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, or int() of 4300+ digits
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    return LoadedConfig(parse_config(data, where=str(source)), source, home)


DEFAULT_CONFIG_TEXT = """\
# astrid configuration. Every key is optional; these are the defaults.
# Found in this order: --config PATH, $ASTRID_CONFIG, ./astrid.toml, <home>/config.toml,
# where home is $ASTRID_HOME or ~/.astrid.

[storage]
# Where sessions live: "sqlite" (default, <home>/astrid.db), "file" (the original's
# <home>/sessions/<uuid>.json layout) or "memory" (nothing persisted), or a plugin's backend.
backend = "sqlite"

[storage.options]
# Options of the chosen backend, e.g. for sqlite: path = "/var/lib/astrid/astrid.db"

[tokens]
# How message tokens are estimated: "content" (by real size) or "original" (the Rust rule).
estimator = "content"

[git]
# How the workspace's branch and commit are read on save: "fs" (reads .git, no process),
# "subprocess" (runs git twice, as the original did) or "none".
capture = "fs"

[capabilities]
# Where persistent capability tokens and revocations live: "sqlite", "file" or "memory".
store = "sqlite"

[budget]
# Limits in USD for new sessions; workspace_max_usd caps all sessions of a workspace together.
session_max_usd = 100.0
per_action_max_usd = 10.0
warn_at_percent = 80
# workspace_max_usd = 500.0

[llm]
# The LLM provider: "scripted" (offline, replays [llm.options] script) or a plugin's provider.
provider = "scripted"

[summarizer]
# How old turns are compacted: "extractive" (offline) or "llm" (asks the provider).
name = "extractive"

[runtime]
max_context_tokens = 100000
summarization_threshold = 0.85
keep_recent_count = 10
auto_summarize = true
max_iterations = 25
max_concurrent_subagents = 4
max_subagent_depth = 3
default_subagent_timeout = 300.0
estimated_output_tokens = 1024
# workspace_root = "/path/to/project"   (default: the current directory)

[tools]
# The registered tools the model is offered; a plugin's tool is off until listed here.
# Default: the built-ins read_file, write_file, list_directory and task.
# enabled = ["read_file", "write_file", "list_directory", "task"]
# A tool's options: [tools.options.read_file] max_bytes = 1048576
# A toolset (a source of tools such as the astrid-mcp plugin's "mcp") is opened when its own
# top-level table is present, e.g. [mcp.servers.notes], or when listed in toolsets = ["mcp"];
# its tools are offered as it chooses them, not through `enabled`.

# Prices in USD per million tokens, per model. A model not listed here is priced by the
# genai-prices package if installed (pip install 'astrid[prices]'), else by [pricing.default]
# (3.0 in, 15.0 out unless set). Cache rates default to the input rate.
# [pricing."claude-sonnet-4-20250514"]
# input_per_million = 3.0
# output_per_million = 15.0
# cache_read_per_million = 0.3
# cache_write_per_million = 3.75
"""


def write_default_config(path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the commented default config file (0600, atomically); refuses to overwrite unless
    asked, also when another process creates the file meanwhile."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target}: already exists (use overwrite to replace it)")
    try:
        make_private_dirs(target.parent)
        atomic_write(target, DEFAULT_CONFIG_TEXT.encode("utf-8"), replace=overwrite)
    except FileExistsError:
        raise ConfigError(f"{target}: already exists (use overwrite to replace it)") from None
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write the config file: {exc}") from exc
    return target


def dump_config(config: AstridConfig) -> str:
    """The effective configuration as TOML text (tomli-w)."""
    import tomli_w

    data = config.model_dump(mode="json", exclude_none=True)
    data.update(config.toolset_tables)
    return tomli_w.dumps(data)
