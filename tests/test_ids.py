"""Session ids: UUID v4, bare in JSON, strict parsing."""

from __future__ import annotations

import uuid

import pytest

from astrid.errors import AstridError, InvalidSessionId
from astrid.ids import SessionId, validate_session_id


def test_new_is_v4_and_displays_with_prefix() -> None:
    sid = SessionId.new()
    assert sid.uuid.version == 4
    assert str(sid) == f"session:{sid.bare}"
    assert sid.bare == str(sid.uuid)


def test_equality_and_hash() -> None:
    u = uuid.uuid4()
    assert SessionId(u) == SessionId(u)
    assert len({SessionId(u), SessionId(u)}) == 1
    assert SessionId(u) != SessionId.new()


def test_parse_accepts_the_forms_the_original_accepts() -> None:
    u = uuid.uuid4()
    for text in (str(u), u.hex, str(u).upper(), f"{{{u}}}", f"urn:uuid:{u}", f"session:{u}"):
        assert SessionId.parse(text).bare == str(u)


@pytest.mark.parametrize(
    "bad", ["", "not-a-uuid", "../../etc/passwd", "0" * 31, "x" * 500, "/tmp/a.json"]
)
def test_parse_rejects_non_uuids_with_a_typed_error(bad: str) -> None:
    with pytest.raises(InvalidSessionId) as info:
        validate_session_id(bad)
    assert isinstance(info.value, AstridError)
    assert "not a UUID" in str(info.value)
