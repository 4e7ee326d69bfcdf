"""The ``encrypted`` storage backend: any other backend, with messages and state sealed (AES-GCM).

Every session gets its own key, derived from the master key and its id with HKDF-SHA256; each
message and the session's state are encrypted with it, the session id (and what the value is)
as associated data, so a ciphertext moved to another session or slot does not decrypt. The inner
backend keeps the listing fields (times, counts, workspace; title and model too unless
``encrypt_metadata``), the ledger, the audit log and the key-value store in the clear. The master
key comes from ``key_env`` or ``key_file``, never from the TOML. ``cryptography`` is imported
only when the backend is created.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import PathOption, check_nested_options
from ..errors import CryptoKeyError, SessionDecryptionError, StorageError
from ..hookspecs import hookimpl
from ..plugins import PluginContext, get_implementation
from ..security.kv import KvStore
from ..store import (
    HistoryEntry,
    SessionRecord,
    SessionStore,
    SessionSummary,
    SessionWrite,
    StorageBackend,
    message_data,
)
from ..timeutil import format_rfc3339, parse_rfc3339

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED = "astrid_sealed"
"""The key under which a sealed message or state lies in what the inner backend stores."""

PREFIX = "v1"
"""Envelope version: ``v1:<key id>:<base64 of nonce + ciphertext>``."""

LISTING_KEYS = ("id", "created_at", "updated_at", "token_count", "workspace_path", "parent_id")
"""State fields kept in the clear beside the sealed state (backends derive listings from them)."""

FORWARDED = frozenset(
    {
        "describe", "problems", "persistent", "path", "directory", "swept_temp_files",
        "sweep_temp_files", "count_history", "stray_files", "delete_many", "list_ledger",
        "list_audit", "import_audit", "write_workspace_state",
    }
)
"""Optional backend features (``astrid.store``) passed to the inner backend when it has them.
Dropped: ``accepts_state_delta`` and ``accepts_message_objects`` (the wrapper seals whole
values) and ``load_decoded`` (decryption needs the stored form); ``list_all_sessions`` is
wrapped (titles may be sealed)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _looks_like_key(text: str) -> bool:
    """True for a value that is more likely key material than a variable name or a path."""
    if len(text) < 32 or not re.fullmatch(r"[A-Za-z0-9+/=_-]+", text):
        return False
    if re.fullmatch(r"[0-9a-fA-F]+", text):
        return True
    classes = sum(bool(re.search(p, text)) for p in ("[a-z]", "[A-Z]", "[0-9]", "[+/=-]"))
    return classes >= 3


class EncryptedOptions(BaseModel):
    """Options of the ``encrypted`` backend.

    ``inner``: the backend that stores the sealed sessions (any registered one), with its options
    under ``inner_options``. The key: ``key_env`` (the name of an environment variable) or
    ``key_file`` (a file only its owner can read), holding 32 bytes as base64 or 64 hex digits.
    ``encrypt_metadata``: also seal the title and model of listings (the workspace path, times
    and counts stay clear: the inner backend filters and sorts by them).
    """

    model_config = ConfigDict(extra="forbid")

    inner: str = "sqlite"
    inner_options: dict[str, Any] = Field(default_factory=dict)
    key_env: str | None = None
    key_file: PathOption | None = None
    encrypt_metadata: bool = False

    @field_validator("key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if _looks_like_key(value):
            raise ValueError(
                "key_env looks like a key itself; keys never go in astrid.toml: put it in an "
                "environment variable and name that variable here"
            )
        if not _ENV_NAME.fullmatch(value):
            raise ValueError(f"key_env {value!r} is not an environment variable name")
        return value

    @field_validator("key_file")
    @classmethod
    def _file_name(cls, value: str | None) -> str | None:
        if value is not None and _looks_like_key(value) and not Path(value).exists():
            raise ValueError(
                "key_file looks like a key itself; keys never go in astrid.toml: write it to a "
                "file (mode 0600) and give its path here"
            )
        return value

    def nested_implementations(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        """The inner backend and its options, checked with the rest of the configuration."""
        return [("storage", "inner", self.inner, "inner_options", self.inner_options)]

    @model_validator(mode="after")
    def _one_key(self) -> EncryptedOptions:
        if (self.key_env is None) == (self.key_file is None):
            raise ValueError("give exactly one of key_env and key_file")
        if self.inner == "encrypted":
            raise ValueError("inner cannot be 'encrypted' itself")
        return self


def parse_key(text: str, where: str) -> bytes:
    """32 key bytes from base64 (standard or URL-safe) or hex text; ``CryptoKeyError`` else."""
    text = text.strip()
    raw: bytes | None = None
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raw = bytes.fromhex(text)
    else:
        try:
            raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise CryptoKeyError(f"{where}: not a 32-byte key (base64 or 64 hex digits)")
    return raw


def read_key(key_env: str | None, key_file: str | Path | None) -> bytes:
    """The master key named by ``key_env`` or ``key_file`` (a file others can read is refused)."""
    if key_env is not None:
        value = os.environ.get(key_env)
        if not value:
            raise CryptoKeyError(f"environment variable {key_env} (the storage key) is not set")
        return parse_key(value, f"environment variable {key_env}")
    assert key_file is not None
    path = Path(key_file)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CryptoKeyError(
                f"key file {path}: readable by others (mode {stat.S_IMODE(mode):o}); "
                "chmod 600 it"
            )
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CryptoKeyError(f"key file {path}: cannot be read ({exc})") from exc
    return parse_key(text, f"key file {path}")


class _Sealer:
    """Seals and opens values of one master key; per-session AES-GCM keys from HKDF."""

    def __init__(self, master: bytes) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        def derive(info: bytes) -> bytes:
            return HKDF(
                algorithm=hashes.SHA256(), length=32, salt=b"astrid encrypted storage", info=info
            ).derive(master)

        self._hkdf = derive
        self.key_id = self._hkdf(b"key id")[:4].hex()
        self._keys: dict[str, AESGCM] = {}

    def _aead(self, session_id: str) -> AESGCM:
        aead = self._keys.get(session_id)
        if aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            if len(self._keys) > 1024:
                self._keys.clear()
            aead = self._keys[session_id] = AESGCM(self._hkdf(b"session " + session_id.encode()))
        return aead

    def seal(self, session_id: str, slot: str, value: Any) -> str:
        """``value``'s JSON, encrypted for ``session_id``'s ``slot`` (message, state, title)."""
        nonce = os.urandom(12)
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        sealed = self._aead(session_id).encrypt(nonce, data, f"{session_id}/{slot}".encode())
        return f"{PREFIX}:{self.key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, session_id: str, slot: str, envelope: Any, where: str) -> Any:
        """The value sealed in ``envelope``; ``SessionDecryptionError`` naming ``where``."""
        from cryptography.exceptions import InvalidTag

        parts = envelope.split(":", 2) if isinstance(envelope, str) else []
        if len(parts) != 3 or parts[0] != PREFIX:
            raise SessionDecryptionError(f"{where}: not sealed by the encrypted backend")
        if parts[1] != self.key_id:
            raise SessionDecryptionError(
                f"{where}: sealed with key {parts[1]}, the configured key is {self.key_id} "
                "(wrong key, or a rekey not finished)"
            )
        try:
            blob = base64.b64decode(parts[2], validate=True)
            data = self._aead(session_id).decrypt(
                blob[:12], blob[12:], f"{session_id}/{slot}".encode()
            )
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise SessionDecryptionError(
                f"{where}: does not decrypt with the configured key {self.key_id} "
                "(tampered with, or moved from another session)"
            ) from exc
        return json.loads(data)


class EncryptedBackend:
    """Wraps a ``StorageBackend``: what it stores of a session is sealed by a ``_Sealer``."""

    name = "encrypted"

    def __init__(
        self, inner: StorageBackend, key: bytes, *, encrypt_metadata: bool = False
    ) -> None:
        self.inner = inner
        self.encrypt_metadata = encrypt_metadata
        self._sealer = _Sealer(key)

    @property
    def key_id(self) -> str:
        """A short fingerprint of the master key (in every envelope, named by errors)."""
        return self._sealer.key_id

    def __getattr__(self, name: str) -> Any:
        if name in FORWARDED:
            return getattr(self.inner, name)
        if name == "list_all_sessions" and hasattr(self.inner, name):
            return lambda: [self._open_summary(s) for s in self.inner.list_all_sessions()]  # type: ignore[attr-defined]
        raise AttributeError(name)

    # -- sealing -----------------------------------------------------------------------------

    def _where(self, session_id: str) -> str:
        return f"encrypted session {session_id}"

    def _seal_state(self, session_id: str, state: dict[str, Any]) -> dict[str, Any]:
        clear = {k: state[k] for k in LISTING_KEYS if k in state}
        meta = state.get("metadata")
        title = meta.get("title") if isinstance(meta, dict) else None
        if isinstance(title, str):
            clear["metadata"] = {
                "title": self._sealer.seal(session_id, "title", title)
                if self.encrypt_metadata else title
            }
        model = state.get("model")
        if isinstance(model, str):
            clear["model"] = (
                self._sealer.seal(session_id, "model", model) if self.encrypt_metadata else model
            )
        clear[SEALED] = self._sealer.seal(session_id, "state", state)
        return clear

    def _open_state(self, session_id: str, stored: dict[str, Any]) -> dict[str, Any]:
        state = self._sealer.open(
            session_id, "state", stored.get(SEALED), f"{self._where(session_id)}: the state"
        )
        if not isinstance(state, dict):
            raise SessionDecryptionError(f"{self._where(session_id)}: the state is not an object")
        return state

    def _seal_message(self, session_id: str, message: Any) -> dict[str, Any]:
        return {SEALED: self._sealer.seal(session_id, "message", message_data(message))}

    def _open_message(self, session_id: str, stored: Any, index: int) -> Any:
        envelope = stored.get(SEALED) if isinstance(stored, dict) else None
        return self._sealer.open(
            session_id, "message", envelope, f"{self._where(session_id)}: message {index}"
        )

    def _seal_summary(self, summary: SessionSummary) -> SessionSummary:
        if not self.encrypt_metadata:
            return summary
        sid, title, model = summary.id, summary.title, summary.model
        return replace(
            summary,
            title=None if title is None else self._sealer.seal(sid, "title", title),
            model=None if model is None else self._sealer.seal(sid, "model", model),
        )

    def _open_summary(self, summary: SessionSummary) -> SessionSummary:
        return replace(
            summary,
            title=self._open_field(summary.id, "title", summary.title),
            model=self._open_field(summary.id, "model", summary.model),
        )

    def _open_field(self, session_id: str, slot: str, value: str | None) -> str | None:
        """A listing field, opened if sealed (None when it does not open)."""
        if value is None or not value.startswith(PREFIX + ":"):
            return value
        try:
            opened = self._sealer.open(session_id, slot, value, self._where(session_id))
        except SessionDecryptionError:
            return None
        return opened if isinstance(opened, str) else None

    # -- StorageBackend ----------------------------------------------------------------------

    def load(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        """The decrypted session (or its last ``tail`` messages), or None."""
        record = self.inner.load(session_id, tail=tail)
        if record is None:
            return None
        return replace(
            record,
            state=self._open_state(session_id, record.state),
            messages=[
                self._open_message(session_id, m, record.message_offset + i)
                for i, m in enumerate(record.messages)
            ],
        )

    def write(self, change: SessionWrite) -> int:
        """Seal the state and messages, then let the inner backend apply the save."""
        change.check_archived()
        change.check_storable()
        return self.inner.write(self._sealed(change))

    def _sealed(self, change: SessionWrite) -> SessionWrite:
        sid = change.session_id
        return replace(
            change,
            state=self._seal_state(sid, change.state),
            messages=[self._seal_message(sid, m) for m in change.messages],
            archived=[self._seal_message(sid, m) for m in change.archived],
            summary=self._seal_summary(change.summary),
            delta=None,
        )

    def append(
        self, session_id: str, messages: Sequence[Any], summary: SessionSummary | None = None
    ) -> tuple[int, int]:
        """Seal and append messages regardless of revision."""
        from ..store import check_messages_storable

        check_messages_storable(session_id, messages)
        return self.inner.append(
            session_id,
            [self._seal_message(session_id, m) for m in messages],
            None if summary is None else self._seal_summary(summary),
        )

    def delete(self, session_id: str) -> bool:
        """Remove a session; False if absent."""
        return self.inner.delete(session_id)

    def list_sessions(
        self, *, workspace: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[SessionSummary]:
        """The inner listing, sealed titles opened (one that does not open lists as None)."""
        rows = self.inner.list_sessions(workspace=workspace, limit=limit, offset=offset)
        return [self._open_summary(s) for s in rows]

    def count_sessions(self, *, workspace: str | None = None) -> int:
        """How many sessions (optionally in one workspace)."""
        return self.inner.count_sessions(workspace=workspace)

    def history(self, session_id: str) -> list[HistoryEntry]:
        """Every message ever stored, decrypted."""
        return [
            HistoryEntry(h.seq, h.active, self._open_message(session_id, h.message, i))
            for i, h in enumerate(self.inner.history(session_id))
        ]

    def kv(self) -> KvStore:
        """The inner key-value store (not encrypted)."""
        return self.inner.kv()

    def schema_version(self) -> int:
        """The inner backend's schema version."""
        return self.inner.schema_version()

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()

    # -- key rotation ------------------------------------------------------------------------

    def rekey(
        self,
        new_key: bytes,
        progress: Callable[[Sequence[SessionSummary]], Iterable[SessionSummary]] | None = None,
    ) -> int:
        """Re-encrypt every session (active messages and history) under ``new_key``.

        Each session is read and checked with the current key, its copy sealed under the new
        key is kept in the key-value store (namespace ``REKEY_NAMESPACE``), then the session is
        deleted, written again and the copy dropped: a rekey killed between the delete and the
        write is finished by the next one, and sessions already under the new key are skipped,
        so running it again resumes. Run it with no other process writing. Returns how many
        sessions are under the new key; afterwards the backend uses it.
        """
        new = _Sealer(new_key)
        old = self._sealer
        kv = self.inner.kv()
        for sid in kv.list_keys(REKEY_NAMESPACE):
            stashed = kv.get(REKEY_NAMESPACE, sid)
            if stashed is not None and self.inner.load(sid, tail=0) is None:
                self.inner.write(_write_of(json.loads(stashed)))
            kv.delete(REKEY_NAMESPACE, sid)
        done = 0
        rows = _all_summaries(self.inner)
        for summary in rows if progress is None else progress(rows):
            sid = summary.id
            raw = self.inner.load(sid, tail=0)
            if raw is None:
                continue
            envelope = raw.state.get(SEALED)
            if isinstance(envelope, str) and envelope.startswith(f"{PREFIX}:{new.key_id}:"):
                done += 1  # an earlier, interrupted rekey got here
                continue
            record = self.load(sid)
            if record is None:
                continue
            archived = [h.message for h in self.history(sid) if not h.active]
            opened = self._open_summary(summary)
            self._sealer = new
            try:
                change = self._sealed(SessionWrite(
                    session_id=sid, expected_revision=None, state=record.state,
                    messages=record.messages, base_count=0, replace=False,
                    summary=opened, archived=archived,
                ))
            finally:
                self._sealer = old
            kv.set(REKEY_NAMESPACE, sid, json.dumps(_data_of(change)).encode())
            self.inner.delete(sid)
            self.inner.write(change)
            kv.delete(REKEY_NAMESPACE, sid)
            done += 1
        self._sealer = new
        return done



def rekey_store(
    store: SessionStore,
    new_key: bytes,
    progress: Callable[[Sequence[SessionSummary]], Iterable[SessionSummary]] | None = None,
) -> tuple[str, str, int]:
    """Re-encrypt every session of ``store`` (an ``encrypted`` one) under ``new_key``.

    Returns the old and the new key id and how many sessions are under the new key; a store
    on another backend is a ``StorageError`` naming it (see ``EncryptedBackend.rekey``).
    """
    backend = store.backend
    if not isinstance(backend, EncryptedBackend):
        raise StorageError(
            f"sessions rekey: the store's backend is {store.backend_name!r}, not 'encrypted' "
            "([storage] backend)"
        )
    old_id = backend.key_id
    count = backend.rekey(new_key, progress=progress)
    return old_id, backend.key_id, count


REKEY_NAMESPACE = "astrid:rekey"
"""Key-value namespace holding, during a rekey, the resealed copy of the session in flight."""


def _data_of(change: SessionWrite) -> dict[str, Any]:
    """A sealed create as JSON (the rekey's copy of a session in flight)."""
    summary = asdict(change.summary)
    summary["created_at"] = format_rfc3339(change.summary.created_at)
    summary["updated_at"] = format_rfc3339(change.summary.updated_at)
    return {
        "session_id": change.session_id, "state": change.state,
        "messages": list(change.messages), "archived": list(change.archived),
        "summary": summary,
    }


def _write_of(data: dict[str, Any]) -> SessionWrite:
    """The create ``_data_of`` stored."""
    summary = dict(data["summary"])
    summary["created_at"] = parse_rfc3339(summary["created_at"])
    summary["updated_at"] = parse_rfc3339(summary["updated_at"])
    return SessionWrite(
        session_id=data["session_id"], expected_revision=None, state=data["state"],
        messages=data["messages"], base_count=0, replace=False,
        summary=SessionSummary(**summary), archived=data["archived"],
    )


def _all_summaries(backend: StorageBackend) -> list[SessionSummary]:
    """Every session summary of ``backend``, paging ``list_sessions``."""
    rows: list[SessionSummary] = []
    while page := backend.list_sessions(limit=500, offset=len(rows)):
        rows.extend(page)
    return rows


def create_encrypted(options: EncryptedOptions, context: PluginContext) -> EncryptedBackend:
    """The inner backend (by its registered name and options) wrapped with the configured key."""
    check_nested_options(options, "storage.options", "[storage.options]")
    impl = get_implementation("storage", options.inner, where="[storage.options] inner")
    key = read_key(options.key_env, options.key_file)
    inner = impl.create(options.inner_options, context)
    return EncryptedBackend(inner, key, encrypt_metadata=options.encrypt_metadata)


@hookimpl
def register_storage_backends(register: Any) -> None:
    """Register the ``encrypted`` backend."""
    register(
        "encrypted",
        create_encrypted,
        EncryptedOptions,
        "Any other backend (inner) with messages and state sealed by AES-GCM, key from "
        "key_env or key_file.",
    )


__all__ = ["EncryptedBackend", "EncryptedOptions", "parse_key", "read_key"]
