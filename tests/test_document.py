"""The session document: the original's shape, both ways, and property-based round trips."""

from __future__ import annotations

import json
import string
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astrid import AgentSession, Message, SessionDocument
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import SerializationError
from astrid.security.allowances import Allowance, ExactTool
from astrid.store import SessionStore
from astrid.timeutil import format_rfc3339
from tests.originals import RUST_DOCUMENT


def test_the_originals_illustrative_document_loads() -> None:
    doc = SessionDocument.from_json_text(RUST_DOCUMENT, source="example.json")
    session = AgentSession.from_document(doc)
    assert session.id.bare == "6f1c2a8e-0b7d-4f4e-9a51-2d3c4b5a6978"
    assert session.user_id == bytes(range(1, 9))
    assert len(session.messages) == 4
    assert session.token_count == 205  # taken verbatim
    assert session.budget_tracker.spent() == 0.0123
    assert session.created_at == datetime(2026, 2, 22, 3, 48, 10, 123456, tzinfo=UTC)
    assert session.model == "claude-sonnet-4-20250514"


def test_written_document_has_every_key_and_the_originals_format() -> None:
    text = AgentSession("p").to_document().to_json_text()
    data = json.loads(text)
    assert list(data) == [
        "id", "user_id", "messages", "system_prompt", "created_at", "token_count", "metadata",
        "allowances", "budget_snapshot", "escape_state", "workspace_path", "model", "git_state",
    ]  # fmt: skip
    assert data["workspace_path"] is None and data["git_state"] is None
    assert data["created_at"].endswith("Z")
    assert text.startswith('{\n  "id": ')
    assert "0.0" in text  # floats keep a decimal, like serde_json


def test_non_ascii_is_written_raw() -> None:
    session = AgentSession("héllo ✓")
    assert "héllo ✓" in session.to_document().to_json_text()


def test_errors_name_the_source_and_key() -> None:
    cases: list[tuple[str, str]] = [
        ("{not json", "invalid JSON"),
        ("[]", "JSON object"),
        (RUST_DOCUMENT.replace('"token_count": 205', '"token_count": "x"'), "token_count"),
        (RUST_DOCUMENT.replace('"0102030405060708"', '"zz"'), "user_id"),
        (RUST_DOCUMENT.replace('"system_prompt": "You are ...",', ""), "system_prompt"),
    ]
    for text, needle in cases:
        try:
            SessionDocument.from_json_text(text, source="/s/x.json")
        except SerializationError as exc:
            assert "/s/x.json" in str(exc) and needle in str(exc), str(exc)
        else:
            raise AssertionError(f"accepted: {needle}")


# -- property-based round trips ---------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_name = st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=10)
_json_leaf = st.none() | st.booleans() | st.integers(-1000, 1000) | _text
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_name, inner, max_size=3),
    max_leaves=8,
)

_known_message = st.one_of(
    st.builds(lambda t: {"role": "user", "content": t}, _text),
    st.builds(
        lambda i, n, a: {"role": "assistant", "content": [{"id": i, "name": n, "arguments": a}]},
        _name,
        _name,
        _json,
    ),
    st.builds(
        lambda c, t, e: {"role": "tool", "content": {"call_id": c, "content": t, "is_error": e}},
        _name,
        _text,
        st.booleans(),
    ),
    st.builds(lambda t: {"role": "system", "content": [{"type": "text", "text": t}]}, _text),
)
_unknown_message = st.one_of(
    st.builds(
        lambda r, c: {"role": r, "content": c}, _name.filter(lambda r: r.islower() is False), _json
    ),
    st.builds(lambda c: {"role": "user", "content": c}, st.integers() | st.none()),
    _json,
)


def _allowance(seed: int) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=seed + 1)),
        "action_pattern": {"type": "exact_tool", "server": "s", "tool": f"t{seed}"},
        "created_at": "2025-01-01T00:00:00Z",
        "expires_at": None,
        "max_uses": None,
        "uses_remaining": None,
        "session_only": True,
        "workspace_root": None,
        "signature": "A" * 86 + "==",
    }


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    moment = draw(
        st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1))
    ).replace(tzinfo=UTC)
    doc: dict[str, Any] = {
        "id": str(draw(st.uuids())),
        "user_id": draw(st.binary(min_size=8, max_size=8)).hex(),
        "messages": draw(st.lists(_known_message | _unknown_message, max_size=6)),
        "system_prompt": draw(_text),
        "created_at": format_rfc3339(moment),
        "token_count": draw(st.integers(0, 10**9)),
        "metadata": {
            "title": draw(st.none() | _text),
            "tags": draw(st.lists(_text, max_size=3)),
            "turn_count": draw(st.integers(0, 1000)),
            "tool_call_count": draw(st.integers(0, 1000)),
            "approval_count": draw(st.integers(0, 1000)),
            "custom": draw(st.dictionaries(_name, _text, max_size=3)),
        },
        "allowances": [_allowance(i) for i in range(draw(st.integers(0, 3)))],
        "budget_snapshot": {
            "session_spent_usd": draw(st.floats(0, 1e6, allow_nan=False)),
            "config": {
                "session_max_usd": draw(st.floats(0, 1e6, allow_nan=False)),
                "per_action_max_usd": draw(st.floats(0, 1e6, allow_nan=False)),
                "warn_at_percent": draw(st.integers(0, 100)),
            },
            "last_updated": "2026-01-01T00:00:00Z",
        },
        "escape_state": {"remembered_paths": []},
        "workspace_path": draw(st.none() | st.just("/home/u/proj")),
        "model": draw(st.none() | _text),
        "git_state": draw(
            st.none()
            | st.fixed_dictionaries({"branch": st.none() | _name, "commit": st.none() | _name})
        ),
    }
    for key, value in draw(
        st.dictionaries(_name.map(lambda k: "x_" + k), _json, max_size=2)
    ).items():
        doc[key] = value
    return doc


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    out["budget_snapshot"].pop("last_updated", None)
    return out


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_document_session_document_keeps_every_field(doc: dict[str, Any]) -> None:
    loaded = SessionDocument.from_data(doc)
    session = AgentSession.from_document(loaded)
    written = session.to_document().to_data()
    assert _comparable(written) == _comparable(doc)
    # and the text form reads back to the same thing
    again = SessionDocument.from_json_text(session.to_document().to_json_text())
    assert _comparable(again.to_data()) == _comparable(doc)


@settings(max_examples=150)
@given(_json)
def test_decoder_either_loads_or_raises_the_typed_error(value: Any) -> None:
    try:
        doc = SessionDocument.from_data(value)
    except SerializationError as exc:
        assert str(exc)
    else:
        assert isinstance(doc, SessionDocument)


# -- timestamps come back as they were written (issue 14 item 12) ----------------------------


def _with_times(created: str, allowance_created: str, expires: str) -> str:
    data = json.loads(RUST_DOCUMENT)
    data["created_at"] = created
    allowance = Allowance.create(ExactTool(server="fs", tool="read"), session_only=True)
    stored = allowance.model_dump(mode="json")
    stored.update(created_at=allowance_created, expires_at=expires)
    data["allowances"] = [stored]
    return json.dumps(data)


TIMES = ("2026-02-22T03:48:10.123456789Z", "2026-02-22T03:48:10.5Z", "2099-01-01T00:00:00.000Z")


def test_a_documents_timestamps_are_written_back_as_they_were_read() -> None:
    doc = SessionDocument.from_json_text(_with_times(*TIMES))
    data = json.loads(doc.to_json_text())
    assert data["created_at"] == TIMES[0]
    [allowance] = data["allowances"]
    assert (allowance["created_at"], allowance["expires_at"]) == TIMES[1:]
    again = AgentSession.from_document(doc).to_document().to_data()
    assert again["created_at"] == TIMES[0]
    assert [(a["created_at"], a["expires_at"]) for a in again["allowances"]] == [TIMES[1:]]


def test_a_changed_timestamp_is_written_in_the_usual_form() -> None:
    session = AgentSession.from_document(SessionDocument.from_json_text(_with_times(*TIMES)))
    session.created_at = session.created_at.replace(microsecond=250000)
    assert session.to_document().to_data()["created_at"] == "2026-02-22T03:48:10.250000Z"


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_stores_keep_the_timestamps_a_document_was_read_with(kind: str, tmp_path: Path) -> None:
    backend: Any = (
        SqliteBackend(tmp_path / "a.db") if kind == "sqlite" else FileBackend(tmp_path / "s")
    )
    store = SessionStore(backend)
    session = AgentSession.from_document(SessionDocument.from_json_text(_with_times(*TIMES)))
    store.save(session)
    loaded = store.load(session.id)
    assert loaded is not None
    loaded.add_message(Message.user("one more"))
    store.save(loaded)
    record = backend.load(session.id.bare)
    assert record is not None and record.state["created_at"] == TIMES[0]
    [allowance] = record.state["allowances"]
    assert (allowance["created_at"], allowance["expires_at"]) == TIMES[1:]
    store.close()
