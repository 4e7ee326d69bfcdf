"""Capability tokens: signed, scoped grants of permissions on resource patterns.

A port of the original ``astrid_capabilities`` crate (token, pattern, store, validator).
The signing layout is the original's format v1, byte for byte, so tokens interoperate.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Protocol, runtime_checkable
from uuid import UUID, uuid4

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    PlainSerializer,
    ValidationError,
)
from pydantic_core import core_schema

from astrid._exports import module_attributes
from astrid.errors import (
    InvalidPattern,
    InvalidSignature,
    PluginError,
    SerializationError,
    TokenAlreadyUsed,
    TokenExpired,
    TokenNotFound,
    TokenRevoked,
)
from astrid.security.actions import Permission
from astrid.security.crypto import (
    KEY_ID_LEN,
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    KeyPair,
    decode_public_key,
    decode_signature,
    encode_public_key,
    encode_signature,
    sha256_hex,
    verify_signature,
)
from astrid.security.globs import GlobSyntaxError, compile_glob, escape_glob
from astrid.timeutil import Timestamp, to_utc, utcnow

__all__ = [
    "DEFAULT_CLOCK_SKEW_SECS",
    "SIGNING_DATA_VERSION",
    "AuditEntryId",
    "AuthorizationResult",
    "Authorized",
    "CapabilityBackend",
    "CapabilityStore",
    "CapabilityToken",
    "CapabilityValidator",
    "ClosableBackend",
    "MemoryCapabilityBackend",
    "MultiPermissionCheck",
    "NotAuthorized",
    "ResourcePattern",
    "ResourceUri",
    "Revocation",
    "TokenBuilder",
    "TokenScope",
    "UseClaimer",
    "parse_uri",
    "unix_seconds",
]

SIGNING_DATA_VERSION = 0x01
"""Version byte at the start of ``CapabilityToken.signing_data()`` (format v1)."""

DEFAULT_CLOCK_SKEW_SECS = 30
"""Clock skew tolerated by ``CapabilityToken.validate()``, in seconds."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)


def unix_seconds(value: datetime) -> int:
    """Whole Unix seconds, floored (like chrono's ``timestamp()``), computed exactly."""
    return (to_utc(value) - _EPOCH) // _ONE_SECOND


# --------------------------------------------------------------------------------------------
# Resource patterns


def _contains_path_traversal(value: str) -> bool:
    """True if the part after the first ``://`` has a ``/``-separated segment exactly ``..``."""
    _, sep, rest = value.partition("://")
    path = rest if sep else value
    return ".." in path.split("/")


def _traversal_error(pattern: str) -> InvalidPattern:
    reason = "path traversal detected: pattern contains '..' segment"
    return InvalidPattern(f"invalid resource pattern: {pattern} - {reason}")


class ResourcePattern:
    """A resource pattern: an exact string or a globset glob (``*`` crosses ``/`` and ``:``)."""

    __slots__ = ("_matcher", "_pattern")

    def __init__(self, pattern: str, *, glob: bool) -> None:
        """Low-level constructor; prefer ``new`` or ``exact``, which check for traversal."""
        if _contains_path_traversal(pattern):
            raise _traversal_error(pattern)
        self._pattern = pattern
        self._matcher = None
        if glob:
            try:
                self._matcher = compile_glob(pattern)
            except GlobSyntaxError as exc:
                raise InvalidPattern(f"invalid resource pattern: {pattern} - {exc}") from exc

    @classmethod
    def new(cls, pattern: str) -> ResourcePattern:
        """A glob if the string contains ``*``, ``?`` or ``[``, otherwise an exact pattern."""
        return cls(pattern, glob=any(ch in pattern for ch in "*?["))

    @classmethod
    def exact(cls, pattern: str) -> ResourcePattern:
        """A pattern matching exactly ``pattern``, still rejecting path traversal.

        Tokens store patterns as plain strings that are re-read with ``new``; so a string
        with ``*``, ``?`` or ``[`` becomes a glob with every metacharacter escaped, which
        matches only itself now and after any reload (the original silently widened it).
        """
        if any(ch in pattern for ch in "*?["):
            if _contains_path_traversal(pattern):
                raise _traversal_error(pattern)
            return cls(escape_glob(pattern), glob=True)
        return cls(pattern, glob=False)

    @classmethod
    def file_dir(cls, path: str) -> ResourcePattern:
        """Everything under a directory: ``file://{path}/**``."""
        return cls.new(f"file://{path}/**")

    @classmethod
    def file_exact(cls, path: str) -> ResourcePattern:
        """Exactly one file: ``file://{path}``."""
        return cls.exact(f"file://{path}")

    @classmethod
    def mcp_tool(cls, server: str, tool: str) -> ResourcePattern:
        """Exactly one MCP tool: ``mcp://{server}:{tool}``."""
        return cls.exact(f"mcp://{server}:{tool}")

    @classmethod
    def mcp_server(cls, server: str) -> ResourcePattern:
        """Every tool on an MCP server: ``mcp://{server}:*``."""
        return cls.new(f"mcp://{server}:*")

    @staticmethod
    def parse_uri(resource: str) -> ResourceUri | None:
        """Split a resource URI into its parts (see ``parse_uri``)."""
        return parse_uri(resource)

    def matches(self, resource: str) -> bool:
        """True if ``resource`` matches; a resource with a ``..`` segment never matches."""
        if _contains_path_traversal(resource):
            return False
        if self._matcher is not None:
            return self._matcher.fullmatch(resource) is not None
        return self._pattern == resource

    def as_str(self) -> str:
        """The pattern string."""
        return self._pattern

    def is_glob(self) -> bool:
        """True if the pattern was compiled as a glob."""
        return self._matcher is not None

    def __str__(self) -> str:
        return self._pattern

    def __repr__(self) -> str:
        kind = "glob" if self.is_glob() else "exact"
        return f"ResourcePattern({self._pattern!r}, {kind})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResourcePattern):
            return NotImplemented
        return self._pattern == other._pattern

    def __hash__(self) -> int:
        return hash(self._pattern)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Validate from a string through ``new``; serialize as the plain pattern string."""
        from_str = core_schema.no_info_after_validator_function(cls.new, core_schema.str_schema())
        return core_schema.json_or_python_schema(
            json_schema=from_str,
            python_schema=core_schema.union_schema([core_schema.is_instance_schema(cls), from_str]),
            serialization=core_schema.plain_serializer_function_ser_schema(
                cls.as_str, return_schema=core_schema.str_schema(), when_used="json"
            ),
        )


@dataclass(frozen=True)
class ResourceUri:
    """The parts of a resource URI: ``scheme://server:tool``, ``scheme://server`` or a file."""

    scheme: str
    server: str | None = None
    tool: str | None = None
    path: str | None = None

    @classmethod
    def mcp(cls, server: str, tool: str) -> ResourceUri:
        """An MCP tool URI."""
        return cls(scheme="mcp", server=server, tool=tool)

    @classmethod
    def file(cls, path: str) -> ResourceUri:
        """A file URI."""
        return cls(scheme="file", path=path)

    def to_uri(self) -> str:
        """Write the URI back as a string."""
        if self.server is not None and self.tool is not None:
            return f"{self.scheme}://{self.server}:{self.tool}"
        if self.server is not None:
            return f"{self.scheme}://{self.server}"
        if self.path is not None:
            return f"{self.scheme}://{self.path}"
        return f"{self.scheme}://"


def parse_uri(resource: str) -> ResourceUri | None:
    """Parse ``scheme://rest``: a file path for ``file``, else ``server[:tool]``; None if no ``://``."""
    scheme, sep, rest = resource.partition("://")
    if not sep:
        return None
    if scheme == "file":
        return ResourceUri(scheme=scheme, path=rest)
    server, colon, tool = rest.partition(":")
    if colon:
        return ResourceUri(scheme=scheme, server=server, tool=tool)
    return ResourceUri(scheme=scheme, server=rest)


# --------------------------------------------------------------------------------------------
# Tokens


class AuditEntryId:
    """Id of the audit entry that approved a token; JSON is the bare UUID."""

    __slots__ = ("uuid",)

    uuid: UUID

    def __init__(self, value: UUID | str | None = None) -> None:
        """Wrap a UUID (or parse one); a fresh random id when ``value`` is None."""
        if value is None:
            self.uuid = uuid4()
        elif isinstance(value, UUID):
            self.uuid = value
        else:
            self.uuid = UUID(value)

    @classmethod
    def new(cls) -> AuditEntryId:
        """A fresh random audit entry id."""
        return cls()

    def __str__(self) -> str:
        return f"audit:{str(self.uuid)[:8]}"

    def __repr__(self) -> str:
        return f"AuditEntryId({str(self.uuid)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuditEntryId):
            return NotImplemented
        return self.uuid == other.uuid

    def __hash__(self) -> int:
        return hash(self.uuid)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Validate from a UUID (or its string); serialize as the bare UUID string."""
        from_uuid = core_schema.no_info_after_validator_function(cls, core_schema.uuid_schema())
        return core_schema.json_or_python_schema(
            json_schema=from_uuid,
            python_schema=core_schema.union_schema(
                [core_schema.is_instance_schema(cls), from_uuid]
            ),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value: str(value.uuid),
                return_schema=core_schema.str_schema(),
                when_used="json",
            ),
        )


class TokenScope(StrEnum):
    """How long a token lives: the session, or across sessions."""

    SESSION = "session"
    PERSISTENT = "persistent"

    def __str__(self) -> str:
        return self.value


def _fixed_bytes(value: Any, length: int, what: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, list | tuple):
        if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
            raise ValueError(f"{what} must be a list of integers 0..255")
        raw = bytes(value)
    else:
        raise ValueError(f"{what} must be bytes or a list of {length} integers")
    if len(raw) != length:
        raise ValueError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def _public_key_in(value: Any) -> bytes:
    if isinstance(value, str):
        return decode_public_key(value)
    return _fixed_bytes(value, PUBLIC_KEY_LEN, "public key")


def _signature_in(value: Any) -> bytes:
    if isinstance(value, str):
        return decode_signature(value)
    return _fixed_bytes(value, SIGNATURE_LEN, "signature")


def _user_id_in(value: Any) -> bytes:
    return _fixed_bytes(value, KEY_ID_LEN, "user_id")


def _user_id_out(value: bytes) -> list[int]:
    return list(value)


PublicKeyField = Annotated[
    bytes,
    BeforeValidator(_public_key_in),
    PlainSerializer(encode_public_key, return_type=str, when_used="json"),
]
"""A 32-byte ed25519 public key; base64 with padding in JSON."""

SignatureField = Annotated[
    bytes,
    BeforeValidator(_signature_in),
    PlainSerializer(encode_signature, return_type=str, when_used="json"),
]
"""A 64-byte ed25519 signature; base64 with padding in JSON."""

UserIdField = Annotated[
    bytes,
    BeforeValidator(_user_id_in),
    PlainSerializer(_user_id_out, return_type=list[int], when_used="json"),
]
"""An 8-byte user/key id; a JSON array of 8 integers."""


def _write_prefixed(out: bytearray, data: bytes) -> None:
    out += struct.pack("<I", len(data))
    out += data


class CapabilityToken(BaseModel):
    """A signed grant of permissions on a resource pattern; equal and hashed by ``id``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: UUID
    resource: ResourcePattern
    permissions: list[Permission]
    issued_at: Timestamp
    expires_at: Timestamp | None = None
    scope: TokenScope
    issuer: PublicKeyField
    user_id: UserIdField
    approval_audit_id: AuditEntryId
    single_use: bool = False
    signature: SignatureField

    @classmethod
    def create(
        cls,
        resource: ResourcePattern,
        permissions: Iterable[Permission],
        scope: TokenScope,
        user_id: bytes | Sequence[int],
        approval_audit_id: AuditEntryId,
        key: KeyPair,
        ttl: timedelta | None = None,
    ) -> CapabilityToken:
        """Issue and sign a token (not single-use); ``ttl`` None means no expiry."""
        return cls.create_with_options(
            resource, permissions, scope, user_id, approval_audit_id, key, ttl, single_use=False
        )

    @classmethod
    def create_with_options(
        cls,
        resource: ResourcePattern,
        permissions: Iterable[Permission],
        scope: TokenScope,
        user_id: bytes | Sequence[int],
        approval_audit_id: AuditEntryId,
        key: KeyPair,
        ttl: timedelta | None = None,
        single_use: bool = False,
    ) -> CapabilityToken:
        """Issue and sign a token; a negative ``ttl`` gives an already-expired token."""
        now = utcnow()
        unsigned = cls(
            id=uuid4(),
            resource=resource,
            permissions=list(permissions),
            issued_at=now,
            expires_at=None if ttl is None else now + ttl,
            scope=scope,
            issuer=key.public_key_bytes,
            user_id=bytes(user_id),
            approval_audit_id=approval_audit_id,
            single_use=single_use,
            signature=bytes(SIGNATURE_LEN),
        )
        return unsigned.signed_by(key)

    def signed_by(self, key: KeyPair) -> CapabilityToken:
        """A copy with ``issuer`` set to ``key``'s public key and a fresh signature."""
        unsigned = self.model_copy(update={"issuer": key.public_key_bytes})
        return unsigned.model_copy(update={"signature": key.sign(unsigned.signing_data())})

    @property
    def display_id(self) -> str:
        """The token id as the original displays it: ``token:<uuid>``."""
        return f"token:{self.id}"

    def signing_data(self) -> bytes:
        """The exact bytes that are signed (format v1; the signature itself is excluded)."""
        out = bytearray([SIGNING_DATA_VERSION])
        _write_prefixed(out, self.id.bytes)
        _write_prefixed(out, self.resource.as_str().encode("utf-8"))
        out += struct.pack("<I", len(self.permissions))
        for perm in self.permissions:
            _write_prefixed(out, perm.value.encode("utf-8"))
        out += struct.pack("<q", unix_seconds(self.issued_at))
        if self.expires_at is not None:
            out.append(1)
            out += struct.pack("<q", unix_seconds(self.expires_at))
        else:
            out.append(0)
        _write_prefixed(out, self.scope.value.encode("utf-8"))
        out += self.issuer
        out += self.user_id
        _write_prefixed(out, self.approval_audit_id.uuid.bytes)
        out.append(1 if self.single_use else 0)
        return bytes(out)

    def verify_signature(self) -> None:
        """Raise ``InvalidSignature`` unless ``issuer`` signed exactly this token."""
        if not verify_signature(self.issuer, self.signing_data(), self.signature):
            raise InvalidSignature("invalid token signature")

    def has_valid_signature(self) -> bool:
        """True if ``issuer``'s signature over this token verifies."""
        return verify_signature(self.issuer, self.signing_data(), self.signature)

    def is_expired(self) -> bool:
        """True if the token has an expiry and it is in the past (no skew)."""
        return self.is_expired_with_skew(0)

    def is_expired_with_skew(self, skew_secs: float) -> bool:
        """True if ``now > expires_at + skew_secs``."""
        if self.expires_at is None:
            return False
        return utcnow() > self.expires_at + timedelta(seconds=skew_secs)

    def validate_with_skew(self, skew_secs: float) -> None:
        """Raise ``TokenExpired`` if expired beyond the skew, else check the signature."""
        if self.is_expired_with_skew(skew_secs):
            raise TokenExpired(f"capability token expired: {self.display_id}")
        self.verify_signature()

    def validate(self) -> None:  # type: ignore[override]
        """``validate_with_skew`` with the default 30 s skew."""
        self.validate_with_skew(DEFAULT_CLOCK_SKEW_SECS)

    def is_single_use(self) -> bool:
        """True if the token may be used only once."""
        return self.single_use

    def grants(self, resource: str, permission: Permission) -> bool:
        """True if the pattern matches ``resource`` and ``permission`` is granted."""
        return self.resource.matches(resource) and permission in self.permissions

    def content_hash(self) -> str:
        """Lowercase hex SHA-256 of the signing data (for audit records)."""
        return sha256_hex(self.signing_data())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CapabilityToken):
            return NotImplemented
        return self.id == other.id

    def __hash__(self) -> int:
        return hash(self.id)


class TokenBuilder:
    """Fluent construction of a token: session scope, no ttl, not single-use by default."""

    def __init__(self, resource: ResourcePattern) -> None:
        """Start a token for ``resource``."""
        self._resource = resource
        self._permissions: list[Permission] = []
        self._scope = TokenScope.SESSION
        self._ttl: timedelta | None = None
        self._single_use = False

    def permission(self, perm: Permission) -> TokenBuilder:
        """Add a permission (duplicates are ignored)."""
        if perm not in self._permissions:
            self._permissions.append(perm)
        return self

    def permissions(self, perms: Iterable[Permission]) -> TokenBuilder:
        """Add several permissions (duplicates are ignored)."""
        for perm in perms:
            self.permission(perm)
        return self

    def scope(self, scope: TokenScope) -> TokenBuilder:
        """Set the scope."""
        self._scope = scope
        return self

    def persistent(self) -> TokenBuilder:
        """Make the token persistent."""
        return self.scope(TokenScope.PERSISTENT)

    def session(self) -> TokenBuilder:
        """Make the token session-scoped."""
        return self.scope(TokenScope.SESSION)

    def ttl(self, ttl: timedelta) -> TokenBuilder:
        """Set the time to live."""
        self._ttl = ttl
        return self

    def single_use(self) -> TokenBuilder:
        """Make the token single-use (replay protection)."""
        self._single_use = True
        return self

    def build(
        self, user_id: bytes | Sequence[int], approval_audit_id: AuditEntryId, key: KeyPair
    ) -> CapabilityToken:
        """Issue and sign the token."""
        return CapabilityToken.create_with_options(
            self._resource,
            self._permissions,
            self._scope,
            user_id,
            approval_audit_id,
            key,
            self._ttl,
            single_use=self._single_use,
        )


# --------------------------------------------------------------------------------------------
# Store


@runtime_checkable
class CapabilityBackend(Protocol):
    """Persistent storage for capability tokens, revocations and single-use markers."""

    def put_token(self, token_id: str, data: str) -> None:
        """Store (or replace) a token's JSON under its id."""

    def get_token(self, token_id: str) -> str | None:
        """A token's JSON, or None if absent."""

    def delete_token(self, token_id: str) -> None:
        """Remove a token (no error if absent)."""

    def list_tokens(self) -> list[str]:
        """The JSON of every stored token."""

    def add_revoked(self, token_id: str) -> None:
        """Record a revoked token id."""

    def revoked_ids(self) -> set[str]:
        """Every recorded revoked token id."""

    def add_used(self, token_id: str) -> None:
        """Record a used single-use token id (a copy, e.g. by ``capabilities migrate``)."""

    def used_ids(self) -> set[str]:
        """Every recorded used token id."""

    def claim_use(self, token_id: str) -> bool:
        """Record a single-use token id as used, atomically; False if it was already recorded.

        One check-and-mark in the backend (not a read of ``used_ids`` then ``add_used``), so of
        any number of callers, in this process or others sharing the backend, exactly one wins.
        """


@runtime_checkable
class UseClaimer(Protocol):
    """``CapabilityBackend.claim_use`` alone: a backend written for an older astrid lacks it,
    and a single-use token is then refused (``CapabilityStore.mark_used``)."""

    def claim_use(self, token_id: str) -> bool:
        """Record a single-use token id as used, atomically; False if it was already recorded."""
        ...


@runtime_checkable
class ClosableBackend(Protocol):
    """The optional ``close`` of a capability backend (files, connections); without it
    ``SessionStore.close`` closes nothing more."""

    def close(self) -> None:
        """Release the backend's files and connections."""
        ...


class MemoryCapabilityBackend:
    """A ``CapabilityBackend`` in memory (shared by stores to simulate reopening)."""

    def __init__(self) -> None:
        """An empty backend."""
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}
        self._revoked: set[str] = set()
        self._used: set[str] = set()

    def put_token(self, token_id: str, data: str) -> None:
        """Store (or replace) a token's JSON under its id."""
        with self._lock:
            self._tokens[token_id] = data

    def get_token(self, token_id: str) -> str | None:
        """A token's JSON, or None if absent."""
        with self._lock:
            return self._tokens.get(token_id)

    def delete_token(self, token_id: str) -> None:
        """Remove a token (no error if absent)."""
        with self._lock:
            self._tokens.pop(token_id, None)

    def list_tokens(self) -> list[str]:
        """The JSON of every stored token."""
        with self._lock:
            return list(self._tokens.values())

    def add_revoked(self, token_id: str) -> None:
        """Record a revoked token id."""
        with self._lock:
            self._revoked.add(token_id)

    def revoked_ids(self) -> set[str]:
        """Every recorded revoked token id."""
        with self._lock:
            return set(self._revoked)

    def add_used(self, token_id: str) -> None:
        """Record a used single-use token id."""
        with self._lock:
            self._used.add(token_id)

    def used_ids(self) -> set[str]:
        """Every recorded used token id."""
        with self._lock:
            return set(self._used)

    def claim_use(self, token_id: str) -> bool:
        """Record a used token id; False if it was already recorded (checked under the lock)."""
        with self._lock:
            if token_id in self._used:
                return False
            self._used.add(token_id)
            return True


def _parse_ids(raw: Iterable[str]) -> set[UUID]:
    ids: set[UUID] = set()
    for text in raw:
        try:
            ids.add(UUID(text))
        except (ValueError, TypeError):
            continue
    return ids


@dataclass(frozen=True, slots=True)
class Revocation:
    """What ``CapabilityStore.revoke_token`` did: the id revoked, the token it named (None:
    unknown to the store, or already revoked) and whether the id was revoked before."""

    token_id: UUID
    token: CapabilityToken | None
    already_revoked: bool


class CapabilityStore:
    """Session tokens in memory plus persistent tokens, revocations and used ids (thread-safe)."""

    def __init__(self, backend: CapabilityBackend | None = None) -> None:
        """A store; without a backend, persistent tokens are kept in the session map."""
        self._lock = threading.RLock()
        self._backend = backend
        self._session: dict[UUID, CapabilityToken] = {}
        self._revoked: set[UUID] = set()
        self._used: set[UUID] = set()
        if backend is not None:
            self._revoked = _parse_ids(backend.revoked_ids())
            self._used = _parse_ids(backend.used_ids())

    @property
    def has_persistence(self) -> bool:
        """True if a persistent backend is attached."""
        return self._backend is not None

    @property
    def backend(self) -> CapabilityBackend | None:
        """The persistence backend (None: tokens live in memory only)."""
        return self._backend

    def _decode(self, data: str) -> CapabilityToken:
        try:
            return CapabilityToken.model_validate_json(data)
        except ValidationError as exc:
            raise SerializationError(f"invalid capability token JSON: {exc}") from exc

    def _persistent_tokens(self) -> list[CapabilityToken]:
        """Every decodable token in the backend (undecodable entries are skipped)."""
        if self._backend is None:
            return []
        tokens: list[CapabilityToken] = []
        for data in self._backend.list_tokens():
            try:
                tokens.append(self._decode(data))
            except SerializationError:
                continue
        return tokens

    def add(self, token: CapabilityToken) -> None:
        """Validate (30 s skew, signature) and store a token by its scope."""
        token.validate()
        with self._lock:
            if token.scope is TokenScope.PERSISTENT and self._backend is not None:
                self._backend.put_token(str(token.id), token.model_dump_json())
            else:
                self._session[token.id] = token

    async def aadd(self, token: CapabilityToken) -> None:
        """``add`` for code on an event loop: a persistent token is written in a worker thread."""
        if token.scope is TokenScope.PERSISTENT and self._backend is not None:
            from astrid.offload import write_in_thread

            await write_in_thread(self.add, token)
        else:
            self.add(token)

    def get(self, token_id: UUID) -> CapabilityToken | None:
        """The token with this id; raises ``TokenRevoked`` if revoked, None if unknown."""
        with self._lock:
            if token_id in self._revoked:
                raise TokenRevoked(f"capability token revoked: token:{token_id}")
            token = self._session.get(token_id)
            if token is not None:
                return token
            if self._backend is not None:
                data = self._backend.get_token(str(token_id))
                if data is not None:
                    return self._decode(data)
            return None

    def _usable(self, token: CapabilityToken, resource: str, permission: Permission) -> bool:
        return (
            token.id not in self._revoked
            and not (token.single_use and token.id in self._used)
            and not token.is_expired()
            and token.grants(resource, permission)
            and token.has_valid_signature()
        )

    def find_capability(
        self,
        resource: str,
        permission: Permission,
        *,
        trusted_issuers: Collection[bytes] | None = None,
    ) -> CapabilityToken | None:
        """The first live token granting ``permission`` on ``resource`` (session first).

        With ``trusted_issuers``, tokens issued by any other key are ignored, so a token
        planted in a shared store by someone else's key authorizes nothing.
        """
        with self._lock:
            for token in [*self._session.values(), *self._persistent_tokens()]:
                if trusted_issuers is not None and bytes(token.issuer) not in trusted_issuers:
                    continue
                if self._usable(token, resource, permission):
                    return token
            return None

    async def afind_capability(
        self,
        resource: str,
        permission: Permission,
        *,
        trusted_issuers: Collection[bytes] | None = None,
    ) -> CapabilityToken | None:
        """``find_capability`` for code on an event loop: a backend is read in a worker thread."""
        find = functools.partial(
            self.find_capability, resource, permission, trusted_issuers=trusted_issuers
        )
        if self._backend is None:
            return find()
        from astrid.offload import read_in_thread

        return await read_in_thread(find)

    def has_capability(self, resource: str, permission: Permission) -> bool:
        """True if some live token grants ``permission`` on ``resource``."""
        return self.find_capability(resource, permission) is not None

    def revoke(self, token_id: UUID) -> None:
        """Revoke a token everywhere (persisted first when a backend exists)."""
        with self._lock:
            if self._backend is not None:
                self._backend.add_revoked(str(token_id))
                # The revocation is already recorded, so a stale copy is inert: ignore errors.
                with contextlib.suppress(Exception):
                    self._backend.delete_token(str(token_id))
            self._revoked.add(token_id)
            self._session.pop(token_id, None)

    def revoke_token(self, token_id: UUID) -> Revocation:
        """``revoke``, saying what it revoked: the token as it was (None: unknown here, or
        already revoked) and whether the id was already revoked, here or (with a backend) by
        another process. An unknown id is revoked all the same (fail closed)."""
        with self._lock:
            already = token_id in self._revoked or (
                self._backend is not None and str(token_id) in self._backend.revoked_ids()
            )
            token: CapabilityToken | None = None
            if not already:
                # An unreadable stored token is revoked like an unknown one.
                with contextlib.suppress(SerializationError):
                    token = self.get(token_id)
            self.revoke(token_id)
            return Revocation(token_id, token, already)

    async def arevoke_token(self, token_id: UUID) -> Revocation:
        """``revoke_token`` for code on an event loop: with a backend it runs in a worker
        thread, and a cancellation waits for the revocation to be written."""
        if self._backend is None:
            return self.revoke_token(token_id)
        from astrid.offload import write_in_thread

        return await write_in_thread(self.revoke_token, token_id)

    def is_revoked(self, token_id: UUID) -> bool:
        """True if the token id was revoked."""
        with self._lock:
            return token_id in self._revoked

    def clear_session(self) -> None:
        """Drop every in-memory token (persistent tokens in a backend stay)."""
        with self._lock:
            self._session.clear()

    def mark_used(self, token_id: UUID) -> None:
        """Record a single-use token as used; raises ``TokenAlreadyUsed`` the second time.

        With a backend, the backend's ``claim_use`` decides, so a use by another process sharing
        it counts too. A backend without ``claim_use`` (written for an older astrid) cannot do
        that safely, so using a single-use token through it is refused with ``PluginError``.
        """
        with self._lock:
            if token_id in self._used:
                raise TokenAlreadyUsed(f"single-use token already used: token:{token_id}")
            if self._backend is not None:
                if not isinstance(self._backend, UseClaimer):
                    raise PluginError(
                        f"capability store {self._backend!r} has no claim_use method (written "
                        "for an older astrid), so it cannot mark a single-use token used "
                        f"atomically; refusing to use token:{token_id}"
                    )
                if not self._backend.claim_use(str(token_id)):
                    self._used.add(token_id)
                    raise TokenAlreadyUsed(f"single-use token already used: token:{token_id}")
            self._used.add(token_id)

    def is_used(self, token_id: UUID) -> bool:
        """True if the token id was marked used (here, or in the backend by anyone)."""
        with self._lock:
            in_backend = self._backend is not None and str(token_id) in self._backend.used_ids()
            if in_backend:
                self._used.add(token_id)
            return token_id in self._used

    def use_token(self, token_id: UUID) -> CapabilityToken:
        """Look up, validate and (if single-use) consume a token, atomically."""
        with self._lock:
            token = self.get(token_id)
            if token is None:
                raise TokenNotFound(f"capability token not found: token:{token_id}")
            token.validate()
            if token.single_use:
                self.mark_used(token_id)
            return token

    async def ause_token(self, token_id: UUID) -> CapabilityToken:
        """``use_token`` for code on an event loop: with a backend (a lookup, the atomic
        ``claim_use``) it runs in a worker thread, and a cancellation waits for the claim."""
        if self._backend is None:
            return self.use_token(token_id)
        from astrid.offload import write_in_thread

        return await write_in_thread(self.use_token, token_id)

    def list_tokens(self) -> list[CapabilityToken]:
        """Unexpired session tokens plus unrevoked, unexpired persistent tokens."""
        with self._lock:
            tokens = [t for t in self._session.values() if not t.is_expired()]
            tokens.extend(
                t
                for t in self._persistent_tokens()
                if t.id not in self._revoked and not t.is_expired()
            )
            return tokens

    def cleanup_expired(self) -> int:
        """Delete expired persistent tokens from the backend; returns how many."""
        removed = 0
        with self._lock:
            if self._backend is None:
                return 0
            for token in self._persistent_tokens():
                if token.is_expired():
                    self._backend.delete_token(str(token.id))
                    removed += 1
        return removed

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"CapabilityStore(session_tokens={len(self._session)}, "
                f"revoked_count={len(self._revoked)}, used_count={len(self._used)}, "
                f"has_persistence={self.has_persistence})"
            )


# --------------------------------------------------------------------------------------------
# Validator


@dataclass(frozen=True)
class Authorized:
    """Authorization granted by ``token``."""

    token: CapabilityToken

    def is_authorized(self) -> bool:
        """Always True."""
        return True


@dataclass(frozen=True)
class NotAuthorized:
    """No valid token: ``permission`` on ``resource`` needs an approval."""

    resource: str
    permission: Permission

    @property
    def token(self) -> None:
        """There is no authorizing token."""
        return None

    def is_authorized(self) -> bool:
        """Always False."""
        return False


AuthorizationResult = Authorized | NotAuthorized
"""The outcome of ``CapabilityValidator.check``."""


class CapabilityValidator:
    """Checks authorization against a store, optionally restricted to trusted issuers."""

    def __init__(self, store: CapabilityStore) -> None:
        """A validator over ``store`` that trusts any issuer until ``trust_issuer`` is called."""
        self._store = store
        self._trusted: list[bytes] = []

    @property
    def trusted_issuers(self) -> tuple[bytes, ...]:
        """The trusted issuer public keys (empty: any issuer)."""
        return tuple(self._trusted)

    def trust_issuer(self, public_key: bytes) -> CapabilityValidator:
        """Add a trusted issuer public key (32 raw bytes); returns self."""
        key = _public_key_in(public_key)
        if key not in self._trusted:
            self._trusted.append(key)
        return self

    def check(self, resource: str, permission: Permission) -> AuthorizationResult:
        """``Authorized`` by a found and valid token, else ``NotAuthorized``."""
        token = self._store.find_capability(resource, permission)
        if token is not None:
            try:
                self.validate_token(token)
            except (TokenExpired, InvalidSignature):
                pass
            else:
                return Authorized(token=token)
        return NotAuthorized(resource=resource, permission=permission)

    def validate_token(self, token: CapabilityToken) -> None:
        """Raise unless unexpired (no skew), correctly signed and from a trusted issuer."""
        if token.is_expired():
            raise TokenExpired(f"capability token expired: {token.display_id}")
        token.verify_signature()
        if self._trusted and token.issuer not in self._trusted:
            raise InvalidSignature("invalid token signature: issuer is not trusted")

    def validate_by_id(self, token_id: UUID) -> None:
        """Look a token up (``TokenRevoked``/``TokenNotFound``) and ``validate_token`` it."""
        token = self._store.get(token_id)
        if token is None:
            raise TokenNotFound(f"capability token not found: token:{token_id}")
        self.validate_token(token)


class MultiPermissionCheck:
    """A batch of (resource, permission) checks."""

    def __init__(self) -> None:
        """An empty batch."""
        self._checks: list[tuple[str, Permission]] = []

    def add(self, resource: str, permission: Permission) -> MultiPermissionCheck:
        """Add a check; returns self."""
        self._checks.append((resource, permission))
        return self

    def check_all(
        self, validator: CapabilityValidator
    ) -> list[tuple[str, Permission, AuthorizationResult]]:
        """Every check with its result, in order."""
        return [(r, p, validator.check(r, p)) for r, p in self._checks]

    def all_authorized(self, validator: CapabilityValidator) -> bool:
        """True if every check is authorized."""
        return all(validator.check(r, p).is_authorized() for r, p in self._checks)

    def needs_approval(self, validator: CapabilityValidator) -> list[tuple[str, Permission]]:
        """The checks that are not authorized."""
        return [(r, p) for r, p in self._checks if not validator.check(r, p).is_authorized()]


if not TYPE_CHECKING:  # the result's name before 0.2.0, served with a DeprecationWarning
    __getattr__, __dir__ = module_attributes(
        __name__, renamed={"RequiresApproval": "NotAuthorized"}
    )
