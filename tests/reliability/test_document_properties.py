"""Property tests of the session document: round trips, and a decoder that only fails typed.

``tests/test_document.py`` round-trips documents with simple allowances and no escape paths.
Here the generated sessions carry allowances of every pattern variant (with expiry, use counts
and workspace roots) and remembered escape paths that exist, and they go through the real
stores too. The decoder is fed mutated documents, arbitrary JSON and arbitrary bytes: it returns
a document or raises ``SerializationError``; the stores raise an ``AstridError``; nothing else.
"""

from __future__ import annotations

import base64
import json
import math
import os
import string
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.document import SessionDocument
from astrid.errors import AstridError, SerializationError
from astrid.security.actions import Permission
from astrid.session import AgentSession
from astrid.store import SessionStore
from astrid.timeutil import format_rfc3339

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_name = st.text(alphabet=string.ascii_letters + string.digits + "_-.:", min_size=1, max_size=10)
_glob = st.text(alphabet="ab/*?[]{},!.-\\", max_size=12)
_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)  # what a store can hold (astrid.jsonutil)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=10,
)
_permission = st.sampled_from([p.value for p in Permission])


def _moment(low: int, high: int) -> st.SearchStrategy[str]:
    return st.datetimes(min_value=datetime(low, 1, 1), max_value=datetime(high, 1, 1)).map(
        lambda d: format_rfc3339(d.replace(tzinfo=UTC))
    )


PATTERNS: list[st.SearchStrategy[dict[str, Any]]] = [
    st.fixed_dictionaries({"type": st.just("exact_tool"), "server": _name, "tool": _name}),
    st.fixed_dictionaries({"type": st.just("server_tools"), "server": _name}),
    st.fixed_dictionaries(
        {"type": st.just("file_pattern"), "pattern": _glob, "permission": _permission}
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("network_host"),
            "host": _name,
            "ports": st.none() | st.lists(st.integers(0, 65535), max_size=3),
        }
    ),
    st.fixed_dictionaries({"type": st.just("command_pattern"), "command": _glob}),
    st.fixed_dictionaries(
        {"type": st.just("workspace_relative"), "pattern": _glob, "permission": _permission}
    ),
    st.fixed_dictionaries({"type": st.just("custom"), "pattern": _text}),
    st.fixed_dictionaries(
        {"type": st.just("plugin_capability"), "plugin_id": _name, "capability": _name}
    ),
    st.fixed_dictionaries({"type": st.just("plugin_wildcard"), "plugin_id": _name}),
]
"""Every ``AllowancePattern`` variant, in its JSON shape."""

_allowance = st.fixed_dictionaries(
    {
        "id": st.uuids().map(str),
        "action_pattern": st.one_of(PATTERNS),
        "created_at": _moment(2000, 2030),
        "expires_at": st.none() | _moment(2100, 2200),  # only valid ones are kept by sessions
        "max_uses": st.none() | st.integers(1, 2**32 - 1),
        "uses_remaining": st.none() | st.integers(1, 2**32 - 1),
        "session_only": st.just(True),  # a session document holds session allowances
        "workspace_root": st.none() | st.sampled_from(["/home/u/proj", "/srv/ws"]),
        "signature": st.binary(min_size=64, max_size=64).map(
            lambda b: base64.b64encode(b).decode()
        ),
    }
)


@pytest.fixture(scope="module")
def escape_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Existing, canonical directories outside every never-allowed path."""
    root = tmp_path_factory.mktemp("escapes")
    dirs = []
    for name in ("a", "b b", "c\u00e9", "d/e", "f.g"):
        path = root / name
        path.mkdir(parents=True)
        dirs.append(os.path.realpath(path))
    return dirs


@st.composite
def documents(draw: st.DrawFn, escape_dirs: list[str]) -> dict[str, Any]:
    messages = draw(
        st.lists(
            st.one_of(
                st.builds(lambda t: {"role": "user", "content": t}, _text),
                st.builds(
                    lambda i, n, a: {
                        "role": "assistant",
                        "content": [{"id": i, "name": n, "arguments": a}],
                    },
                    _name,
                    _name,
                    _json,
                ),
                st.builds(
                    lambda c, t, e: {
                        "role": "tool",
                        "content": {"call_id": c, "content": t, "is_error": e},
                    },
                    _name,
                    _text,
                    st.booleans(),
                ),
                st.builds(lambda r, c: {"role": r, "content": c}, _name, _json),
                _json,
            ),
            max_size=5,
        )
    )
    return {
        "id": str(draw(st.uuids())),
        "user_id": draw(st.binary(min_size=8, max_size=8)).hex(),
        "messages": messages,
        "system_prompt": draw(_text),
        "created_at": draw(_moment(1971, 2200)),
        "token_count": draw(st.integers(0, 10**9)),
        "metadata": {
            "title": draw(st.none() | _text),
            "tags": draw(st.lists(_text, max_size=3)),
            "turn_count": draw(st.integers(0, 1000)),
            "tool_call_count": draw(st.integers(0, 1000)),
            "approval_count": draw(st.integers(0, 1000)),
            "custom": draw(st.dictionaries(_text, _text, max_size=3)),
        },
        "allowances": draw(st.lists(_allowance, max_size=4, unique_by=lambda a: a["id"])),
        "budget_snapshot": {
            "session_spent_usd": draw(st.floats(0, 1e6)),
            "config": {
                "session_max_usd": draw(st.floats(0, 1e6)),
                "per_action_max_usd": draw(st.floats(0, 1e6)),
                "warn_at_percent": draw(st.integers(0, 100)),
            },
            "last_updated": "2026-01-01T00:00:00Z",
        },
        "escape_state": {
            "remembered_paths": draw(st.lists(st.sampled_from(escape_dirs), unique=True))
        },
        "workspace_path": draw(st.none() | st.just("/home/u/proj")),
        "model": draw(st.none() | _text),
        "git_state": draw(
            st.none()
            | st.fixed_dictionaries({"branch": st.none() | _name, "commit": st.none() | _name})
        ),
    }


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(data))
    out["budget_snapshot"].pop("last_updated", None)
    out["escape_state"]["remembered_paths"].sort()
    out["allowances"].sort(key=lambda a: a["id"])
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SessionStore]]:
    root = tmp_path_factory.mktemp("stores")
    made = {
        "file": SessionStore(FileBackend(root / "sessions")),
        "sqlite": SessionStore(SqliteBackend(root / "astrid.db")),
    }
    yield made
    for store in made.values():
        store.close()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_documents_with_allowances_and_escape_paths_round_trip_through_every_store(
    data: st.DataObject, escape_dirs: list[str], stores: dict[str, SessionStore]
) -> None:
    doc = data.draw(documents(escape_dirs))
    session = AgentSession.from_document(SessionDocument.from_data(doc))
    assert _comparable(session.to_document().to_data()) == _comparable(doc)
    text = session.to_document().to_json_text()
    assert _comparable(SessionDocument.from_json_text(text).to_data()) == _comparable(doc)
    for store in stores.values():
        copy = {**doc, "id": str(uuid.uuid4())}  # examples replay: never reuse a stored id
        store.save(AgentSession.from_document(SessionDocument.from_data(copy)))
        loaded = store.load(copy["id"])
        assert loaded is not None
        assert _comparable(loaded.to_document().to_data()) == _comparable(copy)


# -- the decoder fails only with the typed error -------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, escape_dirs: list[str]) -> Any:
    """A valid document with one value somewhere replaced, removed or retyped."""
    doc: Any = draw(documents(escape_dirs))
    path: list[Any] = []
    node = doc
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    replacement = draw(
        st.one_of(
            _json,
            st.just(None),
            st.just(float("nan")),
            st.just(float("inf")),
            st.just(-1),
            st.just(""),
            st.just("../../etc/passwd"),
            st.just([]),
            st.just({}),
            st.just(10**30),
            st.just("\u0000"),
        )
    )
    if not path:
        return replacement if draw(st.booleans()) else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return doc


def _decode_everything(value: Any) -> None:
    """Decode ``value`` as a session the ways astrid does; only typed errors may escape."""
    try:
        doc = SessionDocument.from_data(value, source="fuzz")
    except SerializationError as exc:
        assert "fuzz" in str(exc)
        return
    session = AgentSession.from_document(doc)
    written = session.to_document().to_data()
    assert written["id"] == doc.id
    assert math.isfinite(session.budget_tracker.spent()) and session.budget_tracker.spent() >= 0


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_document_decodes_or_raises_the_typed_error(
    data: st.DataObject, escape_dirs: list[str]
) -> None:
    _decode_everything(data.draw(mutated(escape_dirs)))


@settings(max_examples=200, deadline=None)
@given(_json)
def test_arbitrary_json_decodes_or_raises_the_typed_error(value: Any) -> None:
    _decode_everything(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_decode_or_raise_the_typed_error(raw: bytes) -> None:
    try:
        doc = SessionDocument.from_json_text(raw, source="bytes")
    except SerializationError as exc:
        assert "bytes" in str(exc)
    else:
        assert isinstance(doc, SessionDocument)


@st.composite
def damaged_bytes(draw: st.DrawFn, escape_dirs: list[str], sid: str) -> bytes:
    """The bytes of a (possibly mutated) document, possibly cut or with bytes changed.

    A document id that is still a UUID is set to ``sid`` so the file name matches and decoding
    gets past the id check to the rest of the document.
    """
    value = draw(mutated(escape_dirs))
    if isinstance(value, dict) and isinstance(value.get("id"), str) and len(value["id"]) == 36:
        value["id"] = sid
    raw = json.dumps(value, indent=draw(st.sampled_from([None, 2]))).encode()
    action = draw(st.sampled_from(["keep", "cut", "flip", "insert"]))
    if action == "cut" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif action == "flip" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
    elif action == "insert":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    return raw


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "sessions"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_damaged_session_file_loads_or_raises_an_astrid_error(
    data: st.DataObject, escape_dirs: list[str], fuzz_dir: Path
) -> None:
    sid = str(uuid.uuid4())
    raw = data.draw(damaged_bytes(escape_dirs, sid))
    fuzz_dir.mkdir(parents=True, exist_ok=True)
    path = fuzz_dir / f"{sid}.json"
    path.write_bytes(raw)
    store = SessionStore(FileBackend(fuzz_dir))
    try:
        try:
            session = store.load(sid)
        except AstridError as exc:
            assert str(path) in str(exc) or sid in str(exc)
        else:
            assert session is not None and session.id.bare == sid
        store.list_sessions()  # never raises for one bad file
        store.backend.problems()  # type: ignore[attr-defined]
    finally:
        path.unlink()
        store.close()
