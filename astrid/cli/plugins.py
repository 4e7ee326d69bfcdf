"""``astrid plugins``: installed plugins and what each kind registers."""

from __future__ import annotations

import click

from ..plugins import KINDS, plugin_info, registry
from ._common import clip, echo_json, json_option, table
from .scaffold import new_command


@click.group("plugins", invoke_without_command=True)
@json_option
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List installed plugins, their versions and hooks, and what each kind registers.
    ``astrid plugins new NAME --kind KIND`` writes a new plugin package."""
    if ctx.invoked_subcommand is not None:
        return
    info = plugin_info()
    impls = {
        kind: [
            {"name": impl.name, "plugin": impl.plugin, "description": impl.description}
            for impl in sorted(registry(kind).values(), key=lambda i: i.name)
        ]
        for kind in KINDS
    }
    if as_json:
        echo_json({"plugins": info, "implementations": impls})
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
        [kind, i["name"], i["plugin"], clip(i["description"], 70)]
        for kind, items in impls.items()
        for i in items
    ]
    click.echo(table(("kind", "name", "plugin", "description"), impl_rows))


plugins_command.add_command(new_command)
