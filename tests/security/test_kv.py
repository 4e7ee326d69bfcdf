"""Key-value storage: the memory backend, name validation and the scoped view (spec §7, §10)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from astrid.errors import InvalidKey, SerializationError, StorageError
from astrid.security.kv import KvStore, MemoryKvStore, ScopedKvStore, validate_name

# ---------------------------------------------------------------------------
# MemoryKvStore (the original's memory tests)
# ---------------------------------------------------------------------------


def test_memory_get_set() -> None:
    store = MemoryKvStore()
    store.set("ns", "key", b"value")
    assert store.get("ns", "key") == b"value"


def test_memory_missing_key() -> None:
    store = MemoryKvStore()
    assert store.get("ns", "missing") is None


def test_memory_overwrite() -> None:
    store = MemoryKvStore()
    store.set("ns", "key", b"one")
    store.set("ns", "key", b"two")
    assert store.get("ns", "key") == b"two"


def test_memory_delete() -> None:
    store = MemoryKvStore()
    store.set("ns", "key", b"value")
    assert store.delete("ns", "key") is True
    assert store.get("ns", "key") is None
    assert store.delete("ns", "key") is False


def test_memory_exists() -> None:
    store = MemoryKvStore()
    assert store.exists("ns", "key") is False
    store.set("ns", "key", b"value")
    assert store.exists("ns", "key") is True


def test_memory_namespace_isolation() -> None:
    store = MemoryKvStore()
    store.set("ns1", "key", b"one")
    store.set("ns2", "key", b"two")
    assert store.get("ns1", "key") == b"one"
    assert store.get("ns2", "key") == b"two"
    assert store.delete("ns1", "key")
    assert store.get("ns2", "key") == b"two"


def test_memory_list_keys_sorted() -> None:
    store = MemoryKvStore()
    for key in ("c", "a", "b"):
        store.set("ns", key, b"x")
    store.set("other", "z", b"x")
    assert store.list_keys("ns") == ["a", "b", "c"]
    assert store.list_keys("empty") == []


def test_memory_clear_namespace() -> None:
    store = MemoryKvStore()
    store.set("ns", "a", b"1")
    store.set("ns", "b", b"2")
    store.set("other", "a", b"3")
    assert store.clear_namespace("ns") == 2
    assert store.list_keys("ns") == []
    assert store.get("other", "a") == b"3"
    assert store.clear_namespace("ns") == 0


def test_memory_prefix_namespaces_do_not_collide() -> None:
    store = MemoryKvStore()
    store.set("ns", "k", b"1")
    store.set("ns:sub", "k", b"2")
    assert store.clear_namespace("ns") == 1
    assert store.get("ns:sub", "k") == b"2"


def test_memory_copies_mutable_values() -> None:
    store = MemoryKvStore()
    buffer = bytearray(b"abc")
    store.set("ns", "k", bytes(buffer))
    buffer[0] = ord("z")
    assert store.get("ns", "k") == b"abc"


def test_memory_is_a_kv_store() -> None:
    assert isinstance(MemoryKvStore(), KvStore)
    assert "MemoryKvStore" in repr(MemoryKvStore())


def test_memory_thread_safe() -> None:
    store = MemoryKvStore()

    def writer(n: int) -> None:
        for i in range(200):
            store.set("ns", f"{n}-{i}", b"x")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.list_keys("ns")) == 8 * 200


@given(
    namespace=st.text(min_size=1).filter(lambda s: "\0" not in s),
    key=st.text(min_size=1).filter(lambda s: "\0" not in s),
    value=st.binary(),
)
def test_memory_round_trip_any_valid_name(namespace: str, key: str, value: bytes) -> None:
    store = MemoryKvStore()
    store.set(namespace, key, value)
    assert store.get(namespace, key) == value
    assert store.list_keys(namespace) == [key]


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def test_validate_name_accepts_normal_names() -> None:
    validate_name("namespace", "deferred:1234")
    validate_name("key", "a b/c")


def test_validate_name_rejects_empty() -> None:
    with pytest.raises(InvalidKey, match="namespace must not be empty"):
        validate_name("namespace", "")
    with pytest.raises(InvalidKey, match="key must not be empty"):
        validate_name("key", "")


def test_validate_name_rejects_nul() -> None:
    with pytest.raises(InvalidKey, match="key 'a\\\\x00b' contains a NUL byte"):
        validate_name("key", "a\0b")


def test_invalid_key_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="invalid key"):
        validate_name("key", "")


_MEMORY_CALLS: list[tuple[str, Callable[[MemoryKvStore, str, str], object]]] = [
    ("get", lambda s, ns, k: s.get(ns, k)),
    ("set", lambda s, ns, k: s.set(ns, k, b"x")),
    ("delete", lambda s, ns, k: s.delete(ns, k)),
    ("exists", lambda s, ns, k: s.exists(ns, k)),
]


@pytest.mark.parametrize(("name", "call"), _MEMORY_CALLS)
@pytest.mark.parametrize(
    ("namespace", "key", "what"),
    [("", "k", "namespace"), ("ns", "", "key"), ("n\0s", "k", "namespace"), ("ns", "k\0", "key")],
)
def test_memory_validates_every_operation(
    name: str,
    call: Callable[[MemoryKvStore, str, str], object],
    namespace: str,
    key: str,
    what: str,
) -> None:
    store = MemoryKvStore()
    with pytest.raises(InvalidKey, match=what):
        call(store, namespace, key)


def test_memory_validates_namespace_for_list_and_clear() -> None:
    store = MemoryKvStore()
    with pytest.raises(InvalidKey):
        store.list_keys("")
    with pytest.raises(InvalidKey):
        store.clear_namespace("a\0")


# ---------------------------------------------------------------------------
# ScopedKvStore
# ---------------------------------------------------------------------------


def test_scoped_get_set() -> None:
    scoped = ScopedKvStore(MemoryKvStore(), "plugin:a")
    assert scoped.namespace == "plugin:a"
    scoped.set("k", b"v")
    assert scoped.get("k") == b"v"
    assert scoped.get("missing") is None


def test_scoped_isolation_between_plugins() -> None:
    backend = MemoryKvStore()
    a = ScopedKvStore(backend, "plugin:a")
    b = ScopedKvStore(backend, "plugin:b")
    a.set("k", b"from a")
    b.set("k", b"from b")
    assert a.get("k") == b"from a"
    assert b.get("k") == b"from b"
    assert backend.get("plugin:a", "k") == b"from a"
    a.clear()
    assert b.get("k") == b"from b"


def test_scoped_delete_exists() -> None:
    scoped = ScopedKvStore(MemoryKvStore(), "ns")
    scoped.set("k", b"v")
    assert scoped.exists("k")
    assert scoped.delete("k") is True
    assert not scoped.exists("k")
    assert scoped.delete("k") is False


def test_scoped_list_and_clear() -> None:
    scoped = ScopedKvStore(MemoryKvStore(), "ns")
    scoped.set("b", b"2")
    scoped.set("a", b"1")
    assert scoped.list_keys() == ["a", "b"]
    assert scoped.clear() == 2
    assert scoped.list_keys() == []


def test_scoped_json_round_trip() -> None:
    scoped = ScopedKvStore(MemoryKvStore(), "ns")
    value = {"name": "astrid", "n": [1, 2, 3], "nested": {"ok": True, "none": None}}
    scoped.set_json("k", value)
    assert scoped.get_json("k") == value


def test_scoped_json_is_compact_utf8() -> None:
    scoped = ScopedKvStore(MemoryKvStore(), "ns")
    scoped.set_json("k", {"a": 1, "b": ["é", 2]})
    assert scoped.get("k") == '{"a":1,"b":["é",2]}'.encode()


def test_scoped_json_accepts_pydantic_models() -> None:
    class Point(BaseModel):
        x: int
        y: int

    scoped = ScopedKvStore(MemoryKvStore(), "ns")
    scoped.set_json("p", Point(x=1, y=2))
    assert scoped.get("p") == b'{"x":1,"y":2}'
    assert Point.model_validate(scoped.get_json("p")) == Point(x=1, y=2)


def test_scoped_json_missing_key_is_none() -> None:
    scoped = ScopedKvStore(MemoryKvStore(), "ns")
    assert scoped.get_json("missing") is None


def test_scoped_json_bad_json_names_namespace_and_key() -> None:
    scoped = ScopedKvStore(MemoryKvStore(), "plugin:x")
    scoped.set("broken", b"{not json")
    with pytest.raises(SerializationError) as info:
        scoped.get_json("broken")
    message = str(info.value)
    assert "plugin:x" in message
    assert "broken" in message


def test_scoped_json_non_utf8_is_a_serialization_error() -> None:
    scoped = ScopedKvStore(MemoryKvStore(), "ns")
    scoped.set("bin", b"\xff\xfe\x01")
    with pytest.raises(SerializationError, match="bin"):
        scoped.get_json("bin")


def test_scoped_set_json_rejects_unencodable_values() -> None:
    scoped = ScopedKvStore(MemoryKvStore(), "ns")
    with pytest.raises(SerializationError, match="'k'"):
        scoped.set_json("k", {"x": float("nan")})
    with pytest.raises(SerializationError):
        scoped.set_json("k", {"x": object()})
    assert scoped.get("k") is None


def test_scoped_rejects_empty_namespace() -> None:
    with pytest.raises(InvalidKey, match="namespace"):
        ScopedKvStore(MemoryKvStore(), "")
    with pytest.raises(InvalidKey, match="namespace"):
        ScopedKvStore(MemoryKvStore(), "a\0b")


@pytest.mark.parametrize("key", ["", "a\0b"])
def test_scoped_rejects_bad_key_everywhere(key: str) -> None:
    scoped = ScopedKvStore(MemoryKvStore(), "ns")
    with pytest.raises(InvalidKey):
        scoped.get(key)
    with pytest.raises(InvalidKey):
        scoped.set(key, b"x")
    with pytest.raises(InvalidKey):
        scoped.delete(key)
    with pytest.raises(InvalidKey):
        scoped.exists(key)
    with pytest.raises(InvalidKey):
        scoped.get_json(key)
    with pytest.raises(InvalidKey):
        scoped.set_json(key, 1)


def test_scoped_shares_the_backend() -> None:
    backend = MemoryKvStore()
    scoped = ScopedKvStore(backend, "ns")
    assert scoped.store is backend
    assert "ns" in repr(scoped)
