"""Capability tokens, resource patterns, the capability store and validator (spec §5, §10)."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from pydantic import TypeAdapter, ValidationError

from astrid.errors import (
    CapabilityError,
    InvalidPattern,
    InvalidSignature,
    SerializationError,
    TokenAlreadyUsed,
    TokenExpired,
    TokenNotFound,
    TokenRevoked,
)
from astrid.security.actions import Permission
from astrid.security.capabilities import (
    AuditEntryId,
    Authorized,
    CapabilityBackend,
    CapabilityStore,
    CapabilityToken,
    CapabilityValidator,
    MemoryCapabilityBackend,
    MultiPermissionCheck,
    NotAuthorized,
    ResourcePattern,
    ResourceUri,
    TokenBuilder,
    TokenScope,
    parse_uri,
    unix_seconds,
)
from astrid.security.crypto import (
    KeyPair,
    b64encode,
    decode_public_key,
    decode_signature,
    encode_public_key,
    encode_signature,
    verify_signature,
)

# ------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return KeyPair.generate()


def make_token(
    key: KeyPair,
    resource: str = "mcp://test:tool",
    perms: tuple[Permission, ...] = (Permission.INVOKE,),
    scope: TokenScope = TokenScope.SESSION,
    ttl: timedelta | None = None,
    single_use: bool = False,
    exact: bool = False,
) -> CapabilityToken:
    pattern = ResourcePattern.exact(resource) if exact else ResourcePattern.new(resource)
    return CapabilityToken.create_with_options(
        pattern, list(perms), scope, key.key_id, AuditEntryId.new(), key, ttl, single_use
    )


# ------------------------------------------------------------------------------------------
# crypto


def test_keypair_round_trip_and_encodings() -> None:
    kp = KeyPair.generate()
    again = KeyPair.from_private_bytes(kp.private_bytes())
    assert again.public_key_bytes == kp.public_key_bytes
    assert len(kp.public_key_bytes) == 32
    assert kp.key_id == kp.public_key_bytes[:8]
    sig = kp.sign(b"hello")
    assert len(sig) == 64
    assert verify_signature(kp.public_key_bytes, b"hello", sig)
    assert not verify_signature(kp.public_key_bytes, b"hellO", sig)
    assert not verify_signature(kp.public_key_bytes, b"hello", sig[:63])
    assert not verify_signature(kp.public_key_bytes[:31], b"hello", sig)
    assert kp.verify(b"hello", sig)
    assert len(encode_signature(sig)) == 88
    assert encode_signature(sig).endswith("==")
    assert len(encode_public_key(kp.public_key_bytes)) == 44
    assert decode_signature(encode_signature(sig)) == sig
    assert decode_public_key(kp.public_key_base64) == kp.public_key_bytes
    with pytest.raises(ValueError):
        decode_public_key(b64encode(b"x" * 31))
    with pytest.raises(ValueError):
        decode_signature("not base64!")
    assert "private" not in repr(kp).lower()


def test_rfc8032_vector() -> None:
    kp = KeyPair.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    assert kp.public_key_bytes == bytes.fromhex(
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert kp.sign(b"") == bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
        "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_import_does_not_load_cryptography() -> None:
    code = (
        "import astrid, astrid.security.capabilities, sys; "
        "assert 'cryptography' not in sys.modules, 'cryptography imported eagerly'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------
# tokens


def test_token_creation_and_verification(key: KeyPair) -> None:
    token = CapabilityToken.create(
        ResourcePattern.exact("mcp://filesystem:read_file"),
        [Permission.INVOKE],
        TokenScope.SESSION,
        key.key_id,
        AuditEntryId.new(),
        key,
        None,
    )
    assert not token.is_expired()
    assert token.expires_at is None
    assert not token.single_use
    assert token.issuer == key.public_key_bytes
    assert token.user_id == key.key_id
    token.verify_signature()
    token.validate()
    assert token.display_id == f"token:{token.id}"


def test_token_grants(key: KeyPair) -> None:
    token = make_token(key, "mcp://filesystem:*")
    assert token.grants("mcp://filesystem:read_file", Permission.INVOKE)
    assert token.grants("mcp://filesystem:write_file", Permission.INVOKE)
    assert not token.grants("mcp://filesystem:read_file", Permission.READ)
    assert not token.grants("mcp://memory:read", Permission.INVOKE)


def test_token_expiry(key: KeyPair) -> None:
    token = make_token(key, ttl=timedelta(seconds=-60))
    assert token.is_expired()
    with pytest.raises(TokenExpired, match="capability token expired: token:"):
        token.validate()


def test_token_clock_skew_tolerance(key: KeyPair) -> None:
    token = make_token(key, ttl=timedelta(seconds=-10))
    assert token.is_expired()
    assert token.is_expired_with_skew(0)
    assert not token.is_expired_with_skew(30)
    token.validate()


def test_token_future_expiry(key: KeyPair) -> None:
    token = make_token(key, ttl=timedelta(hours=1))
    assert not token.is_expired()
    assert token.expires_at is not None
    token.validate()


def test_token_builder(key: KeyPair) -> None:
    token = (
        TokenBuilder(ResourcePattern.new("mcp://test:*"))
        .permission(Permission.INVOKE)
        .permission(Permission.INVOKE)
        .permissions([Permission.READ, Permission.INVOKE])
        .persistent()
        .ttl(timedelta(hours=1))
        .single_use()
        .build(key.key_id, AuditEntryId.new(), key)
    )
    assert token.permissions == [Permission.INVOKE, Permission.READ]
    assert token.scope is TokenScope.PERSISTENT
    assert token.single_use
    assert token.is_single_use()
    assert token.expires_at is not None
    token.validate()

    default = TokenBuilder(ResourcePattern.new("mcp://x:y")).build(
        key.key_id, AuditEntryId.new(), key
    )
    assert default.scope is TokenScope.SESSION
    assert default.expires_at is None
    assert not default.single_use
    assert default.permissions == []
    back = TokenBuilder(ResourcePattern.new("mcp://x:y")).persistent().session()
    assert back.build(key.key_id, AuditEntryId.new(), key).scope is TokenScope.SESSION


def test_tamper_detection(key: KeyPair) -> None:
    token = make_token(key)
    token.verify_signature()
    tampered = token.model_copy(update={"permissions": [Permission.INVOKE, Permission.WRITE]})
    with pytest.raises(InvalidSignature, match="invalid token signature"):
        tampered.verify_signature()
    with pytest.raises(InvalidSignature):
        tampered.validate()

    # In-place mutation of the (frozen model's) list is caught as well.
    other = make_token(key)
    other.permissions.append(Permission.WRITE)
    assert not other.has_valid_signature()


@pytest.mark.parametrize(
    "update",
    [
        {"resource": ResourcePattern.new("mcp://test:*")},
        {"scope": TokenScope.PERSISTENT},
        {"single_use": True},
        {"user_id": b"\x00" * 8},
        {"approval_audit_id": AuditEntryId.new()},
        {"id": uuid4()},
        {"expires_at": datetime(2999, 1, 1, tzinfo=UTC)},
        {"issued_at": datetime(2000, 1, 1, tzinfo=UTC)},
    ],
)
def test_every_signed_field_is_covered(key: KeyPair, update: dict[str, object]) -> None:
    token = make_token(key)
    with pytest.raises(InvalidSignature):
        token.model_copy(update=update).verify_signature()


def test_foreign_issuer_token_refused(key: KeyPair) -> None:
    """A token signed by one key but claiming another key as issuer is refused everywhere."""
    attacker = KeyPair.generate()
    forged = make_token(attacker).model_copy(update={"issuer": key.public_key_bytes})
    with pytest.raises(InvalidSignature):
        forged.verify_signature()
    store = CapabilityStore()
    with pytest.raises(InvalidSignature):
        store.add(forged)
    assert not store.has_capability("mcp://test:tool", Permission.INVOKE)

    # Smuggled straight into the persistent backend: still refused (fail closed).
    backend = MemoryCapabilityBackend()
    persistent = make_token(attacker, scope=TokenScope.PERSISTENT).model_copy(
        update={"issuer": key.public_key_bytes}
    )
    backend.put_token(str(persistent.id), persistent.model_dump_json())
    store = CapabilityStore(backend)
    assert store.find_capability("mcp://test:tool", Permission.INVOKE) is None
    validator = CapabilityValidator(store).trust_issuer(key.public_key_bytes)
    assert isinstance(validator.check("mcp://test:tool", Permission.INVOKE), NotAuthorized)
    with pytest.raises(InvalidSignature):
        validator.validate_by_id(persistent.id)


def test_distinct_content_hashes(key: KeyPair) -> None:
    a = make_token(key)
    b = make_token(key)
    assert a.content_hash() != b.content_hash()
    assert len(a.content_hash()) == 64
    assert a.content_hash() == a.content_hash()


def test_token_equality_and_hash_by_id(key: KeyPair) -> None:
    token = make_token(key)
    same_id = token.model_copy(update={"permissions": [Permission.READ]})
    assert token == same_id
    assert hash(token) == hash(same_id)
    assert token != make_token(key)
    assert len({token, same_id}) == 1


def test_audit_entry_id_display() -> None:
    uid = UUID("12345678-9abc-def0-1234-56789abcdef0")
    audit = AuditEntryId(uid)
    assert str(audit) == "audit:12345678"
    assert audit == AuditEntryId(str(uid))
    assert AuditEntryId.new() != AuditEntryId.new()
    assert str(TokenScope.SESSION) == "session"
    assert TokenScope("persistent") is TokenScope.PERSISTENT


# ------------------------------------------------------------------------------------------
# signing data layout (pinned)

TOKEN_UUID_HEX = "00112233445566778899aabbccddeeff"
AUDIT_UUID_HEX = "ffeeddccbbaa99887766554433221100"


def _lp(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _vector_token(**overrides: object) -> tuple[KeyPair, CapabilityToken]:
    kp = KeyPair.from_private_bytes(bytes(range(32)))
    fields: dict[str, object] = {
        "id": UUID(TOKEN_UUID_HEX),
        "resource": ResourcePattern.new("mcp://filesystem:*"),
        "permissions": [Permission.INVOKE, Permission.READ],
        "issued_at": datetime(2024, 1, 1, 0, 0, 0, 750000, tzinfo=UTC),
        "expires_at": datetime(2024, 1, 2, tzinfo=UTC),
        "scope": TokenScope.PERSISTENT,
        "issuer": kp.public_key_bytes,
        "user_id": bytes([1, 2, 3, 4, 5, 6, 7, 8]),
        "approval_audit_id": AuditEntryId(UUID(AUDIT_UUID_HEX)),
        "single_use": True,
        "signature": bytes(64),
    }
    fields.update(overrides)
    return kp, CapabilityToken.model_validate(fields).signed_by(kp)


def test_signing_data_v1_layout_vector() -> None:
    kp, token = _vector_token()
    resource = b"mcp://filesystem:*"
    expected = (
        b"\x01"
        + _lp(bytes.fromhex(TOKEN_UUID_HEX))
        + _lp(resource)
        + struct.pack("<I", 2)
        + _lp(b"invoke")
        + _lp(b"read")
        + struct.pack("<q", 1704067200)  # 2024-01-01T00:00:00.75Z, floored
        + b"\x01"
        + struct.pack("<q", 1704153600)  # 2024-01-02T00:00:00Z
        + _lp(b"persistent")
        + kp.public_key_bytes
        + bytes([1, 2, 3, 4, 5, 6, 7, 8])
        + _lp(bytes.fromhex(AUDIT_UUID_HEX))
        + b"\x01"
    )
    assert token.signing_data() == expected
    assert len(expected) == 1 + 20 + 22 + 4 + 10 + 8 + 8 + 1 + 8 + 14 + 32 + 8 + 20 + 1
    assert token.signature == kp.sign(expected)  # ed25519 is deterministic
    token.verify_signature()
    assert token.content_hash() == hashlib.sha256(expected).hexdigest()


def test_signing_data_without_expiry_session_scope() -> None:
    kp, token = _vector_token(
        expires_at=None,
        scope=TokenScope.SESSION,
        single_use=False,
        permissions=[Permission.WRITE],
        resource=ResourcePattern.exact("file:///tmp/é"),
    )
    resource = "file:///tmp/é".encode()
    expected = (
        b"\x01"
        + _lp(bytes.fromhex(TOKEN_UUID_HEX))
        + _lp(resource)
        + struct.pack("<I", 1)
        + _lp(b"write")
        + struct.pack("<q", 1704067200)
        + b"\x00"
        + _lp(b"session")
        + kp.public_key_bytes
        + bytes([1, 2, 3, 4, 5, 6, 7, 8])
        + _lp(bytes.fromhex(AUDIT_UUID_HEX))
        + b"\x00"
    )
    assert token.signing_data() == expected


def test_unix_seconds_floors() -> None:
    assert unix_seconds(datetime(2024, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)) == 1704067200
    assert unix_seconds(datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)) == -1
    assert unix_seconds(datetime(1970, 1, 1, tzinfo=UTC)) == 0


def test_sub_second_precision_is_not_signed() -> None:
    _, token = _vector_token()
    doc = json.loads(token.model_dump_json())
    doc["issued_at"] = "2024-01-01T00:00:00.123456789Z"
    doc["expires_at"] = "2024-01-02T01:00:00.5+01:00"
    again = CapabilityToken.model_validate_json(json.dumps(doc))
    again.verify_signature()


# ------------------------------------------------------------------------------------------
# JSON


def test_json_round_trip(key: KeyPair) -> None:
    token = make_token(key, "mcp://filesystem:*", ttl=timedelta(hours=1), single_use=True)
    doc = json.loads(token.model_dump_json())
    assert set(doc) == {
        "id",
        "resource",
        "permissions",
        "issued_at",
        "expires_at",
        "scope",
        "issuer",
        "user_id",
        "approval_audit_id",
        "single_use",
        "signature",
    }
    assert doc["id"] == str(token.id)
    assert doc["resource"] == "mcp://filesystem:*"
    assert doc["permissions"] == ["invoke"]
    assert doc["issued_at"].endswith("Z")
    assert doc["scope"] == "session"
    assert doc["issuer"] == key.public_key_base64
    assert len(doc["issuer"]) == 44
    assert doc["user_id"] == list(key.key_id)
    assert doc["approval_audit_id"] == str(token.approval_audit_id.uuid)
    assert doc["single_use"] is True
    assert len(doc["signature"]) == 88

    back = CapabilityToken.model_validate_json(json.dumps(doc))
    assert back == token
    assert back.signing_data() == token.signing_data()
    assert back.resource.is_glob()
    back.validate()

    # Python-mode dump/validate round trip as well.
    assert CapabilityToken.model_validate(token.model_dump()).signing_data() == (
        token.signing_data()
    )


def test_json_defaults_and_nulls(key: KeyPair) -> None:
    token = make_token(key)
    doc = json.loads(token.model_dump_json())
    assert doc["expires_at"] is None  # Option fields are always written
    del doc["single_use"]
    del doc["expires_at"]
    doc["unknown_field"] = 1
    back = CapabilityToken.model_validate_json(json.dumps(doc))
    assert back.single_use is False
    assert back.expires_at is None
    back.verify_signature()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resource", "file:///home/user/../../etc/passwd"),
        ("resource", "mcp://[invalid"),
        ("issuer", "AAAA"),
        ("signature", "not-base64"),
        ("user_id", [1, 2, 3]),
        ("user_id", [1, 2, 3, 4, 5, 6, 7, 256]),
        ("scope", "forever"),
        ("permissions", ["READ"]),
        ("id", "token:not-a-uuid"),
    ],
)
def test_json_rejects_bad_fields(key: KeyPair, field: str, value: object) -> None:
    doc = json.loads(make_token(key).model_dump_json())
    doc[field] = value
    with pytest.raises(ValidationError):
        CapabilityToken.model_validate_json(json.dumps(doc))


# ------------------------------------------------------------------------------------------
# resource patterns


def test_pattern_exact_match() -> None:
    pattern = ResourcePattern.exact("mcp://filesystem:read_file")
    assert pattern.matches("mcp://filesystem:read_file")
    assert not pattern.matches("mcp://filesystem:write_file")


def test_pattern_single_wildcard() -> None:
    pattern = ResourcePattern.new("mcp://filesystem:*")
    assert pattern.matches("mcp://filesystem:read_file")
    assert pattern.matches("mcp://filesystem:write_file")
    assert not pattern.matches("mcp://memory:read")


def test_pattern_double_wildcard() -> None:
    pattern = ResourcePattern.new("file:///home/user/**")
    assert pattern.matches("file:///home/user/file.txt")
    assert pattern.matches("file:///home/user/deep/nested/file.txt")
    assert not pattern.matches("file:///etc/passwd")


def test_pattern_server_wildcard() -> None:
    pattern = ResourcePattern.new("mcp://*:read_*")
    assert pattern.matches("mcp://filesystem:read_file")
    assert pattern.matches("mcp://memory:read_graph")
    assert not pattern.matches("mcp://filesystem:write_file")


def test_pattern_star_crosses_separators() -> None:
    pattern = ResourcePattern.new("file:///tmp/*")
    assert pattern.matches("file:///tmp/a/b/c")
    assert ResourcePattern.new("mcp://*").matches("mcp://server:tool")


def test_parse_uri() -> None:
    uri = parse_uri("mcp://filesystem:read_file")
    assert uri == ResourceUri(scheme="mcp", server="filesystem", tool="read_file")
    uri = ResourcePattern.parse_uri("file:///home/user/file.txt")
    assert uri is not None
    assert uri.scheme == "file"
    assert uri.path == "/home/user/file.txt"
    assert uri.server is None
    assert parse_uri("exec://ls") == ResourceUri(scheme="exec", server="ls")
    assert parse_uri("net://example.com:443") == ResourceUri(
        scheme="net", server="example.com", tool="443"
    )
    assert parse_uri("no-scheme") is None


def test_resource_uri_round_trip() -> None:
    assert ResourceUri.mcp("filesystem", "read_file").to_uri() == "mcp://filesystem:read_file"
    assert ResourceUri.file("/home/user/file.txt").to_uri() == "file:///home/user/file.txt"
    assert ResourceUri(scheme="exec", server="ls").to_uri() == "exec://ls"
    assert ResourceUri(scheme="x").to_uri() == "x://"


def test_invalid_pattern() -> None:
    with pytest.raises(InvalidPattern, match=r"invalid resource pattern: mcp://\[invalid"):
        ResourcePattern.new("mcp://[invalid")
    assert issubclass(InvalidPattern, CapabilityError)


def test_brace_alone_is_not_glob() -> None:
    pattern = ResourcePattern.new("mcp://{a,b}:tool")
    assert not pattern.is_glob()
    assert pattern.matches("mcp://{a,b}:tool")
    assert not pattern.matches("mcp://a:tool")
    # With a glob metacharacter, braces are alternates.
    glob = ResourcePattern.new("mcp://{a,b}:*")
    assert glob.is_glob()
    assert glob.matches("mcp://a:tool")
    assert glob.matches("mcp://b:x")
    assert not glob.matches("mcp://c:x")


def test_pattern_serialization() -> None:
    adapter = TypeAdapter(ResourcePattern)
    pattern = ResourcePattern.new("mcp://filesystem:*")
    data = adapter.dump_json(pattern)
    assert data == b'"mcp://filesystem:*"'
    decoded = adapter.validate_json(data)
    assert decoded == pattern
    assert decoded.is_glob()
    with pytest.raises(ValidationError):
        adapter.validate_json(b'"file:///a/../b"')


def test_pattern_public_api() -> None:
    exact = ResourcePattern.exact("mcp://filesystem:read_file")
    glob = ResourcePattern.mcp_server("filesystem")
    other = ResourcePattern.exact("mcp://filesystem:write_file")
    assert exact.as_str() == "mcp://filesystem:read_file"
    assert glob.as_str() == "mcp://filesystem:*"
    assert str(exact) == "mcp://filesystem:read_file"
    assert str(glob) == "mcp://filesystem:*"
    assert not exact.is_glob()
    assert glob.is_glob()
    assert exact == ResourcePattern.exact("mcp://filesystem:read_file")
    assert exact != other
    assert hash(exact) != hash(other)
    assert hash(exact) == hash(ResourcePattern.new("mcp://filesystem:read_file"))
    # exact() makes "*" literal, and keeps it literal through a reload: the stored string is
    # an escaped glob (the original stored "mcp://s:*", which re-read as a wildcard).
    literal = ResourcePattern.exact("mcp://s:*")
    assert literal.as_str() == "mcp://s:\\*"
    assert literal.matches("mcp://s:*")
    assert not literal.matches("mcp://s:tool")
    reread = ResourcePattern.new(literal.as_str())
    assert reread.matches("mcp://s:*") and not reread.matches("mcp://s:tool")


def test_pattern_helpers() -> None:
    file_dir = ResourcePattern.file_dir("/home/user")
    assert file_dir.as_str() == "file:///home/user/**"
    assert file_dir.matches("file:///home/user/file.txt")
    assert file_dir.matches("file:///home/user/deep/nested/file.txt")
    assert not file_dir.matches("file:///etc/passwd")

    file_exact = ResourcePattern.file_exact("/home/user/file.txt")
    assert file_exact.matches("file:///home/user/file.txt")
    assert not file_exact.matches("file:///home/user/other.txt")

    tool = ResourcePattern.mcp_tool("filesystem", "read_file")
    assert tool.matches("mcp://filesystem:read_file")
    assert not tool.matches("mcp://filesystem:write_file")
    assert not tool.matches("mcp://other:read_file")

    server = ResourcePattern.mcp_server("filesystem")
    assert server.matches("mcp://filesystem:read_file")
    assert server.matches("mcp://filesystem:write_file")
    assert not server.matches("mcp://memory:read")


@pytest.mark.parametrize(
    "pattern",
    [
        "file:///home/user/../../../etc/passwd",
        "file:///home/user/..",
        "file://../etc/passwd",
        "file:///home/user/../../**",
        "..",
        "../x",
    ],
)
def test_traversal_rejected_in_new(pattern: str) -> None:
    with pytest.raises(InvalidPattern, match="path traversal detected"):
        ResourcePattern.new(pattern)


@pytest.mark.parametrize(
    "pattern",
    ["file:///home/user/../../../etc/passwd", "file:///home/user/..", "file://../etc/passwd"],
)
def test_traversal_rejected_in_exact(pattern: str) -> None:
    with pytest.raises(InvalidPattern, match="path traversal detected"):
        ResourcePattern.exact(pattern)


def test_traversal_rejected_in_helpers() -> None:
    with pytest.raises(InvalidPattern):
        ResourcePattern.file_dir("/home/../etc")
    with pytest.raises(InvalidPattern):
        ResourcePattern.file_exact("/home/user/..")


@pytest.mark.parametrize(
    "resource",
    [
        "file:///home/user/../../../etc/passwd",
        "file:///home/user/subdir/../../etc/shadow",
        "file:///home/user/..",
    ],
)
def test_traversal_rejected_at_match_time(resource: str) -> None:
    assert not ResourcePattern.new("file:///home/user/**").matches(resource)


def test_traversal_rejected_for_exact_resource_match() -> None:
    pattern = ResourcePattern.exact("mcp://filesystem:read_file")
    assert not pattern.matches("mcp://filesystem:read_file/../../../etc/passwd")


def test_double_dots_inside_names_allowed() -> None:
    pattern = ResourcePattern.new("file:///home/user/**")
    assert pattern.matches("file:///home/user/file..txt")
    assert pattern.matches("file:///home/user/a...b")
    assert ResourcePattern.new("file:///home/user/file..txt").matches("file:///home/user/file..txt")
    assert ResourcePattern.exact("file:///a...b").matches("file:///a...b")


# ------------------------------------------------------------------------------------------
# store


def test_memory_backend_satisfies_protocol() -> None:
    assert isinstance(MemoryCapabilityBackend(), CapabilityBackend)


def test_store_add_has_get(key: KeyPair) -> None:
    store = CapabilityStore()
    token = make_token(key, "mcp://test:tool", exact=True)
    store.add(token)
    assert store.has_capability("mcp://test:tool", Permission.INVOKE)
    assert not store.has_capability("mcp://test:tool", Permission.READ)
    assert not store.has_capability("mcp://test:other", Permission.INVOKE)
    assert store.get(token.id) == token
    assert store.get(uuid4()) is None


def test_store_revoke(key: KeyPair) -> None:
    store = CapabilityStore()
    token = make_token(key)
    store.add(token)
    store.revoke(token.id)
    with pytest.raises(TokenRevoked, match="capability token revoked"):
        store.get(token.id)
    assert not store.has_capability("mcp://test:tool", Permission.INVOKE)
    assert store.is_revoked(token.id)
    # Re-adding a revoked session token does not bring it back (our fix).
    store.add(token)
    assert not store.has_capability("mcp://test:tool", Permission.INVOKE)
    with pytest.raises(TokenRevoked):
        store.use_token(token.id)


def test_store_clear_session(key: KeyPair) -> None:
    store = CapabilityStore()
    store.add(make_token(key))
    assert store.has_capability("mcp://test:tool", Permission.INVOKE)
    store.clear_session()
    assert not store.has_capability("mcp://test:tool", Permission.INVOKE)
    assert store.list_tokens() == []


def test_store_find_with_glob(key: KeyPair) -> None:
    store = CapabilityStore()
    token = make_token(key, "mcp://filesystem:*")
    store.add(token)
    found = store.find_capability("mcp://filesystem:read_file", Permission.INVOKE)
    assert found == token
    assert store.find_capability("mcp://memory:read", Permission.INVOKE) is None


def test_store_add_validates(key: KeyPair) -> None:
    store = CapabilityStore()
    with pytest.raises(TokenExpired):
        store.add(make_token(key, ttl=timedelta(seconds=-60)))
    tampered = make_token(key).model_copy(update={"permissions": [Permission.WRITE]})
    with pytest.raises(InvalidSignature):
        store.add(tampered)
    # Within the 30 s skew it is accepted, but it no longer grants anything.
    recent = make_token(key, ttl=timedelta(seconds=-10))
    store.add(recent)
    assert store.get(recent.id) == recent
    assert not store.has_capability("mcp://test:tool", Permission.INVOKE)
    assert store.list_tokens() == []


def test_store_skips_tampered_session_token(key: KeyPair) -> None:
    store = CapabilityStore()
    token = make_token(key)
    store.add(token)
    token.permissions.append(Permission.WRITE)  # mutate the stored object in place
    assert not store.has_capability("mcp://test:tool", Permission.WRITE)
    assert not store.has_capability("mcp://test:tool", Permission.INVOKE)


def test_persistent_token_survives_reopen(key: KeyPair) -> None:
    backend = MemoryCapabilityBackend()
    store = CapabilityStore(backend)
    assert store.has_persistence
    token = make_token(key, "mcp://persist:*", scope=TokenScope.PERSISTENT)
    store.add(token)
    assert len(backend.list_tokens()) == 1
    store.clear_session()  # persistent tokens are not session tokens
    assert store.has_capability("mcp://persist:tool", Permission.INVOKE)

    reopened = CapabilityStore(backend)
    assert reopened.has_capability("mcp://persist:tool", Permission.INVOKE)
    got = reopened.get(token.id)
    assert got == token
    assert got is not None
    got.validate()
    assert reopened.list_tokens() == [token]


def test_revocation_and_use_survive_reopen(key: KeyPair) -> None:
    backend = MemoryCapabilityBackend()
    store = CapabilityStore(backend)
    revoked = make_token(key, "mcp://a:*", scope=TokenScope.PERSISTENT)
    single = make_token(key, "mcp://b:*", scope=TokenScope.PERSISTENT, single_use=True)
    store.add(revoked)
    store.add(single)
    store.revoke(revoked.id)
    assert backend.get_token(str(revoked.id)) is None
    assert store.use_token(single.id) == single

    reopened = CapabilityStore(backend)
    with pytest.raises(TokenRevoked):
        reopened.get(revoked.id)
    assert reopened.is_used(single.id)
    with pytest.raises(TokenAlreadyUsed):
        reopened.use_token(single.id)
    assert not reopened.has_capability("mcp://b:tool", Permission.INVOKE)
    assert "revoked_count=1" in repr(reopened)
    assert "used_count=1" in repr(reopened)


def test_persistent_without_backend_falls_back_to_session(key: KeyPair) -> None:
    store = CapabilityStore()
    token = make_token(key, scope=TokenScope.PERSISTENT)
    store.add(token)
    assert store.has_capability("mcp://test:tool", Permission.INVOKE)
    assert store.cleanup_expired() == 0
    store.clear_session()
    assert store.get(token.id) is None


def test_backend_load_skips_unparsable_ids(key: KeyPair) -> None:
    backend = MemoryCapabilityBackend()
    backend.add_revoked("garbage")
    backend.add_used("also garbage")
    token = make_token(key)
    backend.add_revoked(str(token.id))
    store = CapabilityStore(backend)
    assert store.is_revoked(token.id)
    assert "revoked_count=1" in repr(store)
    assert "used_count=0" in repr(store)


def test_store_get_corrupt_persistent_json(key: KeyPair) -> None:
    backend = MemoryCapabilityBackend()
    tid = uuid4()
    backend.put_token(str(tid), "{not json")
    store = CapabilityStore(backend)
    with pytest.raises(SerializationError):
        store.get(tid)
    assert store.find_capability("mcp://test:tool", Permission.INVOKE) is None
    assert store.list_tokens() == []


def test_mark_used_and_use_token(key: KeyPair) -> None:
    store = CapabilityStore()
    tid = uuid4()
    assert not store.is_used(tid)
    store.mark_used(tid)
    assert store.is_used(tid)
    with pytest.raises(TokenAlreadyUsed, match="single-use token already used"):
        store.mark_used(tid)

    with pytest.raises(TokenNotFound, match="capability token not found"):
        store.use_token(uuid4())

    reusable = make_token(key, "mcp://r:*")
    store.add(reusable)
    assert store.use_token(reusable.id) == reusable
    assert store.use_token(reusable.id) == reusable
    assert not store.is_used(reusable.id)

    once = make_token(key, "mcp://once:*", single_use=True)
    store.add(once)
    assert store.has_capability("mcp://once:x", Permission.INVOKE)
    assert store.use_token(once.id) == once
    with pytest.raises(TokenAlreadyUsed):
        store.use_token(once.id)
    # A spent single-use token no longer grants anything (fail closed).
    assert not store.has_capability("mcp://once:x", Permission.INVOKE)


def test_use_token_single_use_is_atomic(key: KeyPair) -> None:
    store = CapabilityStore(MemoryCapabilityBackend())
    token = make_token(key, scope=TokenScope.PERSISTENT, single_use=True)
    store.add(token)
    successes: list[int] = []
    failures: list[int] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        try:
            store.use_token(token.id)
            successes.append(n)
        except TokenAlreadyUsed:
            failures.append(n)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(successes) == 1
    assert len(failures) == 7


def test_list_tokens_and_cleanup_expired(key: KeyPair) -> None:
    backend = MemoryCapabilityBackend()
    store = CapabilityStore(backend)
    live_session = make_token(key, "mcp://s:*")
    expired_session = make_token(key, "mcp://s2:*", ttl=timedelta(seconds=-5))
    live_persistent = make_token(key, "mcp://p:*", scope=TokenScope.PERSISTENT)
    expired_persistent = make_token(
        key, "mcp://p2:*", scope=TokenScope.PERSISTENT, ttl=timedelta(seconds=-5)
    )
    revoked_persistent = make_token(key, "mcp://p3:*", scope=TokenScope.PERSISTENT)
    for token in (
        live_session,
        expired_session,
        live_persistent,
        expired_persistent,
        revoked_persistent,
    ):
        store.add(token)
    store.revoke(revoked_persistent.id)
    assert set(store.list_tokens()) == {live_session, live_persistent}
    assert len(backend.list_tokens()) == 2
    assert store.cleanup_expired() == 1
    assert len(backend.list_tokens()) == 1
    assert store.cleanup_expired() == 0


def test_store_repr() -> None:
    text = repr(CapabilityStore())
    assert text == (
        "CapabilityStore(session_tokens=0, revoked_count=0, used_count=0, has_persistence=False)"
    )


# ------------------------------------------------------------------------------------------
# validator


def test_validator_authorization(key: KeyPair) -> None:
    store = CapabilityStore()
    token = make_token(key, "mcp://test:tool", exact=True)
    store.add(token)
    validator = CapabilityValidator(store)
    result = validator.check("mcp://test:tool", Permission.INVOKE)
    assert isinstance(result, Authorized)
    assert result.is_authorized()
    assert result.token == token
    denied = validator.check("mcp://test:other", Permission.INVOKE)
    assert isinstance(denied, NotAuthorized)
    assert not denied.is_authorized()
    assert denied.token is None
    assert denied.resource == "mcp://test:other"
    assert denied.permission is Permission.INVOKE


def test_validator_untrusted_issuer_rejected(key: KeyPair) -> None:
    store = CapabilityStore()
    token = make_token(key)
    store.add(token)
    other = KeyPair.generate()
    strict = CapabilityValidator(store).trust_issuer(other.public_key_bytes)
    with pytest.raises(InvalidSignature):
        strict.validate_token(token)
    assert not strict.check("mcp://test:tool", Permission.INVOKE).is_authorized()
    trusting = CapabilityValidator(store).trust_issuer(key.public_key_bytes)
    trusting.validate_token(token)
    assert trusting.check("mcp://test:tool", Permission.INVOKE).is_authorized()
    assert trusting.trusted_issuers == (key.public_key_bytes,)


def test_validator_expiry_uses_no_skew(key: KeyPair) -> None:
    store = CapabilityStore()
    token = make_token(key, ttl=timedelta(seconds=-10))
    store.add(token)  # accepted within the store's 30 s skew
    validator = CapabilityValidator(store)
    with pytest.raises(TokenExpired):
        validator.validate_token(token)
    with pytest.raises(TokenExpired):
        validator.validate_by_id(token.id)
    assert not validator.check("mcp://test:tool", Permission.INVOKE).is_authorized()


def test_validator_validate_by_id(key: KeyPair) -> None:
    store = CapabilityStore()
    token = make_token(key)
    store.add(token)
    validator = CapabilityValidator(store)
    validator.validate_by_id(token.id)
    with pytest.raises(TokenNotFound):
        validator.validate_by_id(uuid4())
    store.revoke(token.id)
    with pytest.raises(TokenRevoked):
        validator.validate_by_id(token.id)


def test_multi_permission_check(key: KeyPair) -> None:
    store = CapabilityStore()
    store.add(make_token(key, "mcp://test:read", exact=True))
    validator = CapabilityValidator(store)
    check = (
        MultiPermissionCheck()
        .add("mcp://test:read", Permission.INVOKE)
        .add("mcp://test:write", Permission.INVOKE)
    )
    results = check.check_all(validator)
    assert len(results) == 2
    assert results[0][2].is_authorized()
    assert not results[1][2].is_authorized()
    assert not check.all_authorized(validator)
    needs = check.needs_approval(validator)
    assert needs == [("mcp://test:write", Permission.INVOKE)]
    assert MultiPermissionCheck().all_authorized(validator)
