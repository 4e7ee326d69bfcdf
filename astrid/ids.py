"""Session ids: UUID v4, written as a bare UUID in JSON and validated before touching a path."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic_core import core_schema

from .errors import InvalidSessionId


class SessionId:
    """A session identifier: a UUID; ``str()`` gives ``session:<uuid>``, ``.bare`` the UUID."""

    __slots__ = ("_bare", "_uuid")

    def __init__(self, value: uuid.UUID) -> None:
        if not isinstance(value, uuid.UUID):
            raise InvalidSessionId(f"session id must be a UUID, got {value!r}")
        self._uuid = value
        self._bare = str(value)

    @classmethod
    def new(cls) -> SessionId:
        """A fresh random (v4) id."""
        return cls(uuid.uuid4())

    @classmethod
    def parse(cls, text: str | SessionId | uuid.UUID) -> SessionId:
        """Parse a UUID in any form ``uuid.UUID`` accepts, or ``session:<uuid>``.

        Raises ``InvalidSessionId`` naming the value; never falls back to a random id.
        """
        if isinstance(text, SessionId):
            return text
        if isinstance(text, uuid.UUID):
            return cls(text)
        if not isinstance(text, str):
            raise InvalidSessionId(f"session id must be a string, got {type(text).__name__}")
        raw = text.strip()
        if raw.startswith("session:"):
            raw = raw[len("session:") :]
        try:
            return cls(uuid.UUID(raw))
        except ValueError:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise InvalidSessionId(f"invalid session id {shown!r}: not a UUID") from None

    @property
    def uuid(self) -> uuid.UUID:
        """The UUID."""
        return self._uuid

    @property
    def bare(self) -> str:
        """The plain lowercase hyphenated UUID (file names, JSON)."""
        return self._bare

    def __str__(self) -> str:
        return f"session:{self._uuid}"

    def __repr__(self) -> str:
        return f"SessionId({self.bare!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SessionId):
            return self._uuid == other._uuid
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._uuid)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.bare, when_used="always"
            ),
        )


def validate_session_id(value: str | SessionId | uuid.UUID) -> str:
    """Return the canonical bare UUID for ``value`` or raise ``InvalidSessionId``."""
    return SessionId.parse(value).bare
