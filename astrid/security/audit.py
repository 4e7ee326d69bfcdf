"""The persisted audit log: each security decision as a hash-chained entry signed, runtime-signed.

The interceptor (and the runtime, for budget settlements) records a decision with ``record``:
the entry waits in the session's change set (``ChangeSet.audit``) and travels with the session's
next save (``SessionWrite.audit``), like the spend-ledger rows. An ``AuditKeeper`` backend seals
the pending entries inside the save's own transaction: it reads the head of the entry's chain,
and ``seal`` gives each entry the next sequence number, the previous entry's hash and an ed25519
signature over all of it. There is one chain per workspace (``chain``: the workspace key, ``""``
for sessions without one), so processes working in different workspaces never contend for one
head; within a chain the backend's write lock (SQLite ``BEGIN IMMEDIATE``) orders the entries.

``verify`` walks the stored entries and names the first one that was edited, removed,
reordered or signed by a key other than the trusted ones.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from astrid.errors import SerializationError, StorageError
from astrid.security.crypto import (
    KeyPair,
    b64decode,
    b64encode,
    decode_public_key,
    sha256_hex,
    verify_signature,
)
from astrid.timeutil import format_rfc3339, utcnow

GENESIS: Final = "0" * 64
"""The ``prev_hash`` of a chain's first entry."""


@dataclass(frozen=True, slots=True)
class PendingAudit:
    """A decision recorded and not yet stored: its fields and the key that will sign it."""

    fields: Mapping[str, Any]
    keypair: KeyPair = dataclasses.field(repr=False)

    @property
    def chain(self) -> str:
        """The chain the entry joins (its workspace key, ``""`` without one)."""
        return str(self.fields.get("workspace") or "")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored entry: ``body`` is the canonical JSON the ``hash`` and ``signature`` cover."""

    chain: str
    seq: int
    id: str
    session_id: str
    at: str
    body: str
    hash: str
    signature: str

    @property
    def data(self) -> dict[str, Any]:
        """The body's fields (time, session, workspace, actor, action, decision, proof, ...)."""
        value = json.loads(self.body)
        if not isinstance(value, dict):
            raise SerializationError(f"audit entry {self.id}: the body is not a JSON object")
        return value

    def to_data(self) -> dict[str, Any]:
        """JSON-ready data (the body's fields plus the hash and signature)."""
        return {**self.data, "hash": self.hash, "signature": self.signature}


def _proof_data(proof: object) -> dict[str, Any] | None:
    if proof is None:
        return None
    if dataclasses.is_dataclass(proof) and not isinstance(proof, type):
        values = {f.name: getattr(proof, f.name) for f in dataclasses.fields(proof)}
        return {"kind": type(proof).__name__, **{k: str(v) for k, v in values.items()}}
    return {"kind": type(proof).__name__, "value": str(proof)}


def record(
    session: object,
    keypair: KeyPair,
    *,
    actor: str,
    action_type: str,
    action: str,
    decision: str,
    proof: object = None,
    reason: str | None = None,
    entry_id: str | None = None,
) -> None:
    """Queue a decision on ``session``'s change set (saved, chained and signed with its next
    save); a security state without a change set (not an ``AgentSession``) keeps none."""
    changes = getattr(session, "changes", None)
    pending = getattr(changes, "audit", None)
    if not isinstance(pending, list):
        return
    from astrid.store import workspace_key

    path = getattr(session, "workspace_path", None)
    fields = {
        "id": entry_id or str(uuid.uuid4()),
        "at": format_rfc3339(utcnow()),
        "session_id": str(getattr(getattr(session, "id", None), "bare", session)),
        "workspace": workspace_key(path) if path is not None else None,
        "actor": actor,
        "action_type": action_type,
        "action": action,
        "decision": decision,
        "proof": _proof_data(proof),
        "reason": reason,
    }
    pending.append(PendingAudit(fields, keypair))


def _canonical(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def seal(pending: Sequence[PendingAudit], head: tuple[int, str] | None) -> list[AuditRecord]:
    """Chain and sign entries of ONE chain after ``head`` (its last ``(seq, hash)``, None for an
    empty chain); the backend calls it in its write transaction, having read the head there."""
    seq, prev = head if head is not None else (0, GENESIS)
    out: list[AuditRecord] = []
    for item in pending:
        seq += 1
        body = _canonical(
            {
                **item.fields,
                "chain": item.chain,
                "seq": seq,
                "prev_hash": prev,
                "public_key": item.keypair.public_key_base64,
            }
        )
        digest = sha256_hex(body.encode())
        signature = b64encode(item.keypair.sign(digest.encode()))
        f = item.fields
        out.append(
            AuditRecord(item.chain, seq, str(f["id"]), str(f["session_id"]), str(f["at"]),
                        body, digest, signature)
        )
        prev = digest
    return out


_Chained = TypeVar("_Chained", PendingAudit, AuditRecord)


def by_chain(items: Iterable[_Chained]) -> dict[str, list[_Chained]]:
    """Entries (pending or stored) grouped by chain, each group in the given order."""
    groups: dict[str, list[_Chained]] = {}
    for item in items:
        groups.setdefault(item.chain, []).append(item)
    return groups


def to_import(records: Sequence[AuditRecord], stored: Sequence[str]) -> list[AuditRecord]:
    """Which of ONE chain's entries copied from another store (in order) a target whose chain
    holds ``stored`` (its hashes, in sequence order) lacks: an entry already there with the same
    hash is skipped (a resumed copy); a different entry at its place, or a gap, is refused with
    ``StorageError`` naming the chain and position, so a copy never forks or breaks a chain."""
    out: list[AuditRecord] = []
    for rec in records:
        where = f"audit chain {rec.chain or '(no workspace)'}, entry #{rec.seq} ({rec.id})"
        if 0 < rec.seq <= len(stored):
            if stored[rec.seq - 1] != rec.hash:
                raise StorageError(
                    f"{where}: the target already holds a different entry there; the chain "
                    "was not copied (a target's chains must be empty or the same entries)"
                )
            continue
        if rec.seq != len(stored) + len(out) + 1:
            raise StorageError(
                f"{where}: the target's chain ends at #{len(stored) + len(out)}: copying it "
                "would leave a gap; the chain was not copied"
            )
        out.append(rec)
    return out


def runtime_keys(home: Path) -> list[str]:
    """The public key of the runtime key under ``home`` (``keys/runtime.key``) as the one key
    entries may be signed by; empty (any valid signature) when there is none yet."""
    key_path = home / "keys" / "runtime.key"
    if not key_path.exists():
        return []
    from astrid.security.crypto import load_or_create_keypair

    return [load_or_create_keypair(key_path).public_key_base64]


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """The first bad entry of a chain and what is wrong with it."""

    chain: str
    seq: int
    entry_id: str
    problem: str

    def describe(self) -> str:
        """One line naming the entry."""
        where = self.chain or "(no workspace)"
        return f"audit entry {self.entry_id} (chain {where}, #{self.seq}): {self.problem}"


def _check(record: AuditRecord, expected_seq: int, prev: str, trusted: set[str]) -> str | None:
    try:
        data = record.data
    except (ValueError, SerializationError):
        return "its body is not valid JSON (edited)"
    if sha256_hex(record.body.encode()) != record.hash:
        return "its hash does not match its contents (edited)"
    key_text = data.get("public_key")
    try:
        key = decode_public_key(str(key_text))
        signature = b64decode(record.signature)
    except ValueError:
        return "its public key or signature is malformed"
    if not verify_signature(key, record.hash.encode(), signature):
        return "its signature does not verify (edited)"
    if trusted and key_text not in trusted:
        return f"it is signed by key {key_text}, not the runtime key (re-signed)"
    if data.get("seq") != expected_seq:
        return f"expected entry #{expected_seq} here (an entry was removed or reordered)"
    if (data.get("seq"), data.get("chain"), data.get("id"), data.get("session_id")) != (
        record.seq, record.chain, record.id, record.session_id
    ):
        return "its stored columns differ from its signed contents (edited)"
    if data.get("prev_hash") != prev:
        return "its previous hash is not the hash of the entry before it (removed or reordered)"
    return None


def verify(
    records: Iterable[AuditRecord], trusted_keys: Iterable[str] = ()
) -> list[AuditProblem]:
    """The first bad entry of each chain (empty: every chain is intact). ``records``: every
    stored entry, each chain in stored order; ``trusted_keys``: base64 public keys that may
    sign (empty: any key whose signature verifies)."""
    trusted = set(trusted_keys)
    state: dict[str, tuple[int, str]] = {}
    bad: dict[str, AuditProblem] = {}
    for rec in records:
        if rec.chain in bad:
            continue
        seq, prev = state.get(rec.chain, (0, GENESIS))
        problem = _check(rec, seq + 1, prev, trusted)
        if problem is not None:
            bad[rec.chain] = AuditProblem(rec.chain, seq + 1, rec.id, problem)
        else:
            state[rec.chain] = (seq + 1, rec.hash)
    return sorted(bad.values(), key=lambda p: p.chain)


__all__ = [
    "GENESIS",
    "AuditProblem",
    "AuditRecord",
    "PendingAudit",
    "by_chain",
    "record",
    "runtime_keys",
    "seal",
    "to_import",
    "verify",
]
