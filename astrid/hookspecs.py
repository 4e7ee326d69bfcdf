"""Every astrid hook, grouped by subsystem. A plugin implements them with ``@astrid.hookimpl``.

Registry hooks receive a ``register`` callback (the llm convention): call it once per
implementation with the name the TOML config uses, a factory, and a pydantic model of options.
Hooks are synchronous; the objects factories return may have async methods.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("astrid")
hookimpl = pluggy.HookimplMarker("astrid")


# -- storage --------------------------------------------------------------------------------


@hookspec
def register_storage_backends(register: Any) -> None:
    """Register session storage backends.

    ``register(name, factory, options=Model, description="")``; ``factory(options, context)``
    returns an object satisfying ``astrid.store.StorageBackend``.
    """


@hookspec
def register_capability_stores(register: Any) -> None:
    """Register capability-token stores.

    ``factory(options, context)`` returns an ``astrid.security.capabilities.CapabilityBackend``
    (persistent tokens, revocations and used single-use ids).
    """


# -- context --------------------------------------------------------------------------------


@hookspec
def register_token_estimators(register: Any) -> None:
    """Register token estimators.

    ``factory(options, context)`` returns an ``astrid.tokens.TokenEstimator``.
    """


# -- workspace ------------------------------------------------------------------------------


@hookspec
def register_git_capture(register: Any) -> None:
    """Register ways of reading a workspace's git state.

    ``factory(options, context)`` returns a callable ``(Path) -> GitState | None``.
    """
