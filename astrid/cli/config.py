"""``astrid config``: create, show, validate and locate the configuration file."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import click

from ..config import (
    HOME_ENV,
    PLUGGABLE,
    LoadedConfig,
    astrid_home,
    find_config_file,
    resolve_home_path,
    resolve_path_options,
    write_default_config,
)
from ..errors import AstridError
from ..plugins import Implementation, get_implementation, registry
from ..tools import enabled_tool_names
from ._common import compact, echo_json, json_option, load, opts, table


@click.group("config")
def config_group() -> None:
    """Create, show, validate and locate the configuration file."""


@config_group.command("init")
@click.option("--path", "path", metavar="P", help="Where to write (default <home>/config.toml).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.pass_context
def config_init(ctx: click.Context, path: str | None, force: bool) -> None:
    """Write a commented default configuration file."""
    target = Path(path or opts(ctx).config or astrid_home() / "config.toml")
    if target.exists() and not force:
        raise AstridError(f"{target}: already exists (use --force to replace it)")
    write_default_config(target, overwrite=True)
    click.echo(f"wrote {target}")


def _present(raw: Any, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out.append((prefix, value))


def effective_config(loaded: LoadedConfig) -> tuple[dict[str, Any], list[tuple[str, Any, str]]]:
    """The effective config (plugin options with their defaults, the tools that are on, the
    toolsets' tables) and each value's source."""
    config = loaded.config
    data = config.model_dump(mode="json")
    for section, key, kind in PLUGGABLE:
        impl = get_implementation(kind, data[section][key], where=loaded.where)
        options = impl.options.model_validate(data[section]["options"])
        used = resolve_path_options(options, loaded.home)  # the paths the factory is given
        data[section]["options"] = used.model_dump(mode="json")
    if data["runtime"].get("workspace_root") is not None:
        root = resolve_home_path(data["runtime"]["workspace_root"], loaded.home)
        data["runtime"]["workspace_root"] = str(root)

    def used_options(impl: Implementation, raw: dict[str, Any]) -> dict[str, Any]:
        options = resolve_path_options(impl.options.model_validate(raw), loaded.home)
        return options.model_dump(mode="json")

    tools = registry("tool")
    enabled = enabled_tool_names(config.tools.enabled, tools)
    data["tools"]["enabled"] = enabled
    data["tools"]["options"] = {
        name: used_options(tools[name], config.tools.options.get(name, {}))
        for name in dict.fromkeys([*enabled, *config.tools.options])
        if tools[name].options.model_fields or name in config.tools.options
    }
    data["tools"]["toolsets"] = config.toolsets_to_open()
    for name in config.toolsets_to_open():
        impl = get_implementation("toolset", name, where=loaded.where)
        data[name] = used_options(impl, config.toolset_tables.get(name, {}))
    raw: dict[str, Any] = {}
    if loaded.source is not None:
        raw = tomllib.loads(loaded.source.read_text(encoding="utf-8"))
    flat: list[tuple[str, Any]] = []
    _flatten("", data, flat)
    origin = str(loaded.source) if loaded.source is not None else "default"
    rows = [(k, v, origin if _present(raw, k) else "default") for k, v in flat]
    return data, rows


@config_group.command("show")
@json_option
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective configuration and where each value came from."""
    loaded = load(ctx)
    data, rows = effective_config(loaded)
    if as_json:
        echo_json(
            {
                "file": str(loaded.source) if loaded.source else None,
                "home": str(loaded.home),
                "config": data,
                "sources": {k: s for k, _v, s in rows},
            }
        )
        return
    click.echo(f"file: {loaded.source or '(none: defaults)'}")
    home_from = HOME_ENV if os.environ.get(HOME_ENV) else "default"
    click.echo(f"home: {loaded.home} ({home_from})")
    click.echo(f"tools on: {', '.join(data['tools']['enabled']) or '(none)'}")
    toolsets = data["tools"]["toolsets"]
    click.echo(
        f"toolsets opened: {', '.join(toolsets)} (their tools are known once open)\n"
        if toolsets else "toolsets opened: (none)\n"
    )
    click.echo(table(("key", "value", "source"), [[k, compact(v), s] for k, v, s in rows]))


@config_group.command("validate")
@click.pass_context
def config_validate(ctx: click.Context) -> None:
    """Load and validate the configuration (plugin names and their options)."""
    loaded = load(ctx)
    click.echo(f"ok: {loaded.source or '(none: defaults)'}")


@config_group.command("path")
@click.pass_context
def config_path(ctx: click.Context) -> None:
    """Print the config file in use (or that defaults apply) and the astrid home."""
    source = find_config_file(opts(ctx).config)
    click.echo(str(source) if source is not None else "(none: defaults)")
    click.echo(f"home: {astrid_home()}")
