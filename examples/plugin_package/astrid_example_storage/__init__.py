"""astrid-example-storage: the ``jsonl`` storage backend, registered through an entry point.

Installed, this distribution declares the entry point ``example-storage`` in the group
``astrid`` (see ``pyproject.toml``); astrid imports this module the first time it needs its
plugins and calls the hook below, so ``[storage] backend = "jsonl"`` selects the backend.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from astrid import hookimpl
from astrid.hookspecs import Register
from astrid.plugins import PluginContext

from .backend import FORMAT_VERSION, JsonlBackend, JsonlKvStore

__version__ = "0.1.0"


class JsonlOptions(BaseModel):
    """Options of the ``jsonl`` backend (the ``[storage.options]`` table)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error naming the key

    directory: str = "jsonl"
    """Where the store lives; a relative path is taken under astrid's home."""
    fsync: bool = True
    """fsync every save (durable against power loss); False is faster for scratch stores."""


def create_backend(options: JsonlOptions, context: PluginContext) -> JsonlBackend:
    """The factory astrid calls with the validated options when a host opens a store."""
    directory = Path(options.directory).expanduser()
    if not directory.is_absolute():
        directory = context.home / directory
    return JsonlBackend(directory, fsync=options.fsync)


@hookimpl
def register_storage_backends(register: Register) -> None:
    """Register the ``jsonl`` backend."""
    register(
        "jsonl",
        create_backend,
        options_model=JsonlOptions,
        description="Append-only JSON Lines, one file per session, under <home>/jsonl (example "
        "plugin).",
    )


__all__ = [
    "FORMAT_VERSION",
    "JsonlBackend",
    "JsonlKvStore",
    "JsonlOptions",
    "create_backend",
    "register_storage_backends",
]
