"""The on-disk session document (the original's ``SerializableSession``) and ``GitState``.

Every document the Rust astrid writes reads here, and every document written here reads there:
the same keys, ``null`` for empty options, pretty JSON with raw UTF-8. Unknown top-level keys,
unknown metadata keys and messages of unknown shape are kept and written back verbatim.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
)

from .errors import SerializationError
from .messages import Message
from .security.allowances import Allowance
from .security.budget import BudgetSnapshot
from .security.escape import EscapeState
from .timeutil import Timestamp, utcnow

MAX_STORED_INT = 2**63 - 1
"""The largest ``token_count`` a store can hold (SQLite ``INTEGER``, PostgreSQL ``bigint``):
a larger one is refused when the document is decoded, not by the database mid-write."""


class SessionMetadata(BaseModel):
    """Title, tags, counters and free-form string pairs of a session.

    The original requires every key but ``title``; astrid fills missing ones with defaults
    (a deliberate leniency: older or hand-made documents still load).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    title: str | None = None
    tags: list[str] = Field(default_factory=list)
    turn_count: int = Field(default=0, ge=0)
    tool_call_count: int = Field(default=0, ge=0)
    approval_count: int = Field(default=0, ge=0)
    custom: dict[str, str] = Field(default_factory=dict)


class GitState(BaseModel):
    """Branch and commit of the workspace when the session was saved (either may be None)."""

    model_config = ConfigDict(extra="allow")

    branch: str | None = None
    commit: str | None = None


def _user_id_hex(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("user_id must be a string of 16 hex digits")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"user_id {value[:40]!r} is not hex") from None
    if len(raw) != 8:
        raise ValueError(f"user_id must be 8 bytes (16 hex digits), got {len(raw)} bytes")
    return value.lower()


class SessionDocument(BaseModel):
    """One session as stored: conversation, metadata and the persisted security state."""

    model_config = ConfigDict(extra="allow")

    id: str
    user_id: str
    messages: list[Message]
    system_prompt: str
    created_at: Timestamp
    token_count: int = Field(ge=0, le=MAX_STORED_INT)
    metadata: SessionMetadata
    allowances: list[Allowance] = Field(default_factory=list)
    budget_snapshot: BudgetSnapshot | None = None
    escape_state: EscapeState | None = None
    workspace_path: str | None = None
    model: str | None = None
    git_state: GitState | None = None
    parent_id: str | None = None
    """astrid's addition: the parent session of a sub-agent (written only when set)."""

    @model_serializer(mode="wrap")
    def _drop_unset_parent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("parent_id") is None:
            data.pop("parent_id", None)
        return data

    @field_validator("parent_id", mode="before")
    @classmethod
    def _check_parent(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("parent_id must be a UUID string")
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            raise ValueError(f"parent_id {value[:80]!r} is not a UUID") from None

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("id must be a UUID string")
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            raise ValueError(f"id {value[:80]!r} is not a UUID") from None

    @field_validator("user_id", mode="before")
    @classmethod
    def _check_user_id(cls, value: Any) -> str:
        return _user_id_hex(value)

    @field_validator("messages", mode="before")
    @classmethod
    def _decode_messages(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [m if isinstance(m, Message) else Message.from_json(m) for m in value]
        return value

    @field_serializer("messages")
    def _encode_messages(self, messages: list[Message]) -> list[Any]:
        return [m.to_json() for m in messages]

    @classmethod
    def from_json_text(cls, text: str | bytes, *, source: str = "<document>") -> SessionDocument:
        """Decode a document; errors name ``source`` and the offending key."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise SerializationError(f"{source}: invalid JSON: {exc}") from None
        return cls.from_data(data, source=source)

    @classmethod
    def from_data(cls, data: Any, *, source: str = "<document>") -> SessionDocument:
        """Validate already-parsed JSON; errors name ``source`` and the offending key."""
        if not isinstance(data, dict):
            raise SerializationError(
                f"{source}: a session document must be a JSON object, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SerializationError(f"{source}: {describe_validation_error(exc)}") from None

    def to_data(self) -> dict[str, Any]:
        """The JSON-ready dict, every key present (``null`` for empty options)."""
        return self.model_dump(mode="json")

    def to_json_text(self) -> str:
        """Pretty JSON like ``serde_json::to_string_pretty`` (2 spaces, raw UTF-8)."""
        return json.dumps(self.to_data(), indent=2, ensure_ascii=False)

    @classmethod
    def new_empty(cls, session_id: str, *, system_prompt: str = "") -> SessionDocument:
        """A minimal valid document (used by tests and importers)."""
        return cls(
            id=session_id,
            user_id="00" * 8,
            messages=[],
            system_prompt=system_prompt,
            created_at=utcnow(),
            token_count=0,
            metadata=SessionMetadata(),
        )


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each failing key path and why (for error messages)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        parts.append(f"key {loc!r}: {err.get('msg', 'invalid')}")
    more = exc.error_count() - 5
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
