"""The plugin manager: built-ins and entry-point plugins, and the registries they fill.

Built-ins are registered exactly like third-party plugins. Third-party plugins are found through
the entry-point group ``astrid``; local ``*.py`` modules from ``ASTRID_PLUGINS_DIR`` (a
directory, for development) are loaded too, named by their file stem. ``ASTRID_LOAD_PLUGINS=a,b``
loads only the named plugins (built-in module names such as
``astrid.default_plugins.sqlite_storage``, or ``astrid.default_plugins`` for all of them,
entry-point names or local stems); set but empty, it loads none. ``ASTRID_DISABLE_PLUGINS=a,b``
loads all but the named ones. A name that neither knows is warned about.

A plugin that fails (its import raises, a hook is unknown or misdeclared, a registry hook raises)
is set aside and recorded, never fatal by itself: ``astrid plugins`` lists it as failed, and
only a lookup that could have needed it (an unknown name of its kind) fails, naming it.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import os
import sys
import threading
import typing
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

import pluggy
from pydantic import BaseModel, ConfigDict, ValidationError

from . import hookspecs
from .errors import AstridError, PluginError, PluginWarning

DEFAULT_PLUGINS: tuple[str, ...] = (
    "astrid.default_plugins.memory_storage",
    "astrid.default_plugins.file_storage",
    "astrid.default_plugins.sqlite_storage",
    "astrid.default_plugins.encrypted_storage",
    "astrid.default_plugins.token_estimators",
    "astrid.default_plugins.git_capture",
    "astrid.default_plugins.capability_stores",
    "astrid.default_plugins.summarizers",
    "astrid.default_plugins.scripted_provider",
    "astrid.default_plugins.builtin_tools",
)

ENTRY_POINT_GROUP = "astrid"

BUILTINS = "astrid.default_plugins"
"""In ``ASTRID_LOAD_PLUGINS`` / ``ASTRID_DISABLE_PLUGINS``: every built-in plugin at once."""

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
        """Validate ``options`` with the implementation's model and call its factory (every
        path option made absolute first: a relative one is under ``context.home``)."""
        from .config import resolve_path_options

        model = options if isinstance(options, BaseModel) else self.options.model_validate(
            options or {}
        )
        model = resolve_path_options(model, context.home)
        try:
            created = self.factory(model, context)
        except AstridError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {self.plugin!r}: the factory of {self.kind} {self.name!r} raised "
                f"{_exc_text(exc)}"
            ) from exc
        _check_created(self, created)
        return created


_PROTOCOLS: dict[str, tuple[str, str, frozenset[str]]] = {
    "storage": ("astrid.store", "StorageBackend", frozenset()),
    "token_estimator": ("astrid.tokens", "TokenEstimator", frozenset()),
    "capability_store": (
        "astrid.security.capabilities", "CapabilityBackend", frozenset({"claim_use"})
    ),
    "summarizer": ("astrid.context", "Summarizer", frozenset()),
    "llm_provider": ("astrid.llm", "LLMProvider", frozenset()),
    "tool": ("astrid.tools", "Tool", frozenset()),
    "toolset": ("astrid.tools", "Toolset", frozenset()),
}
"""Kind → (module, protocol, optional members) a created object is checked against."""


def protocol_members(protocol: type) -> list[str]:
    """The members a ``typing.Protocol`` declares, sorted (attributes and methods)."""
    attrs = getattr(protocol, "__protocol_attrs__", None)
    if attrs is None:  # Python 3.11
        attrs = typing._get_protocol_attrs(protocol)  # type: ignore[attr-defined]
    return sorted(attrs)


def missing_members(obj: object, protocol: type, optional: Iterable[str] = ()) -> list[str]:
    """The required members of ``protocol`` that ``obj`` lacks (a method that is not callable
    counts as missing)."""
    skip = set(optional)
    missing = []
    for member in protocol_members(protocol):
        if member in skip:
            continue
        method = callable(getattr(protocol, member, None))
        if not hasattr(obj, member) or (method and not callable(getattr(obj, member))):
            missing.append(member)
    return missing


def _check_created(impl: Implementation, created: object) -> None:
    """Refuse what a factory made unless it has every member its kind's protocol requires."""
    if impl.kind == "git_capture":
        if not callable(created):
            raise PluginError(
                f"git_capture {impl.name!r} (plugin {impl.plugin!r}) is not a GitCapture: "
                f"its factory returned a {type(created).__name__}, not a callable (Path) -> "
                "GitState | None"
            )
        return
    spec = _PROTOCOLS.get(impl.kind)
    if spec is None:
        return
    module, name, optional = spec
    protocol = getattr(importlib.import_module(module), name)
    missing = missing_members(created, protocol, optional)
    if missing:
        raise PluginError(
            f"{impl.kind} {impl.name!r} (plugin {impl.plugin!r}) is not a {name}: "
            f"the {type(created).__name__} its factory returned lacks {', '.join(missing)}"
        )


def _exc_text(exc: BaseException) -> str:
    """``Type: message`` on one line (a multi-line message is joined); a pydantic validation
    error gives each error's place and message only, never the input value (it may be a key)."""
    if isinstance(exc, ValidationError):
        text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    else:
        text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class PluginFailure:
    """A plugin set aside: where it failed (``load`` or a hook's name) and why, in one line."""

    plugin: str
    hook: str
    reason: str
    kind: str | None = None
    """The registry kind whose hook failed; None when the whole plugin was refused."""
    version: str | None = None

    def message(self) -> str:
        """One line naming the plugin, the hook and the exception."""
        return f"plugin {self.plugin!r} failed ({self.hook}): {self.reason}"


class Registry(dict[str, Implementation]):
    """The implementations of one kind by name, with what could not be registered: names two
    plugins claim (``conflicts``, an error only when used) and plugins whose hook failed."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conflicts: dict[str, list[str]] = {}
        self.failures: list[PluginFailure] = []

    def conflict_message(self, name: str) -> str:
        """The error for a name several plugins registered."""
        owners = " and ".join(repr(owner) for owner in sorted(self.conflicts[name]))
        return f"{self.kind} {name!r} is registered by two plugins: {owners}"

    def require(self, names: Iterable[str]) -> None:
        """Raise ``PluginError`` for a name in ``names`` that two plugins claim, or that is
        missing while a plugin of this kind failed (it may have provided it)."""
        for name in names:
            if name in self.conflicts:
                raise PluginError(self.conflict_message(name))
            if name not in self and self.failures:
                failed = "; ".join(f.message() for f in self.failures)
                raise PluginError(f"unknown {self.kind} {name!r}; {failed}")

    def require_all(self) -> None:
        """Raise ``PluginError`` if anything of this kind failed or conflicts (for kinds whose
        every implementation is used, such as tools)."""
        if self.conflicts:
            raise PluginError(self.conflict_message(sorted(self.conflicts)[0]))
        if self.failures:
            raise PluginError(self.failures[0].message())


@dataclass
class _State:
    manager: pluggy.PluginManager | None = None
    registries: dict[str, Registry] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)


_state = _State()
_lock = threading.RLock()


def _name_list(variable: str) -> set[str] | None:
    raw = os.environ.get(variable)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _allowlist() -> set[str] | None:
    return _name_list("ASTRID_LOAD_PLUGINS")


def _local_plugin_files() -> list[Path]:
    raw = os.environ.get("ASTRID_PLUGINS_DIR")
    if not raw:
        return []
    directory = Path(raw).expanduser()
    if not directory.is_dir():
        warnings.warn(
            f"ASTRID_PLUGINS_DIR={raw!r} is not a directory; no local plugins loaded",
            PluginWarning,
            stacklevel=3,
        )
        return []
    return sorted(path for path in directory.glob("*.py") if not path.name.startswith("_"))


def _import_local(path: Path) -> object:
    module_name = f"astrid_local_plugins.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _warn_unknown(
    variable: str, names: set[str] | None, known: set[str], dists: dict[str, str]
) -> None:
    for name in sorted((names or set()) - known):
        hint = ""
        if name in dists:
            hint = f" ({name!r} is a distribution; its plugin is named {dists[name]!r})"
        else:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
        warnings.warn(
            f"{variable} names {name!r}, which is no installed plugin{hint}; known: "
            + ", ".join(sorted(known)),
            PluginWarning,
            stacklevel=4,
        )


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """The hooks ``plugin`` implements that no hookspec declares (misspelt names)."""
    unknown = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.spec is None and any(
            impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()
        ):
            unknown.append(caller.name)
    return sorted(unknown)


def _validated_register(pm: pluggy.PluginManager, plugin: object, name: str | None) -> str | None:
    """Register ``plugin``; on a hook pluggy refuses or an unknown hook, leave it unregistered
    and return the reason (one line, pytest style: ``unknown hook 'x'``)."""
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:  # or a name already taken
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        return _exc_text(exc)
    if not pm.is_registered(plugin):
        return None  # blocked
    unknown = _unknown_hooks(pm, plugin)
    if not unknown:
        return None
    pm.unregister(plugin)
    specs = sorted(h for h in vars(pm.hook) if getattr(pm.hook, h).spec is not None)
    parts = []
    for hook in unknown:
        close = difflib.get_close_matches(hook, specs, n=1)
        parts.append(f"unknown hook {hook!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return "; ".join(parts)


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("astrid")
    pm.add_hookspecs(hookspecs)
    allow = _allowlist()
    block = _name_list("ASTRID_DISABLE_PLUGINS") or set()
    for blocked in block:
        pm.set_blocked(blocked)
    known: set[str] = {*DEFAULT_PLUGINS, BUILTINS}
    dists: dict[str, str] = {}

    def wanted(name: str) -> bool:
        group = BUILTINS if name in DEFAULT_PLUGINS else None
        listed = allow is None or name in allow or group in allow
        return listed and name not in block and group not in block

    def add(name: str, load: Callable[[], object], plugin_version: str | None) -> None:
        if plugin_version is not None:
            _state.versions[name] = plugin_version
        try:
            plugin = load()
        except Exception as exc:
            _state.failures.append(
                PluginFailure(name, "load", _exc_text(exc), version=plugin_version)
            )
            return
        reason = _validated_register(pm, plugin, name)
        if reason is not None:
            _state.failures.append(PluginFailure(name, "register", reason, version=plugin_version))

    for module_name in DEFAULT_PLUGINS:
        if wanted(module_name):
            add(module_name, functools.partial(importlib.import_module, module_name), None)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        known.add(ep.name)
        if ep.dist is not None:
            dists.setdefault(ep.dist.name, ep.name)
        if not wanted(ep.name) or pm.has_plugin(ep.name):
            continue
        add(ep.name, ep.load, ep.dist.version if ep.dist is not None else None)
    for path in _local_plugin_files():
        known.add(path.stem)
        if wanted(path.stem) and not pm.has_plugin(path.stem):
            add(path.stem, functools.partial(_import_local, path), None)
    _warn_unknown("ASTRID_LOAD_PLUGINS", allow, known, dists)
    _warn_unknown("ASTRID_DISABLE_PLUGINS", block, known, dists)
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on first use."""
    with _lock:
        if _state.manager is None:
            _state.versions = {}
            _state.failures = []
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
    """Register an in-process plugin object or module (hosts and tests); a hook pluggy
    refuses (an argument the hookspec lacks) or an unknown hook is a ``PluginError``."""
    with _lock:
        reason = _validated_register(get_plugin_manager(), plugin, name)
        _state.registries = {}
    if reason is not None:
        raise PluginError(f"plugin {name or type(plugin).__name__!r} refused: {reason}")


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


def collect(pm: pluggy.PluginManager, kind: str) -> Registry:
    """Call every ``kind`` hook of ``pm`` with one ``register`` callback per plugin; the result.

    The one registration mechanism: the process-wide ``registry`` and a host's own plugin
    manager (``AgentRuntime(plugin_manager=...)``) both fill their registries through it. A hook
    that raises (or registers an empty name) is recorded in ``failures`` and what it registered
    is dropped; a name two plugins register is left out and recorded in ``conflicts``: an error
    only when it is looked up (``get_implementation``, ``Registry.require_all``).
    """
    _check_kind(kind)
    found = Registry(kind)
    hook_name = KINDS[kind]
    hook = getattr(pm.hook, hook_name)
    for hook_impl in reversed(hook.get_hookimpls()):
        owner = _plugin_name(pm, hook_impl)
        mine: dict[str, Implementation] = {}

        def register(
            name: str,
            factory: Callable[[Any, PluginContext], Any],
            options_model: type[BaseModel] = NoOptions,
            description: str = "",
            *,
            options: type[BaseModel] | None = None,
            _owner: str = owner,
            _mine: dict[str, Implementation] = mine,
        ) -> None:
            if options is not None:
                warnings.warn(
                    f"plugin {_owner!r}: register(..., options=) is deprecated; "
                    "use options_model=",
                    DeprecationWarning,
                    stacklevel=2,
                )
                options_model = options
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {_owner!r} registered a {kind} with an empty name")
            if not callable(factory):
                raise PluginError(
                    f"plugin {_owner!r}: the factory of {kind} {name!r} is not callable"
                )
            if not (isinstance(options_model, type) and issubclass(options_model, BaseModel)):
                raise PluginError(
                    f"plugin {_owner!r}: the options model of {kind} {name!r} is not a "
                    "pydantic BaseModel subclass"
                )
            if name in _mine:
                raise PluginError(f"plugin {_owner!r} registered {kind} {name!r} twice")
            _mine[name] = Implementation(kind, name, factory, options_model, description, _owner)

        arguments = {"register": register}
        try:
            # As pluggy calls it: only the arguments the implementation declares.
            hook_impl.function(*(arguments[arg] for arg in hook_impl.argnames))
        except Exception as exc:
            reason = str(exc) if isinstance(exc, PluginError) else f"raised {_exc_text(exc)}"
            found.failures.append(PluginFailure(owner, hook_name, reason, kind=kind))
            continue
        for name, impl in mine.items():
            if name in found.conflicts:
                found.conflicts[name].append(owner)
            elif name in found:
                found.conflicts[name] = [found.pop(name).plugin, owner]
            else:
                found[name] = impl
    return found


def registry(kind: str) -> Registry:
    """Every implementation of ``kind`` by name (cached), with its conflicts and failures."""
    _check_kind(kind)
    with _lock:
        cached = _state.registries.get(kind)
        if cached is not None:
            return cached
        found = collect(get_plugin_manager(), kind)
        _state.registries[kind] = found
        return found


def load_failures() -> list[PluginFailure]:
    """Plugins refused whole when the manager was made (import errors, unknown hooks)."""
    get_plugin_manager()
    return list(_state.failures)


def get_implementation(kind: str, name: str, *, where: str = "") -> Implementation:
    """The implementation named ``name``; a clear error otherwise: the valid choices, and the
    plugins that failed and so may be the one meant (plugin, hook and exception)."""
    impls = registry(kind)
    prefix = f"{where}: " if where else ""
    if name in impls.conflicts:
        raise PluginError(prefix + impls.conflict_message(name))
    if name not in impls:
        choices = ", ".join(sorted(impls)) or "none installed"
        failed = [f.message() for f in impls.failures + load_failures()]
        detail = "".join(f"; {text}" for text in failed)
        raise PluginError(f"{prefix}unknown {kind} {name!r}; valid choices: {choices}{detail}")
    return impls[name]


def plugin_info() -> list[dict[str, Any]]:
    """Plugins: name, version, hooks implemented, ``status`` (``ok`` or ``failed``) and
    ``error`` (one line per failure, empty if none), for ``astrid plugins``."""
    pm = get_plugin_manager()
    failures: dict[str, list[str]] = {}
    for kind in KINDS:
        for failure in registry(kind).failures:
            failures.setdefault(failure.plugin, []).append(f"{failure.hook}: {failure.reason}")
    out: list[dict[str, Any]] = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue  # blocked
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        version = _state.versions.get(name) or _builtin_version(name)
        errors = failures.get(name, [])
        out.append({
            "name": name, "version": version, "hooks": hooks,
            "status": "failed" if errors else "ok", "error": "; ".join(errors),
        })
    for failure in load_failures():
        out.append({
            "name": failure.plugin, "version": failure.version, "hooks": [],
            "status": "failed", "error": f"{failure.hook}: {failure.reason}",
        })
    return sorted(out, key=lambda row: str(row["name"]))


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
