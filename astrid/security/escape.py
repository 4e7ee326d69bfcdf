"""Workspace boundaries and escape approvals (the original's ``astrid_workspace``), with our fixes.

A *workspace escape* is a tool touching a path outside the workspace root. ``WorkspaceBoundary``
classifies a path; ``EscapeHandler`` remembers the escapes a user approved.

Our deliberate differences from the original (design §5 item 6):

* A path that does not exist is resolved as far as it exists (symlinks included) and its ``..``
  components are normalised lexically before any prefix test, and the root is canonicalised, so
  a non-existent ``<root>/../../etc/x`` is not "inside" the workspace.
* Relative paths are resolved against the workspace root, never the process's working directory.
* Never-allowed paths win over remembered escapes: ``EscapeHandler.is_allowed`` takes the
  never-allow list and checks it first, and ``restore_state`` drops never-allowed paths when
  given a boundary.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath
from typing import Annotated, Any
from uuid import UUID, uuid4

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from astrid.security._extras import unknown_keys, with_unknown_keys
from astrid.security._journal import ChangeJournal
from astrid.security.globs import GlobSyntaxError, compile_glob
from astrid.timeutil import Timestamp, utcnow

__all__ = [
    "DEFAULT_NEVER_ALLOW",
    "ESCAPE_CONTEXT",
    "AutoAllow",
    "EscapeDecision",
    "EscapeFlow",
    "EscapeFlowKind",
    "EscapeHandler",
    "EscapeOperation",
    "EscapePolicy",
    "EscapeRequest",
    "EscapeState",
    "NeverAllowed",
    "PathCheck",
    "WorkspaceBoundary",
    "WorkspaceConfig",
    "WorkspaceMode",
    "canonicalize",
    "is_never_allowed_path",
    "path_parts",
    "path_starts_with",
    "resolve_path",
]

logger = logging.getLogger(__name__)

ESCAPE_CONTEXT = "Workspace escape: "
"""How the context of an approval the runtime asks for a workspace escape begins: the audit
entry of a deferred one, resolved later, is then recorded as an ``escape`` too."""

DEFAULT_NEVER_ALLOW: tuple[str, ...] = ("/etc", "/var", "/usr", "/bin", "/sbin", "/boot", "/root")
"""System directories a workspace never lets a tool touch."""


# --------------------------------------------------------------------------------------------
# path helpers


def _fspath(value: Any) -> Any:
    """Accept ``os.PathLike`` where a path string is expected."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


PathStr = Annotated[str, BeforeValidator(_fspath)]
"""A path stored (and written to JSON) as a string; ``pathlib`` paths are accepted."""


def canonicalize(path: str | os.PathLike[str]) -> str | None:
    """``realpath`` of an existing path (symlinks and ``..`` resolved), or None if it fails."""
    try:
        return os.path.realpath(os.fspath(path), strict=True)
    except (OSError, RuntimeError, ValueError):
        return None


def resolve_path(path: str | os.PathLike[str]) -> str:
    """Canonical form of a path that may not exist: resolve what exists, normalise the rest.

    Existing prefixes have their symlinks resolved; ``..`` and ``.`` in the non-existent part
    are normalised lexically. A relative path is taken relative to the working directory.
    """
    raw = os.fspath(path)
    canonical = canonicalize(raw)
    if canonical is not None:
        return canonical
    try:
        return os.path.normpath(os.path.realpath(raw))
    except (OSError, RuntimeError, ValueError):
        return os.path.normpath(os.path.abspath(raw))


def path_starts_with(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> bool:
    """Component-wise prefix test (``/a/bc`` does not start with ``/a/b``); no I/O."""
    path_parts = PurePath(path).parts
    base_parts = PurePath(base).parts
    if not base_parts:
        return False
    return path_parts[: len(base_parts)] == base_parts


def path_parts(path: str) -> tuple[str, ...]:
    """``PurePath(path).parts``, without building a ``PurePath`` for a plain absolute path.

    Restoring thousands of remembered paths splits each; ``PurePath`` was most of that time.
    """
    if (
        path.startswith("/")
        and "//" not in path
        and "/./" not in path
        and not path.endswith(("/", "/."))
    ):
        return ("/", *path[1:].split("/"))
    return PurePath(path).parts


class NeverAllowed:
    """Never-allowed entries, each as given and canonicalized, resolved once at construction.

    Build one per check, or per batch of checks done together (restoring thousands of
    remembered paths): resolving every entry again for each path made that quadratic in I/O.
    """

    def __init__(self, entries: Iterable[str | os.PathLike[str]]) -> None:
        bases: list[tuple[str, ...]] = []
        for blocked in entries:
            bases.append(path_parts(os.fspath(blocked)))
            canonical = canonicalize(blocked)
            if canonical is not None:
                bases.append(path_parts(canonical))
        self._bases = [base for base in bases if base]  # an empty base never matches

    def covers(self, path: str | os.PathLike[str]) -> bool:
        """True if ``path`` lies under an entry (raw or canonical, either side)."""
        raw = os.fspath(path)
        forms = {resolve_path(raw)}
        if os.path.isabs(raw):
            forms.add(os.path.normpath(raw))
        return self.covers_forms(forms)

    def covers_forms(self, forms: Iterable[str]) -> bool:
        """True if any of these already resolved forms of a path lies under an entry."""
        for form in forms:
            parts = path_parts(form)
            if any(parts[: len(base)] == base for base in self._bases):
                return True
        return False


def is_never_allowed_path(path: str | os.PathLike[str], never_allow: Iterable[str]) -> bool:
    """True if ``path`` lies under any ``never_allow`` entry (raw or canonical, either side)."""
    return NeverAllowed(never_allow).covers(path)


# --------------------------------------------------------------------------------------------
# escape requests and decisions


class EscapeOperation(StrEnum):
    """What a tool wants to do with a path outside the workspace."""

    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    EXECUTE = "execute"
    LIST = "list"

    def __str__(self) -> str:
        return self.value


class EscapeDecision(StrEnum):
    """The user's answer to an escape request."""

    ALLOW_ONCE = "allow_once"
    ALLOW_SESSION = "allow_session"
    ALLOW_ALWAYS = "allow_always"
    DENY = "deny"

    def __str__(self) -> str:
        return self.value

    def is_allowed(self) -> bool:
        """True for every decision except Deny."""
        return self is not EscapeDecision.DENY

    def should_remember(self) -> bool:
        """True for AllowAlways only (persisted across sessions)."""
        return self is EscapeDecision.ALLOW_ALWAYS


class EscapeRequest(BaseModel):
    """A request to let a tool access a path outside the workspace."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    request_id: UUID = Field(default_factory=uuid4)
    path: PathStr
    operation: EscapeOperation
    reason: str
    created_at: Timestamp = Field(default_factory=utcnow)
    tool_name: str | None = None
    server_name: str | None = None

    @classmethod
    def new(
        cls, path: str | os.PathLike[str], operation: EscapeOperation, reason: str
    ) -> EscapeRequest:
        """A fresh request (new id, created now) without tool or server."""
        return cls(path=os.fspath(path), operation=operation, reason=reason)

    def with_tool(self, tool_name: str) -> EscapeRequest:
        """A copy naming the tool that asked."""
        return self.model_copy(update={"tool_name": tool_name})

    def with_server(self, server_name: str) -> EscapeRequest:
        """A copy naming the MCP server of the tool."""
        return self.model_copy(update={"server_name": server_name})


class EscapeState(BaseModel):
    """The persisted part of an ``EscapeHandler``: the AllowAlways paths."""

    model_config = ConfigDict(extra="allow")  # unknown keys are carried, never honoured

    remembered_paths: list[PathStr] = Field(default_factory=list)


class PathCheck(StrEnum):
    """How the boundary classifies a path."""

    ALLOWED = "allowed"
    AUTO_ALLOWED = "auto_allowed"
    NEVER_ALLOWED = "never_allowed"
    REQUIRES_APPROVAL = "requires_approval"

    def __str__(self) -> str:
        return self.value

    def is_allowed(self) -> bool:
        """True for Allowed and AutoAllowed."""
        return self in (PathCheck.ALLOWED, PathCheck.AUTO_ALLOWED)

    def needs_approval(self) -> bool:
        """True for RequiresApproval."""
        return self is PathCheck.REQUIRES_APPROVAL

    def is_blocked(self) -> bool:
        """True for NeverAllowed."""
        return self is PathCheck.NEVER_ALLOWED


class EscapeFlowKind(StrEnum):
    """The three outcomes of ``EscapeFlow``."""

    ALLOWED = "allowed"
    DENIED = "denied"
    NEEDS_APPROVAL = "needs_approval"


@dataclass(frozen=True, slots=True)
class EscapeFlow:
    """What to do with a path: go ahead, refuse, or ask the user with ``request``."""

    kind: EscapeFlowKind
    request: EscapeRequest | None = None

    @classmethod
    def from_check(
        cls,
        check: PathCheck,
        path: str | os.PathLike[str],
        operation: EscapeOperation,
        reason: str,
    ) -> EscapeFlow:
        """Allowed/AutoAllowed go ahead, NeverAllowed is denied, RequiresApproval asks."""
        if check.is_allowed():
            return cls(EscapeFlowKind.ALLOWED)
        if check is PathCheck.NEVER_ALLOWED:
            return cls(EscapeFlowKind.DENIED)
        return cls(EscapeFlowKind.NEEDS_APPROVAL, EscapeRequest.new(path, operation, reason))

    def is_allowed(self) -> bool:
        """True when the access may go ahead."""
        return self.kind is EscapeFlowKind.ALLOWED

    def is_denied(self) -> bool:
        """True when the access is refused."""
        return self.kind is EscapeFlowKind.DENIED

    def needs_approval(self) -> bool:
        """True when the user must be asked (``request`` is set)."""
        return self.kind is EscapeFlowKind.NEEDS_APPROVAL


# --------------------------------------------------------------------------------------------
# workspace config


class WorkspaceMode(StrEnum):
    """How strictly paths outside the workspace are handled."""

    SAFE = "safe"
    GUIDED = "guided"
    AUTONOMOUS = "autonomous"

    def __str__(self) -> str:
        return self.value


class EscapePolicy(StrEnum):
    """What Safe and Guided modes do with a path outside the workspace."""

    ASK = "ask"
    DENY = "deny"
    ALLOW = "allow"

    def __str__(self) -> str:
        return self.value


class AutoAllow(BaseModel):
    """Paths and globs outside the workspace that are allowed without asking."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    read: list[PathStr] = Field(default_factory=list)
    write: list[PathStr] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)


class WorkspaceConfig(BaseModel):
    """A workspace root, its mode and escape policy, and its allowed and blocked paths.

    The never-allowed list is the field ``never_allowed`` in Python (``never_allow`` in JSON and
    as a keyword), so that ``never_allow(path)`` can be the builder, as in the original.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    root: PathStr = "."
    mode: WorkspaceMode = WorkspaceMode.SAFE
    escape_policy: EscapePolicy = EscapePolicy.ASK
    auto_allow: AutoAllow = Field(default_factory=AutoAllow)
    never_allowed: list[PathStr] = Field(
        default_factory=lambda: list(DEFAULT_NEVER_ALLOW), alias="never_allow"
    )
    allow_create_outside: bool = False
    allow_delete_outside: bool = False

    @classmethod
    def new(cls, root: str | os.PathLike[str]) -> WorkspaceConfig:
        """A Safe/Ask config for ``root`` that blocks the system directories."""
        return cls(root=os.fspath(root))

    @classmethod
    def default(cls) -> WorkspaceConfig:
        """``new(".")``."""
        return cls.new(".")

    def with_mode(self, mode: WorkspaceMode) -> WorkspaceConfig:
        """A copy with another mode."""
        return self.model_copy(update={"mode": mode})

    def with_escape_policy(self, policy: EscapePolicy) -> WorkspaceConfig:
        """A copy with another escape policy."""
        return self.model_copy(update={"escape_policy": policy})

    def allow_read(self, path: str | os.PathLike[str]) -> WorkspaceConfig:
        """A copy that auto-allows reading under ``path``."""
        auto = self.auto_allow.model_copy(
            update={"read": [*self.auto_allow.read, os.fspath(path)]}
        )
        return self.model_copy(update={"auto_allow": auto})

    def allow_write(self, path: str | os.PathLike[str]) -> WorkspaceConfig:
        """A copy that auto-allows writing under ``path``."""
        auto = self.auto_allow.model_copy(
            update={"write": [*self.auto_allow.write, os.fspath(path)]}
        )
        return self.model_copy(update={"auto_allow": auto})

    def never_allow(self, path: str | os.PathLike[str]) -> WorkspaceConfig:
        """A copy that also blocks ``path`` (appended to the never-allowed list)."""
        return self.model_copy(update={"never_allowed": [*self.never_allowed, os.fspath(path)]})

    def is_in_workspace(self, path: str | os.PathLike[str]) -> bool:
        """Component-wise prefix test against the raw root (no I/O; see ``WorkspaceBoundary``)."""
        return path_starts_with(path, self.root)


# --------------------------------------------------------------------------------------------
# the boundary


_RESTRICTIVENESS = {
    PathCheck.ALLOWED: 0,
    PathCheck.AUTO_ALLOWED: 1,
    PathCheck.REQUIRES_APPROVAL: 2,
    PathCheck.NEVER_ALLOWED: 3,
}


class WorkspaceBoundary:
    """Classifies paths against a ``WorkspaceConfig`` (never-allowed, inside, auto-allowed)."""

    def __init__(self, config: WorkspaceConfig) -> None:
        self.config = config
        self.root = resolve_path(os.path.abspath(config.root))
        """The canonical workspace root."""
        patterns: list[re.Pattern[str]] = []
        for pattern in config.auto_allow.patterns:
            try:
                patterns.append(compile_glob(pattern))
            except GlobSyntaxError as exc:
                logger.warning("ignoring invalid auto_allow pattern %r: %s", pattern, exc)
        self._patterns = tuple(patterns)

    def expand_path(self, path: str | os.PathLike[str]) -> str:
        """The absolute canonical form of ``path`` (relative paths are under the root)."""
        raw = os.fspath(path)
        candidate = raw if os.path.isabs(raw) else os.path.join(self.root, raw)
        return resolve_path(candidate)

    def is_in_workspace(self, path: str | os.PathLike[str]) -> bool:
        """True if the expanded path is the root or below it."""
        return path_starts_with(self.expand_path(path), self.root)

    def is_auto_allowed(self, path: str | os.PathLike[str]) -> bool:
        """True if under an auto-allowed read or write path, or matching an auto-allow glob.

        As in the original, the operation is not considered: read and write entries both allow.
        """
        expanded = self.expand_path(path)
        auto = self.config.auto_allow
        for entry in (*auto.read, *auto.write):
            if path_starts_with(expanded, entry):
                return True
            canonical = canonicalize(entry)
            if canonical is not None and path_starts_with(expanded, canonical):
                return True
        return any(pattern.fullmatch(expanded) is not None for pattern in self._patterns)

    def is_never_allowed(self, path: str | os.PathLike[str]) -> bool:
        """True if the path is under a never-allowed entry (raw or canonicalised).

        Relative entries are taken relative to the workspace root.
        """
        raw = os.fspath(path)
        candidate = raw if os.path.isabs(raw) else os.path.join(self.root, raw)
        return self.never_allowed().covers(candidate)

    def never_allowed(self) -> NeverAllowed:
        """The never-allowed entries resolved now (relative ones under the workspace root)."""
        return NeverAllowed(
            entry if os.path.isabs(entry) else os.path.join(self.root, entry)
            for entry in self.config.never_allowed
        )

    def check(self, path: str | os.PathLike[str]) -> PathCheck:
        """Never-allowed, then inside, then auto-allowed, then the mode and escape policy."""
        if self.is_never_allowed(path):
            return PathCheck.NEVER_ALLOWED
        if self.is_in_workspace(path):
            return PathCheck.ALLOWED
        if self.is_auto_allowed(path):
            return PathCheck.AUTO_ALLOWED
        if self.config.mode is WorkspaceMode.AUTONOMOUS:
            return PathCheck.ALLOWED
        policy = self.config.escape_policy
        if policy is EscapePolicy.ALLOW:
            return PathCheck.AUTO_ALLOWED
        if policy is EscapePolicy.DENY:
            return PathCheck.NEVER_ALLOWED
        return PathCheck.REQUIRES_APPROVAL

    def escape_rule(self, path: str | os.PathLike[str]) -> str | None:
        """Which setting lets a path outside the workspace through without asking (the audit
        entry's reason), None for a path inside it or one the settings do not let through."""
        if self.is_never_allowed(path) or self.is_in_workspace(path):
            return None
        if self.is_auto_allowed(path):
            return "auto-allowed by the workspace's auto_allow settings"
        if self.config.mode is WorkspaceMode.AUTONOMOUS:
            return "workspace mode: autonomous"
        if self.config.escape_policy is EscapePolicy.ALLOW:
            return "escape policy: allow"
        return None

    def check_all(self, paths: Iterable[str | os.PathLike[str]]) -> PathCheck:
        """The most restrictive result (NeverAllowed stops early); Allowed for no paths."""
        result = PathCheck.ALLOWED
        for path in paths:
            check = self.check(path)
            if check is PathCheck.NEVER_ALLOWED:
                return check
            if _RESTRICTIVENESS[check] > _RESTRICTIVENESS[result]:
                result = check
        return result

    def __repr__(self) -> str:
        return f"WorkspaceBoundary(root={self.root!r}, config={self.config!r})"


# --------------------------------------------------------------------------------------------
# the handler


def _canonical_or_raw(path: str | os.PathLike[str]) -> str:
    raw = os.fspath(path)
    canonical = canonicalize(raw)
    return canonical if canonical is not None else raw


class EscapeHandler:
    """Remembers approved escapes: AllowAlways paths (persisted) and AllowSession paths.

    A journal of changed remembered paths lets a saver that holds an earlier export ask only
    what changed since (``remembered_path_changes``), in O(changes) rather than O(paths).
    """

    def __init__(self) -> None:
        self._remembered: set[str] = set()
        self._session: set[str] = set()
        self._version = 0
        """Bumped by every change to ``_remembered`` (keys the cached export)."""
        self._exported: tuple[set[str], int, list[str]] | None = None
        self._extra: dict[str, Any] = {}
        """The unknown state keys restored so far (written back by every export)."""
        self._journal: ChangeJournal[str] = ChangeJournal()
        """The remembered paths changed, by version (``remembered_path_changes``)."""

    @property
    def version(self) -> int:
        """The current version of the remembered paths (bumped by every change)."""
        return self._version

    def _note(self, path: str) -> None:
        """Journal a change of ``path`` at the current version (call after the bump)."""
        self._journal.note(path, self._version)

    def remembered_path_changes(self, since: int) -> tuple[int, dict[str, bool]] | None:
        """``(version, {path: remembered now?})`` for the paths changed after ``since``, or None.

        O(changes). None means the caller must export in full: the journal no longer reaches
        back to ``since``, or ``since`` is not a version of this handler.
        """
        paths = self._journal.since(since, self._version)
        if paths is None:
            return None
        remembered = self._remembered
        return self._version, {path: path in remembered for path in paths}

    @property
    def remembered_paths(self) -> frozenset[str]:
        """Canonical paths approved with AllowAlways."""
        return frozenset(self._remembered)

    @property
    def session_paths(self) -> frozenset[str]:
        """Canonical paths approved with AllowSession."""
        return frozenset(self._session)

    def process_decision(self, request: EscapeRequest, decision: EscapeDecision) -> None:
        """Remember the request's path for AllowAlways or AllowSession; otherwise store nothing."""
        path = _canonical_or_raw(request.path)
        if decision is EscapeDecision.ALLOW_ALWAYS:
            if path not in self._remembered:
                self._remembered.add(path)
                self._version += 1
                self._note(path)
                self._journal.bound(self._remembered)
        elif decision is EscapeDecision.ALLOW_SESSION:
            self._session.add(path)

    def is_allowed(self, path: str | os.PathLike[str], never_allow: Iterable[str] = ()) -> bool:
        """True if exactly this path was approved, unless it is under a ``never_allow`` entry."""
        return self.remembered_decision(path, never_allow) is not None

    def remembered_decision(
        self, path: str | os.PathLike[str], never_allow: Iterable[str] = ()
    ) -> EscapeDecision | None:
        """The remembered approval that lets exactly this path through (AllowAlways or
        AllowSession; the audit entry's proof), None if none or under a ``never_allow`` entry."""
        if is_never_allowed_path(path, never_allow):
            return None
        canonical = _canonical_or_raw(path)
        if canonical in self._remembered:
            return EscapeDecision.ALLOW_ALWAYS
        if canonical in self._session:
            return EscapeDecision.ALLOW_SESSION
        return None

    def clear_session(self) -> None:
        """Forget the AllowSession paths."""
        self._session.clear()

    def clear_all(self) -> None:
        """Forget every approved path."""
        self._session.clear()
        self._version += 1
        for path in self._remembered:
            self._note(path)
        self._remembered.clear()
        self._journal.bound(self._remembered)

    def export_state(self) -> EscapeState:
        """The AllowAlways paths, sorted (session paths are not persisted)."""
        known = {"remembered_paths": sorted(self._remembered)}
        return EscapeState.model_validate(with_unknown_keys(known, self._extra))

    def export_state_data(self, *, paths: bool = True) -> dict[str, Any]:
        """``export_state().model_dump(mode="json")``; the sorted paths are kept until they change.

        Every save writes it, and sorting thousands of paths each time would dominate the save.
        ``paths=False`` leaves out ``remembered_paths`` (for a saver that writes only their
        changes, see ``remembered_path_changes``).
        """
        if not paths:
            return with_unknown_keys({}, self._extra)
        remembered = self._remembered
        cached = self._exported
        if cached is None or cached[0] is not remembered or cached[1] != self._version:
            listed = sorted(remembered)
            if not all(type(p) is str for p in listed):  # only ever str, unless set by hand
                listed = self.export_state().model_dump(mode="json")["remembered_paths"]
            cached = self._exported = (remembered, self._version, listed)
        data = {"remembered_paths": list(cached[2])}
        return with_unknown_keys(data, self._extra) if self._extra else data

    def restore_state(self, state: EscapeState, boundary: WorkspaceBoundary | None = None) -> None:
        """Merge remembered paths that are absolute and exist (stored canonical).

        With a ``boundary``, paths it never allows are dropped too (a tampered state cannot
        re-open ``/etc``). Rejected paths are dropped with a warning in the log. Unknown keys
        are merged in too (only carried back by exports).
        """
        self._extra.update(unknown_keys(state))
        blocked = boundary.never_allowed() if boundary is not None else None
        for raw in state.remembered_paths:
            if not os.path.isabs(raw):
                logger.warning("dropping relative remembered escape path %r", raw)
                continue
            canonical = canonicalize(raw)
            if canonical is None:
                logger.warning("dropping non-existent remembered escape path %r", raw)
                continue
            # ``boundary.is_never_allowed`` of both the canonical and the raw path, whose
            # resolved forms are these (``raw`` exists and is absolute).
            if blocked is not None and blocked.covers_forms((canonical, os.path.normpath(raw))):
                logger.warning("dropping never-allowed remembered escape path %r", raw)
                continue
            if canonical not in self._remembered:
                self._remembered.add(canonical)
                self._version += 1
                self._note(canonical)
        self._journal.bound(self._remembered)

    def copy(self) -> EscapeHandler:
        """An independent copy (the handler is held by value).

        The copy starts a new journal at a version after this one's, with its floor there: a
        delta from any version of this handler up to now is refused by the copy.
        """
        other = EscapeHandler()
        other._remembered = set(self._remembered)
        other._session = set(self._session)
        other._extra = dict(self._extra)
        other._version = self._version + 1
        other._journal.floor = other._version
        return other

    def __repr__(self) -> str:
        return (
            f"EscapeHandler(remembered_paths={sorted(self._remembered)!r}, "
            f"session_paths={sorted(self._session)!r})"
        )
