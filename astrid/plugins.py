"""The plugin manager: built-ins and entry-point plugins, and the registries they fill.

Built-ins are registered exactly like third-party plugins. Third-party plugins are found through
the entry-point group ``astrid``. ``ASTRID_LOAD_PLUGINS=a,b`` loads only the named plugins
(built-in module names such as ``astrid.default_plugins.sqlite_storage`` or entry-point names);
set but empty, it loads none.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

import pluggy
from pydantic import BaseModel, ConfigDict

from . import hookspecs
from .errors import PluginError

DEFAULT_PLUGINS: tuple[str, ...] = (
    "astrid.default_plugins.memory_storage",
    "astrid.default_plugins.file_storage",
    "astrid.default_plugins.sqlite_storage",
    "astrid.default_plugins.token_estimators",
    "astrid.default_plugins.git_capture",
    "astrid.default_plugins.capability_stores",
    "astrid.default_plugins.summarizers",
    "astrid.default_plugins.scripted_provider",
    "astrid.default_plugins.builtin_tools",
)

ENTRY_POINT_GROUP = "astrid"

KINDS: dict[str, str] = {
    "storage": "register_storage_backends",
    "token_estimator": "register_token_estimators",
    "capability_store": "register_capability_stores",
    "git_capture": "register_git_capture",
    "summarizer": "register_summarizers",
    "llm_provider": "register_llm_providers",
    "tool": "register_tools",
    "toolset": "register_toolsets",
}
"""Registry kind → the hook that fills it."""


class NoOptions(BaseModel):
    """The options model of an implementation that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class PluginContext:
    """What a factory may need besides its own options.

    ``read_only``: the caller only inspects (``astrid doctor``); a factory that honours it
    creates nothing (no directories, files, locks or migrations) and refuses writes.
    """

    home: Path
    read_only: bool = False


@dataclass(frozen=True)
class Implementation:
    """One registered implementation: its name, factory, options model and owner."""

    kind: str
    name: str
    factory: Callable[[Any, PluginContext], Any]
    options: type[BaseModel]
    description: str
    plugin: str

    def create(self, options: dict[str, Any] | BaseModel | None, context: PluginContext) -> Any:
        """Validate ``options`` with the implementation's model and call its factory."""
        model = options if isinstance(options, BaseModel) else self.options.model_validate(
            options or {}
        )
        return self.factory(model, context)


@dataclass
class _State:
    manager: pluggy.PluginManager | None = None
    registries: dict[str, dict[str, Implementation]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


_state = _State()
_lock = threading.RLock()


def _allowlist() -> set[str] | None:
    raw = os.environ.get("ASTRID_LOAD_PLUGINS")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("astrid")
    pm.add_hookspecs(hookspecs)
    allow = _allowlist()
    for module_name in DEFAULT_PLUGINS:
        if allow is not None and module_name not in allow:
            continue
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if allow is not None and ep.name not in allow:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} (entry point {ep.value!r}) failed to load: {exc}"
            ) from exc
        pm.register(plugin, name=ep.name)
        if ep.dist is not None:
            _state.versions[ep.name] = ep.dist.version
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on first use."""
    with _lock:
        if _state.manager is None:
            _state.versions = {}
            _state.manager = _new_manager()
            _state.registries = {}
        return _state.manager


def load_plugins() -> pluggy.PluginManager:
    """Load (or reload, re-reading ``ASTRID_LOAD_PLUGINS``) every plugin."""
    with _lock:
        _state.manager = None
        _state.registries = {}
        return get_plugin_manager()


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register an in-process plugin object or module (hosts and tests)."""
    with _lock:
        get_plugin_manager().register(plugin, name=name)
        _state.registries = {}


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered under ``name``."""
    with _lock:
        pm = get_plugin_manager()
        plugin = pm.get_plugin(name)
        if plugin is not None:
            pm.unregister(plugin)
        _state.registries = {}


def _plugin_name(pm: pluggy.PluginManager, impl: Any) -> str:
    return pm.get_name(impl.plugin) or repr(impl.plugin)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PluginError(f"unknown registry kind {kind!r}; known: {', '.join(sorted(KINDS))}")


def collect(pm: pluggy.PluginManager, kind: str) -> dict[str, Implementation]:
    """Call every ``kind`` hook of ``pm`` with one ``register`` callback per plugin; the result.

    The one registration mechanism: the process-wide ``registry`` and a host's own plugin
    manager (``AgentRuntime(plugin_manager=...)``) both fill their registries through it. Two
    plugins registering one name, or an empty name, is a ``PluginError`` naming the plugins.
    """
    _check_kind(kind)
    found: dict[str, Implementation] = {}
    hook = getattr(pm.hook, KINDS[kind])
    for hook_impl in reversed(hook.get_hookimpls()):
        owner = _plugin_name(pm, hook_impl)

        def register(
            name: str,
            factory: Callable[[Any, PluginContext], Any],
            options: type[BaseModel] = NoOptions,
            description: str = "",
            *,
            _owner: str = owner,
        ) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {_owner!r} registered a {kind} with an empty name")
            if name in found:
                raise PluginError(
                    f"{kind} {name!r} is registered by two plugins: "
                    f"{found[name].plugin!r} and {_owner!r}"
                )
            found[name] = Implementation(kind, name, factory, options, description, _owner)

        hook_impl.function(register=register)
    return found


def registry(kind: str) -> dict[str, Implementation]:
    """Every implementation of ``kind`` by name (cached); two plugins claiming a name: an error."""
    _check_kind(kind)
    with _lock:
        cached = _state.registries.get(kind)
        if cached is not None:
            return cached
        found = collect(get_plugin_manager(), kind)
        _state.registries[kind] = found
        return found


def get_implementation(kind: str, name: str, *, where: str = "") -> Implementation:
    """The implementation named ``name``; a clear error listing the valid choices otherwise."""
    impls = registry(kind)
    if name not in impls:
        choices = ", ".join(sorted(impls)) or "none installed"
        prefix = f"{where}: " if where else ""
        raise PluginError(f"{prefix}unknown {kind} {name!r}; valid choices: {choices}")
    return impls[name]


def plugin_info() -> list[dict[str, Any]]:
    """Installed plugins: name, version, hooks implemented (for ``astrid plugins``)."""
    pm = get_plugin_manager()
    out: list[dict[str, Any]] = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        version = _state.versions.get(name) or _builtin_version(name)
        out.append({"name": name, "version": version, "hooks": hooks})
    return out


def package_version(distribution: str) -> str:
    """The installed version of ``distribution`` from its package metadata (the version in its
    pyproject.toml, the one place it is written); ``0+unknown`` for a source tree used without
    installing it. ``astrid.__version__`` and the plugins' ``__version__`` read it."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "0+unknown"


def version_attribute(module_name: str, distribution: str) -> Callable[[str], str]:
    """A module ``__getattr__`` that serves ``__version__`` as ``package_version(distribution)``
    on first access: a plugin package's ``__init__`` sets ``__getattr__`` to it."""

    def __getattr__(name: str) -> str:
        if name == "__version__":
            return package_version(distribution)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__


def _builtin_version(name: str) -> str | None:
    if name.startswith("astrid."):
        from . import __version__

        return __version__
    return None
