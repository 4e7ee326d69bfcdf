"""``astrid plugins``: installed plugins, what each kind registers, and what the config turns on."""

from __future__ import annotations

from typing import Any

import click

from ..config import PLUGGABLE, LoadedConfig
from ..errors import AstridError
from ..plugins import KINDS, plugin_info, registry
from ..tools import enabled_tool_names
from ._common import clip, echo_json, json_option, load, one_line, table
from .scaffold import new_command


def chosen(loaded: LoadedConfig) -> dict[str, set[str]]:
    """What ``loaded`` turns on, by kind: the implementation each section names, the enabled
    tools and the toolsets to open."""
    config = loaded.config
    on: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for section, key, kind in PLUGGABLE:
        on[kind].add(getattr(getattr(config, section), key))
    on["tool"] = set(enabled_tool_names(config.tools.enabled, registry("tool")))
    on["toolset"] = set(config.toolsets_to_open())
    return on


@click.group("plugins", invoke_without_command=True)
@json_option
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List installed plugins, their versions and hooks, what each kind registers and what the
    configuration turns on (the enabled tools, the toolsets it opens, the chosen backends).
    ``astrid plugins new NAME --kind KIND`` writes a new plugin package."""
    if ctx.invoked_subcommand is not None:
        return
    info = plugin_info()
    try:
        loaded: LoadedConfig | None = load(ctx)
    except AstridError as exc:  # still list what is installed
        click.echo(f"warning: {one_line(exc)} (the 'on' column is left empty)", err=True)
        loaded = None
    on = chosen(loaded) if loaded is not None else None
    impls: dict[str, list[dict[str, Any]]] = {
        kind: [
            {
                "name": impl.name,
                "plugin": impl.plugin,
                "description": impl.description,
                "on": None if on is None else impl.name in on[kind],
            }
            for impl in sorted(registry(kind).values(), key=lambda i: i.name)
        ]
        for kind in KINDS
    }
    if as_json:
        echo_json({
            "config": None if loaded is None else loaded.where,
            "plugins": info,
            "implementations": impls,
        })
        return
    rows = [
        [p["name"], p["version"] or "-", p["status"], ", ".join(p["hooks"]) or "-"] for p in info
    ]
    click.echo(table(("plugin", "version", "status", "hooks"), rows))
    for p in info:
        if p["error"]:
            click.echo(f"failed: {p['name']}: {p['error']}")
    for kind in KINDS:
        kinds = registry(kind)
        for name in sorted(kinds.conflicts):
            click.echo(f"conflict: {kinds.conflict_message(name)}")
    click.echo("")
    impl_rows = [
        [kind, i["name"], {True: "on", False: "-", None: "?"}[i["on"]], i["plugin"],
         clip(i["description"], 70)]
        for kind, items in impls.items()
        for i in items
    ]
    click.echo(table(("kind", "name", "on", "plugin", "description"), impl_rows))
    if loaded is not None:
        click.echo(f"\n'on': what {loaded.where} turns on ([tools] enabled, toolsets, backends)")


plugins_command.add_command(new_command)
