"""Namespaced key-value storage: the ``KvStore`` protocol, an in-memory backend and a scoped view.

The store is synchronous (backends are in-process). Values are bytes; every astrid user writes
UTF-8 JSON through :class:`ScopedKvStore`. A namespace and a key must each be non-empty and free
of NUL; every backend and the scoped view check this and raise :class:`InvalidKey`.

``list_namespaces()`` is optional (backends written before it keep working): call it through
:func:`namespaces_of`, which gives None for a store that cannot enumerate its namespaces.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from astrid.errors import InvalidKey, SerializationError
from astrid.offload import read_in_thread, write_in_thread

__all__ = [
    "AsyncScopedKvStore",
    "KvStore",
    "MemoryKvStore",
    "NamespaceListing",
    "ScopedKvStore",
    "namespaces_of",
    "validate_name",
]


def validate_name(kind: str, value: str) -> None:
    """Raise ``InvalidKey`` if ``value`` (a ``kind``: namespace or key) is empty or has a NUL."""
    if not isinstance(value, str):
        raise InvalidKey(f"invalid key: {kind} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidKey(f"invalid key: {kind} must not be empty")
    if "\0" in value:
        raise InvalidKey(f"invalid key: {kind} {value!r} contains a NUL byte")


@runtime_checkable
class KvStore(Protocol):
    """A synchronous byte store organized by namespace (see ``NamespaceListing``, optional)."""

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent."""
        ...

    def set(self, namespace: str, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        ...

    def delete(self, namespace: str, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        ...

    def exists(self, namespace: str, key: str) -> bool:
        """True if ``key`` is stored in ``namespace``."""
        ...

    def list_keys(self, namespace: str) -> list[str]:
        """Every key of ``namespace``, sorted."""
        ...

    def clear_namespace(self, namespace: str) -> int:
        """Remove every key of ``namespace``; return how many were removed."""
        ...


@runtime_checkable
class NamespaceListing(Protocol):
    """The optional ``KvStore`` method that enumerates namespaces (``astrid migrate`` uses it)."""

    def list_namespaces(self) -> list[str]:
        """Every namespace holding at least one key, sorted."""
        ...


def namespaces_of(store: KvStore) -> list[str] | None:
    """The store's namespaces holding a key, sorted; None if it has no ``list_namespaces``."""
    if not isinstance(store, NamespaceListing):
        return None
    return sorted(store.list_namespaces())


class MemoryKvStore:
    """A thread-safe in-memory ``KvStore`` (validates names like every backend)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, bytes]] = {}

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        with self._lock:
            return self._data.get(namespace, {}).get(key)

    def set(self, namespace: str, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        data = bytes(value)
        with self._lock:
            self._data.setdefault(namespace, {})[key] = data

    def delete(self, namespace: str, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        with self._lock:
            entries = self._data.get(namespace)
            if entries is None or key not in entries:
                return False
            del entries[key]
            if not entries:
                del self._data[namespace]
            return True

    def exists(self, namespace: str, key: str) -> bool:
        """True if ``key`` is stored in ``namespace``."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        with self._lock:
            return key in self._data.get(namespace, {})

    def list_keys(self, namespace: str) -> list[str]:
        """Every key of ``namespace``, sorted."""
        validate_name("namespace", namespace)
        with self._lock:
            return sorted(self._data.get(namespace, {}))

    def clear_namespace(self, namespace: str) -> int:
        """Remove every key of ``namespace``; return how many were removed."""
        validate_name("namespace", namespace)
        with self._lock:
            entries = self._data.pop(namespace, {})
            return len(entries)

    def list_namespaces(self) -> list[str]:
        """Every namespace holding at least one key, sorted."""
        with self._lock:
            return sorted(ns for ns, entries in self._data.items() if entries)

    def __repr__(self) -> str:
        with self._lock:
            namespaces = len(self._data)
            keys = sum(len(entries) for entries in self._data.values())
        return f"MemoryKvStore(namespaces={namespaces}, keys={keys})"


class ScopedKvStore:
    """A view of a ``KvStore`` bound to one namespace, with JSON helpers."""

    def __init__(self, store: KvStore, namespace: str) -> None:
        validate_name("namespace", namespace)
        self._store = store
        self._namespace = namespace

    @property
    def namespace(self) -> str:
        """The namespace this view is bound to."""
        return self._namespace

    @property
    def store(self) -> KvStore:
        """The underlying store (shared, not copied)."""
        return self._store

    def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent."""
        validate_name("key", key)
        return self._store.get(self._namespace, key)

    def set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``."""
        validate_name("key", key)
        self._store.set(self._namespace, key, value)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        validate_name("key", key)
        return self._store.delete(self._namespace, key)

    def exists(self, key: str) -> bool:
        """True if ``key`` is stored."""
        validate_name("key", key)
        return self._store.exists(self._namespace, key)

    def list_keys(self) -> list[str]:
        """Every key of the namespace, sorted."""
        return sorted(self._store.list_keys(self._namespace))

    def clear(self) -> int:
        """Remove every key of the namespace; return how many were removed."""
        return self._store.clear_namespace(self._namespace)

    def get_json(self, key: str) -> Any | None:
        """The JSON value under ``key`` (None when absent); bad JSON is a ``SerializationError``."""
        return _decode_json(self.get(key), key, self._namespace)

    def set_json(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON data or a pydantic model) as compact UTF-8 JSON."""
        validate_name("key", key)
        self._store.set(self._namespace, key, _encode_json(value, key, self._namespace))

    def __repr__(self) -> str:
        return f"ScopedKvStore(namespace={self._namespace!r}, store={self._store!r})"


def _decode_json(raw: bytes | None, key: str, namespace: str) -> Any | None:
    """The JSON value of ``raw`` (None when absent); bad JSON is a ``SerializationError``."""
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SerializationError(
            f"serialization error: invalid JSON under key {key!r} "
            f"in namespace {namespace!r}: {exc}"
        ) from exc


def _encode_json(value: Any, key: str, namespace: str) -> bytes:
    """``value`` (JSON data or a pydantic model) as compact UTF-8 JSON."""
    try:
        data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"serialization error: cannot encode the value for key {key!r} "
            f"in namespace {namespace!r}: {exc}"
        ) from exc
    return text.encode("utf-8")


class AsyncScopedKvStore:
    """A ``ScopedKvStore`` for code on an event loop: the same checks, the I/O in a thread.

    Names are checked and JSON is encoded and decoded on the loop thread; only the
    underlying store's call runs in the worker thread (``astrid.offload``).
    """

    def __init__(self, scoped: ScopedKvStore) -> None:
        self._scoped = scoped

    @property
    def namespace(self) -> str:
        """The namespace this view is bound to."""
        return self._scoped.namespace

    @property
    def sync(self) -> ScopedKvStore:
        """The synchronous view over the same namespace."""
        return self._scoped

    async def aget(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent."""
        validate_name("key", key)
        return await read_in_thread(self._scoped.get, key)

    async def aset(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` (a cancellation waits for the write to end)."""
        validate_name("key", key)
        await write_in_thread(self._scoped.set, key, bytes(value))

    async def adelete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        validate_name("key", key)
        return await write_in_thread(self._scoped.delete, key)

    async def aexists(self, key: str) -> bool:
        """True if ``key`` is stored."""
        validate_name("key", key)
        return await read_in_thread(self._scoped.exists, key)

    async def alist_keys(self) -> list[str]:
        """Every key of the namespace, sorted."""
        return await read_in_thread(self._scoped.list_keys)

    async def aclear(self) -> int:
        """Remove every key of the namespace; return how many were removed."""
        return await write_in_thread(self._scoped.clear)

    async def aget_json(self, key: str) -> Any | None:
        """The JSON value under ``key`` (None when absent); bad JSON is a ``SerializationError``."""
        return _decode_json(await self.aget(key), key, self.namespace)

    async def aset_json(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON data or a pydantic model) as compact UTF-8 JSON."""
        validate_name("key", key)
        await self.aset(key, _encode_json(value, key, self.namespace))

    def __repr__(self) -> str:
        return f"AsyncScopedKvStore({self._scoped!r})"
