"""Allowances: pre-approved action patterns and the thread-safe store that consumes them.

An ``Allowance`` lets a matching ``SensitiveAction`` through without asking the user again. Its
JSON shape is the original's (``astrid_approval::allowance``): bare UUID id, ``type``-tagged
pattern, ``Z`` timestamps, every optional key written as ``null``.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import itertools
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
)

from astrid.errors import AllowanceNotFound, SerializationError
from astrid.security._journal import ChangeJournal
from astrid.security.actions import (
    ExecuteCommand,
    FileDelete,
    FileRead,
    FileWriteOutsideSandbox,
    McpToolCall,
    NetworkRequest,
    Permission,
    PluginExecution,
    PluginFileAccess,
    PluginHttpRequest,
    SensitiveAction,
)
from astrid.security.globs import escape_glob, glob_match
from astrid.timeutil import Timestamp, utcnow

SIGNATURE_LENGTH = 64
"""Length in bytes of an ed25519 signature."""

UNSIGNED_SIGNATURE = base64.b64encode(bytes(SIGNATURE_LENGTH)).decode("ascii")
"""The signature written when no signer is given (64 zero bytes, base64)."""

_U32_MAX = 2**32 - 1

_PLUGIN_FILE_CAPABILITIES: dict[Permission, str] = {
    Permission.READ: "file_read",
    Permission.WRITE: "file_write",
    Permission.DELETE: "file_delete",
}

WorkspaceRoot = PurePath | str | None
"""A workspace root as callers pass it: a path, a path string, or None for "no workspace"."""


def _as_path(root: PurePath | str) -> PurePath:
    return root if isinstance(root, PurePath) else Path(root)


def path_in_workspace(path: str, workspace_root: WorkspaceRoot) -> bool:
    """True if ``path`` lies under ``workspace_root`` component-wise (always true for None)."""
    if workspace_root is None:
        return True
    root_parts = _as_path(workspace_root).parts
    return Path(path).parts[: len(root_parts)] == root_parts


def _file_action_path(permission: Permission, action: SensitiveAction) -> str | None:
    """The path of a file action that ``permission`` covers, or None if it covers no such action."""
    if permission is Permission.READ and isinstance(action, FileRead):
        return action.path
    if permission is Permission.WRITE and isinstance(action, FileWriteOutsideSandbox):
        return action.path
    if permission is Permission.DELETE and isinstance(action, FileDelete):
        return action.path
    return None


class _Pattern(BaseModel):
    # Unknown keys are carried and written back; matching never looks at them.
    model_config = ConfigDict(frozen=True, extra="allow")

    _OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()
    """Our keys the original does not have: left out of the JSON while unset."""

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self._OMITTED_WHEN_NONE:
            if data.get(key, "") is None:
                del data[key]
        return data

    def __eq__(self, other: object) -> bool:
        """Same type and known fields: unknown keys never make two patterns differ."""
        if not isinstance(other, _Pattern):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.__dict__.values())))

    def matches(self, action: SensitiveAction, workspace_root: WorkspaceRoot = None) -> bool:
        """True if this pattern covers ``action`` (any unlisted combination is False)."""
        return False


class ExactTool(_Pattern):
    """One tool on one MCP server."""

    type: Literal["exact_tool"] = "exact_tool"
    server: str
    tool: str

    def matches(self, action: SensitiveAction, workspace_root: WorkspaceRoot = None) -> bool:
        return (
            isinstance(action, McpToolCall)
            and action.server == self.server
            and action.tool == self.tool
        )

    def __str__(self) -> str:
        return f"mcp://{self.server}/{self.tool}"


class ServerTools(_Pattern):
    """Every tool on one MCP server."""

    type: Literal["server_tools"] = "server_tools"
    server: str

    def matches(self, action: SensitiveAction, workspace_root: WorkspaceRoot = None) -> bool:
        return isinstance(action, McpToolCall) and action.server == self.server

    def __str__(self) -> str:
        return f"mcp://{self.server}/*"


class FilePattern(_Pattern):
    """File reads, writes or deletes whose path matches a glob (no workspace check)."""

    type: Literal["file_pattern"] = "file_pattern"
    pattern: str
    permission: Permission

    def matches(self, action: SensitiveAction, workspace_root: WorkspaceRoot = None) -> bool:
        path = _file_action_path(self.permission, action)
        return path is not None and glob_match(self.pattern, path)

    def __str__(self) -> str:
        return f"file:{self.pattern} ({self.permission})"


class NetworkHost(_Pattern):
    """Network requests to one host, on any port (ports null) or on the listed ports."""

    type: Literal["network_host"] = "network_host"
    host: str
    ports: tuple[Annotated[int, Field(ge=0, le=65535)], ...] | None = None

    def matches(self, action: SensitiveAction, workspace_root: WorkspaceRoot = None) -> bool:
        return (
            isinstance(action, NetworkRequest)
            and action.host == self.host
            and (self.ports is None or action.port in self.ports)
        )

    def __str__(self) -> str:
        if self.ports is None:
            return f"net:{self.host}:*"
        return f"net:{self.host}:[{','.join(str(p) for p in self.ports)}]"


class CommandPattern(_Pattern):
    """Commands whose name matches a glob; with ``args``, only exactly those arguments.

    ``args`` unset (the original's shape, and what a host writes for "any arguments") matches
    every argument list; a list matches that list only, element for element, taken literally.
    """

    _OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"args"})

    type: Literal["command_pattern"] = "command_pattern"
    command: str
    args: tuple[str, ...] | None = None

    def matches(self, action: SensitiveAction, workspace_root: WorkspaceRoot = None) -> bool:
        return (
            isinstance(action, ExecuteCommand)
            and glob_match(self.command, action.command)
            and (self.args is None or tuple(action.args) == self.args)
        )

    def __str__(self) -> str:
        if self.args is None:
            return f"cmd:{self.command}"
        return f"cmd:{self.command} {list(self.args)}"


class WorkspaceRelative(_Pattern):
    """A glob that only applies inside a workspace (file paths must lie under its root)."""

    type: Literal["workspace_relative"] = "workspace_relative"
    pattern: str
    permission: Permission

    def matches(self, action: SensitiveAction, workspace_root: WorkspaceRoot = None) -> bool:
        if self.permission is Permission.INVOKE:
            return (
                isinstance(action, McpToolCall)
                and workspace_root is not None
                and glob_match(self.pattern, f"{action.server}/{action.tool}")
            )
        if self.permission is Permission.EXECUTE:
            return (
                isinstance(action, ExecuteCommand)
                and workspace_root is not None
                and glob_match(self.pattern, action.command)
            )
        path = _file_action_path(self.permission, action)
        return (
            path is not None
            and path_in_workspace(path, workspace_root)
            and glob_match(self.pattern, path)
        )

    def __str__(self) -> str:
        return f"workspace:{self.pattern} ({self.permission})"


class Custom(_Pattern):
    """An extension point: a free-form pattern that never matches any action."""

    type: Literal["custom"] = "custom"
    pattern: str

    def __str__(self) -> str:
        return f"custom:{self.pattern}"


def _plugin_resource(action: SensitiveAction) -> str | None:
    """What a plugin HTTP request (``METHOD url``) or file access (the path) is about."""
    if isinstance(action, PluginHttpRequest):
        return f"{action.method} {action.url}"
    if isinstance(action, PluginFileAccess):
        return action.path
    return None


class PluginCapability(_Pattern):
    """One capability of one plugin (``http_request``, ``file_read``... for derived actions).

    With ``resource`` set, only the HTTP request (``"METHOD url"``) or file access (path) with
    exactly that resource is covered; unset, every use of the capability is.
    """

    _OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"resource"})

    type: Literal["plugin_capability"] = "plugin_capability"
    plugin_id: str
    capability: str
    resource: str | None = None

    def matches(self, action: SensitiveAction, workspace_root: WorkspaceRoot = None) -> bool:
        if self.resource is not None and _plugin_resource(action) != self.resource:
            return False
        if isinstance(action, PluginExecution):
            return action.plugin_id == self.plugin_id and action.capability == self.capability
        if isinstance(action, PluginHttpRequest):
            return action.plugin_id == self.plugin_id and self.capability == "http_request"
        if isinstance(action, PluginFileAccess):
            derived = _PLUGIN_FILE_CAPABILITIES.get(action.mode)
            return (
                derived is not None
                and action.plugin_id == self.plugin_id
                and self.capability == derived
            )
        return False

    def __str__(self) -> str:
        if self.resource is None:
            return f"plugin://{self.plugin_id}:{self.capability}"
        return f"plugin://{self.plugin_id}:{self.capability} ({self.resource})"


class PluginWildcard(_Pattern):
    """Every plugin action (execution, HTTP, file access) of one plugin."""

    type: Literal["plugin_wildcard"] = "plugin_wildcard"
    plugin_id: str

    def matches(self, action: SensitiveAction, workspace_root: WorkspaceRoot = None) -> bool:
        return (
            isinstance(action, PluginExecution | PluginHttpRequest | PluginFileAccess)
            and action.plugin_id == self.plugin_id
        )

    def __str__(self) -> str:
        return f"plugin://{self.plugin_id}:*"


AllowancePattern = Annotated[
    ExactTool
    | ServerTools
    | FilePattern
    | NetworkHost
    | CommandPattern
    | WorkspaceRelative
    | Custom
    | PluginCapability
    | PluginWildcard,
    Field(discriminator="type"),
]
"""The actions an allowance covers (internally tagged by ``type``, as in the original)."""

ALLOWANCE_PATTERN_ADAPTER: TypeAdapter[AllowancePattern] = TypeAdapter(AllowancePattern)


def pattern_for_action(action: SensitiveAction) -> AllowancePattern | None:
    """The pattern a session/workspace approval of ``action`` grants, or None if it grants none.

    The pattern covers exactly ``action``, unlike the original's: paths and command names are
    glob-escaped (approving ``/tmp/*`` grants that path, not everything under ``/tmp``), a
    command keeps its arguments (approving ``git status`` does not grant ``git push``) and a
    plugin's HTTP request or file access its URL and method or path.
    """
    if isinstance(action, McpToolCall):
        return ExactTool(server=action.server, tool=action.tool)
    if isinstance(action, FileRead):
        return FilePattern(pattern=escape_glob(action.path), permission=Permission.READ)
    if isinstance(action, FileDelete):
        return FilePattern(pattern=escape_glob(action.path), permission=Permission.DELETE)
    if isinstance(action, FileWriteOutsideSandbox):
        return FilePattern(pattern=escape_glob(action.path), permission=Permission.WRITE)
    if isinstance(action, ExecuteCommand):
        return CommandPattern(command=escape_glob(action.command), args=tuple(action.args))
    if isinstance(action, NetworkRequest):
        return NetworkHost(host=action.host, ports=(action.port,))
    if isinstance(action, PluginExecution):
        return PluginCapability(plugin_id=action.plugin_id, capability=action.capability)
    if isinstance(action, PluginHttpRequest):
        return PluginCapability(
            plugin_id=action.plugin_id,
            capability="http_request",
            resource=_plugin_resource(action),
        )
    if isinstance(action, PluginFileAccess):
        capability = _PLUGIN_FILE_CAPABILITIES.get(action.mode)
        if capability is None:
            return None
        return PluginCapability(
            plugin_id=action.plugin_id, capability=capability, resource=_plugin_resource(action)
        )
    # TransmitData, FinancialTransaction, AccessControlChange, CapabilityGrant: always ask.
    return None


class Allowance(BaseModel):
    """A pre-approval for actions matching a pattern, limited by scope, expiry and use count.

    Unknown keys (a newer writer's) are kept and written back; they never change how it is honoured.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    id: UUID
    action_pattern: AllowancePattern
    created_at: Timestamp
    expires_at: Timestamp | None = None
    max_uses: Annotated[int, Field(ge=0, le=_U32_MAX)] | None = None
    uses_remaining: Annotated[int, Field(ge=0, le=_U32_MAX)] | None = None
    session_only: bool
    workspace_root: Path | None = None
    signature: str

    @field_validator("signature")
    @classmethod
    def _check_signature(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("signature is not valid base64") from exc
        if len(raw) != SIGNATURE_LENGTH:
            raise ValueError(f"signature must be {SIGNATURE_LENGTH} bytes, got {len(raw)}")
        if base64.b64encode(raw).decode("ascii") != value:
            raise ValueError("signature is not canonical padded base64")
        return value

    @classmethod
    def create(
        cls,
        action_pattern: AllowancePattern,
        *,
        session_only: bool,
        workspace_root: PurePath | str | None = None,
        expires_at: datetime | None = None,
        max_uses: int | None = None,
        uses_remaining: int | None = None,
        signer: Callable[[bytes], bytes] | None = None,
    ) -> Allowance:
        """A fresh allowance: new v4 id, created now, signed over the id's 16 raw bytes."""
        allowance_id = uuid.uuid4()
        raw = signer(allowance_id.bytes) if signer is not None else bytes(SIGNATURE_LENGTH)
        return cls(
            id=allowance_id,
            action_pattern=action_pattern,
            created_at=utcnow(),
            expires_at=expires_at,
            max_uses=max_uses,
            uses_remaining=uses_remaining,
            session_only=session_only,
            workspace_root=None if workspace_root is None else Path(workspace_root),
            signature=base64.b64encode(raw).decode("ascii"),
        )

    @property
    def signature_bytes(self) -> bytes:
        """The raw 64-byte signature."""
        return base64.b64decode(self.signature)

    def is_expired(self, now: datetime | None = None) -> bool:
        """True when ``expires_at`` is set and strictly in the past."""
        if self.expires_at is None:
            return False
        return self.expires_at < (now if now is not None else utcnow())

    def has_uses_remaining(self) -> bool:
        """True when uses are unlimited (null) or more than zero remain."""
        return self.uses_remaining is None or self.uses_remaining > 0

    def is_valid(self, now: datetime | None = None) -> bool:
        """Not expired and not exhausted."""
        return not self.is_expired(now) and self.has_uses_remaining()

    def __str__(self) -> str:
        return f"allowance:{self.id}"


ALLOWANCE_LIST_ADAPTER: TypeAdapter[list[Allowance]] = TypeAdapter(list[Allowance])


def dump_allowances(allowances: Iterable[Allowance]) -> str:
    """Encode allowances as the original's JSON array (as the workspace KV stores them)."""
    return ALLOWANCE_LIST_ADAPTER.dump_json(list(allowances)).decode("utf-8")


def load_allowances(data: str | bytes, source: str = "allowances") -> list[Allowance]:
    """Decode a JSON array of allowances; raises SerializationError naming ``source``."""
    try:
        return ALLOWANCE_LIST_ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise SerializationError(f"invalid allowances in {source}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class AllowanceDelta:
    """What changed in the session export since a reader's copy (see ``session_allowance_changes``).

    Applying it to the reader's copy (None: drop that id; present: replace in place; otherwise
    append, in the order of ``changes``) gives the current export exactly, order included.
    """

    version: int
    """The store's version the reader is brought to."""
    until: datetime | None
    """The earliest expiry the reader must watch after applying (may be earlier than exact)."""
    changes: dict[str, dict[str, Any] | None]
    """``str(id)`` -> the entry's dump if exported now, None if not (removed, used up, expired)."""


def _root_matches(allowance: Allowance, workspace_root: WorkspaceRoot) -> bool:
    """A rooted allowance applies only when the current root equals its root exactly."""
    if allowance.workspace_root is None:
        return True
    return workspace_root is not None and allowance.workspace_root == _as_path(workspace_root)


class AllowanceStore:
    """Thread-safe, insertion-ordered in-memory store of allowances; every method is atomic.

    Entries can carry an owner tag (the id of the session that added them, kept outside the
    JSON) so that ending one session clears only its own session allowances.

    Used-up entries stay (the original counts them and ``consume_use`` still works on them),
    but finds, exports and purges never look at them: those cost O(entries with uses left), not
    O(every entry ever added).

    A journal of changed ids lets a saver that holds an earlier session export ask only what
    changed since (``session_allowance_changes``), in O(changes) rather than O(entries).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[UUID, Allowance] = {}
        self._owners: dict[UUID, str] = {}
        self._live: dict[UUID, Allowance] = {}
        """The entries with uses left, in the order of ``_entries``."""
        self._expiry: list[tuple[datetime, int, UUID]] = []
        """A heap of ``(expires_at, tie-breaker, id)``; stale items are skipped when popped."""
        self._ticket = itertools.count()
        self._version = 0
        """Bumped by every change (keys the cached session export)."""
        self._dumps: dict[UUID, tuple[Allowance, dict[str, Any]]] = {}
        self._session_data: tuple[int, datetime, datetime | None, list[dict[str, Any]]] | None = (
            None
        )
        self._tickets: dict[UUID, int] = {}
        """Each entry's insertion ticket (increasing in the order of ``_entries``)."""
        self._journal: ChangeJournal[UUID] = ChangeJournal()
        """The ids changed, by version (``session_allowance_changes``)."""

    def _note(self, allowance_id: UUID) -> None:
        """Journal a change of ``allowance_id`` at the current version (call after the bump)."""
        self._journal.note(allowance_id, self._version)
        self._journal.bound(self._entries.keys())

    @staticmethod
    def _joins_export(previous: Allowance, allowance: Allowance) -> bool:
        """True if replacing ``previous`` (with uses left) by ``allowance`` in place may add it
        to the session export: a reader that did not hold it would append it, not put it here."""
        if not allowance.session_only or (previous.session_only and previous.expires_at is None):
            return False
        now = utcnow()
        return not allowance.is_expired(now) and (
            not previous.session_only or previous.is_expired(now)
        )

    def _put(self, allowance: Allowance, owner: str | None) -> None:
        allowance_id = allowance.id
        previous = self._entries.get(allowance_id)
        removed_at: int | None = None
        reordered = False
        if previous is None:
            self._tickets[allowance_id] = next(self._ticket)
            # Journalled while absent only if removed earlier: added again it moves to the end,
            # so a reader from before the removal, which may hold it, would keep its old place.
            removed_at = self._journal.last_change(allowance_id)
        self._entries[allowance_id] = allowance
        self._dumps.pop(allowance_id, None)
        if owner is None:
            self._owners.pop(allowance_id, None)
        else:
            self._owners[allowance_id] = owner
        if not allowance.has_uses_remaining():
            self._live.pop(allowance_id, None)
        elif previous is None or allowance_id in self._live:
            # Appended, or replaced in place.
            reordered = previous is not None and self._joins_export(previous, allowance)
            self._live[allowance_id] = allowance
        else:
            # A used-up entry came back to life in its old place: rebuild the order (rare).
            self._live = {k: a for k, a in self._entries.items() if a.has_uses_remaining()}
            reordered = True
        if allowance.expires_at is not None:
            heapq.heappush(self._expiry, (allowance.expires_at, next(self._ticket), allowance_id))
            if len(self._expiry) > 2 * len(self._entries) + 64:
                self._expiry = [
                    (a.expires_at, next(self._ticket), k)
                    for k, a in self._entries.items()
                    if a.expires_at is not None
                ]
                heapq.heapify(self._expiry)
        self._version += 1
        self._note(allowance_id)
        if reordered:  # it joins the export in its old place: not expressible as a delta
            self._journal.floor = self._version
        elif removed_at is not None and removed_at > self._journal.floor:
            self._journal.floor = removed_at

    def _set_uses(self, allowance: Allowance, remaining: int) -> Allowance:
        """Replace an entry by a copy with ``remaining`` uses (used up: out of ``_live``)."""
        updated = allowance.model_copy(update={"uses_remaining": remaining})
        self._entries[allowance.id] = updated
        self._dumps.pop(allowance.id, None)
        if remaining > 0:
            if allowance.id in self._live:
                self._live[allowance.id] = updated
        else:
            self._live.pop(allowance.id, None)
        self._version += 1
        self._note(allowance.id)
        return updated

    def _remove(self, allowance_id: UUID) -> None:
        del self._entries[allowance_id]
        self._owners.pop(allowance_id, None)
        self._live.pop(allowance_id, None)
        self._dumps.pop(allowance_id, None)
        del self._tickets[allowance_id]
        self._version += 1
        self._note(allowance_id)

    def _find(self, action: SensitiveAction, workspace_root: WorkspaceRoot) -> Allowance | None:
        now = utcnow()
        for allowance in self._live.values():
            if (
                not allowance.is_expired(now)
                and _root_matches(allowance, workspace_root)
                and allowance.action_pattern.matches(action, workspace_root)
            ):
                return allowance
        return None

    def _purge_expired(self) -> int:
        now = utcnow()
        heap = self._expiry
        removed = 0
        while heap and heap[0][0] < now:
            expires_at, _, allowance_id = heapq.heappop(heap)
            current = self._entries.get(allowance_id)
            if current is not None and current.expires_at == expires_at:
                self._remove(allowance_id)
                removed += 1
        return removed

    def add_allowance(self, allowance: Allowance, owner: str | None = None) -> None:
        """Insert or replace (by id), without any validity check; ``owner`` tags the entry."""
        with self._lock:
            self._put(allowance, owner)

    def count(self) -> int:
        """Number of stored entries, expired and exhausted ones included."""
        with self._lock:
            return len(self._entries)

    def __len__(self) -> int:
        return self.count()

    def __bool__(self) -> bool:
        # An empty store is still a store: never let `store or default` replace it.
        return True

    def all(self) -> list[Allowance]:
        """Every stored entry, in insertion order."""
        with self._lock:
            return list(self._entries.values())

    def owner_of(self, allowance_id: UUID) -> str | None:
        """The owner tag recorded for an entry (None if untagged or unknown)."""
        with self._lock:
            return self._owners.get(allowance_id)

    def find_matching(
        self, action: SensitiveAction, workspace_root: WorkspaceRoot = None
    ) -> Allowance | None:
        """The first valid entry covering ``action`` in this workspace; consumes nothing."""
        with self._lock:
            return self._find(action, workspace_root)

    def find_matching_and_consume(
        self, action: SensitiveAction, workspace_root: WorkspaceRoot = None
    ) -> Allowance | None:
        """Atomically purge expired entries, find a match, and use it up once.

        Returns the entry as it was before the decrement.
        """
        with self._lock:
            self._purge_expired()
            found = self._find(action, workspace_root)
            if found is not None and found.uses_remaining is not None:
                self._set_uses(found, max(found.uses_remaining - 1, 0))
            return found

    def consume_use(self, allowance_id: UUID) -> bool:
        """Decrement an entry's uses (saturating); True if unlimited or uses still remain."""
        with self._lock:
            allowance = self._entries.get(allowance_id)
            if allowance is None:
                raise AllowanceNotFound(f"allowance not found: allowance:{allowance_id}")
            if allowance.uses_remaining is None:
                return True
            remaining = max(allowance.uses_remaining - 1, 0)
            self._set_uses(allowance, remaining)
            return remaining > 0

    def cleanup_expired(self) -> int:
        """Remove expired entries (exhausted ones stay); returns how many were removed."""
        with self._lock:
            return self._purge_expired()

    def clear_session_allowances(self, owner: str | None = None) -> None:
        """Remove session entries: all of them, or only those tagged with ``owner``."""
        with self._lock:
            doomed = [
                a.id
                for a in self._entries.values()
                if a.session_only and (owner is None or self._owners.get(a.id) == owner)
            ]
            for allowance_id in doomed:
                self._remove(allowance_id)

    def export_session_allowances(self, owner: str | None = None) -> list[Allowance]:
        """Valid session entries (optionally only those tagged with ``owner``), for saving."""
        with self._lock:
            return self._session_entries(utcnow(), owner)

    def session_export_ids(self) -> tuple[int, datetime | None, list[str]]:
        """Atomically: the version, the earliest expiry among the exported entries and their
        ids in export order; a reader that holds exactly these entries may take deltas from
        here (e.g. after a load) without dumping every entry."""
        with self._lock:
            exported = self._session_entries(utcnow(), None)
            until = min((a.expires_at for a in exported if a.expires_at is not None), default=None)
            return self._version, until, [str(a.id) for a in exported]

    def _session_entries(self, now: datetime, owner: str | None) -> list[Allowance]:
        return [
            a
            for a in self._live.values()
            if a.session_only
            and not a.is_expired(now)
            and (owner is None or self._owners.get(a.id) == owner)
        ]

    def export_session_allowances_data(self) -> list[dict[str, Any]]:
        """``export_session_allowances()`` dumped to JSON-ready dicts, as every save writes it.

        The dump is kept until the store changes or an exported entry expires, and each entry's
        dump until that entry changes. The list is the caller's; the dicts in it are shared and
        must not be modified.
        """
        return self.export_session_allowances_snapshot()[2]

    @property
    def version(self) -> int:
        """Bumped by every change (a reader's basis for ``session_allowance_changes``)."""
        return self._version

    def export_session_allowances_snapshot(
        self,
    ) -> tuple[int, datetime | None, list[dict[str, Any]]]:
        """Atomically: the version, the earliest expiry among the exported entries (None if none
        expires) and ``export_session_allowances_data()``: a reader's basis for later deltas."""
        with self._lock:
            now = utcnow()
            cached = self._session_data
            if not (
                cached is not None
                and cached[0] == self._version
                and cached[1] <= now
                and (cached[2] is None or now <= cached[2])
            ):
                exported = self._session_entries(now, None)
                data = [self._dump(a) for a in exported]
                until = min(
                    (a.expires_at for a in exported if a.expires_at is not None), default=None
                )
                cached = self._session_data = (self._version, now, until, data)
            return self._version, cached[2], list(cached[3])

    def session_allowance_changes(
        self, since: int, until: datetime | None
    ) -> AllowanceDelta | None:
        """The session-export changes after version ``since``, in O(changes), or None.

        The caller holds the export as of ``since`` whose earliest expiry was ``until``. None means
        it must take a full snapshot instead: the journal no longer reaches back to ``since``, or
        ``since`` is not a version of this store. Once ``until`` has passed, the entries expired
        by now are in the changes too (as removed), found on the expiry heap in O(expired).
        """
        with self._lock:
            ids = self._journal.since(since, self._version)
            if ids is None:
                return None
            now = utcnow()
            if until is not None and now > until:
                expired, until = self._expired_by(now)
                ids.extend(expired)
            tickets = self._tickets
            ids.sort(key=lambda k: tickets.get(k, -1))  # removed ids (no ticket) first
            changes: dict[str, dict[str, Any] | None] = {}
            for allowance_id in ids:
                allowance = self._live.get(allowance_id)
                if (
                    allowance is not None
                    and allowance.session_only
                    and not allowance.is_expired(now)
                ):
                    changes[str(allowance_id)] = self._dump(allowance)
                    expires_at = allowance.expires_at
                    if expires_at is not None and (until is None or expires_at < until):
                        until = expires_at
                else:
                    changes[str(allowance_id)] = None
            return AllowanceDelta(self._version, until, changes)

    def _expired_by(self, now: datetime) -> tuple[list[UUID], datetime | None]:
        """The stored entries expired by ``now``, and the earliest expiry still ahead.

        Walks only the expired top of the expiry heap (a heap's smaller items sit above the
        larger ones), so it costs the expired items, not the entries. The expiry ahead may be
        an outdated heap item's (earlier than needed: a later check, never a missed one).
        """
        heap = self._expiry
        expired: list[UUID] = []
        ahead: datetime | None = None
        pending = [0] if heap else []
        while pending:
            index = pending.pop()
            expires_at, _, allowance_id = heap[index]
            if expires_at < now:
                if allowance_id in self._entries:
                    expired.append(allowance_id)
                pending.extend(c for c in (2 * index + 1, 2 * index + 2) if c < len(heap))
            elif ahead is None or expires_at < ahead:
                ahead = expires_at
        return expired, ahead

    def _dump(self, allowance: Allowance) -> dict[str, Any]:
        """``allowance.model_dump(mode="json")``, computed once per stored object."""
        cached = self._dumps.get(allowance.id)
        if cached is None or cached[0] is not allowance:
            cached = self._dumps[allowance.id] = (allowance, allowance.model_dump(mode="json"))
        return cached[1]

    def export_workspace_allowances(self) -> list[Allowance]:
        """Valid non-session entries tied to a workspace root, for the workspace store."""
        with self._lock:
            now = utcnow()
            return [
                a
                for a in self._live.values()
                if not a.session_only and a.workspace_root is not None and not a.is_expired(now)
            ]

    def import_allowances(self, allowances: Iterable[Allowance], owner: str | None = None) -> None:
        """Merge in the valid allowances, replacing by id; expired or exhausted ones are dropped."""
        with self._lock:
            now = utcnow()
            for allowance in allowances:
                if allowance.is_valid(now):
                    self._put(allowance, owner)

    def __repr__(self) -> str:
        return f"AllowanceStore(count={self.count()})"
