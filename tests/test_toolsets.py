"""Toolsets: tool sources known only after an async connect (the ``register_toolsets`` hook).

Real parts: a test plugin registered through the process-wide plugin manager, the SQLite store
under a temporary ``ASTRID_HOME``, TOML config files, the scripted provider.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from astrid.hookspecs import hookimpl
from astrid.plugins import PluginContext, register_plugin, registry, unregister_plugin
from astrid.tools import FunctionTool, Tool, Toolset


class NotesOptions(BaseModel):
    """Options of the test toolset: ``[notes]`` in the TOML."""

    model_config = ConfigDict(extra="forbid")
    prefix: str = "notes"


class NotesToolset:
    """A toolset whose tools exist only once ``open`` ran."""

    def __init__(self, options: NotesOptions) -> None:
        self.name = "notes"
        self.options = options
        self.opened = 0
        self.closed = 0

    async def open(self) -> list[Tool]:
        self.opened += 1
        return [FunctionTool(f"{self.options.prefix}__add", "Add a note.", None, lambda a, c: "ok")]

    async def aclose(self) -> None:
        self.closed += 1


class NotesPlugin:
    @hookimpl
    def register_toolsets(self, register: Any) -> None:
        register(
            "notes",
            lambda options, context: NotesToolset(options),
            NotesOptions,
            "Test notes toolset",
        )


def test_a_plugin_registers_a_toolset_whose_factory_returns_a_toolset(tmp_path: Any) -> None:
    register_plugin(NotesPlugin(), name="notes-plugin")
    try:
        impl = registry("toolset")["notes"]
        assert (impl.plugin, impl.options, impl.description) == (
            "notes-plugin", NotesOptions, "Test notes toolset"
        )
        toolset = impl.create({"prefix": "n"}, PluginContext(home=tmp_path))
        assert isinstance(toolset, Toolset) and toolset.options.prefix == "n"
        assert not isinstance(object(), Toolset)
    finally:
        unregister_plugin("notes-plugin")
    assert "notes" not in registry("toolset")
