"""``ChangeJournal``: which keys changed since a version, in O(changes) (for keyed saves)."""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class ChangeJournal(Generic[K]):
    """Key -> the version of its last change, oldest change first.

    A reader that holds the state as of version ``v`` asks ``since(v)`` for the keys changed
    after it. The journal forgets the oldest keys no longer present once it outgrows the live
    keys, raising ``floor`` past them: a reader from before ``floor`` must read everything.
    """

    def __init__(self, floor: int = 0) -> None:
        self._changes: dict[K, int] = {}
        self.floor = floor
        """Readers from versions before this get None from ``since``."""

    def __len__(self) -> int:
        return len(self._changes)

    def last_change(self, key: K) -> int | None:
        """The version of ``key``'s last recorded change (None if not recorded)."""
        return self._changes.get(key)

    def note(self, key: K, version: int) -> None:
        """Record a change of ``key`` at ``version`` (the newest so far)."""
        changes = self._changes
        changes.pop(key, None)
        changes[key] = version

    def bound(self, live: Collection[K]) -> None:
        """Once the journal outgrows the present keys ``live``, forget the oldest keys not in
        it (down to ~1.5x of them), raising ``floor`` past them: amortised O(1) per change."""
        if len(self._changes) <= 2 * len(live) + 64:
            return
        excess = len(self._changes) - (len(live) + len(live) // 2 + 32)
        kept: dict[K, int] = {}
        floor = self.floor
        for key, version in self._changes.items():
            if excess > 0 and key not in live:
                excess -= 1
                floor = max(floor, version)
            else:
                kept[key] = version
        self._changes = kept
        self.floor = floor

    def since(self, version: int, current: int) -> list[K] | None:
        """The keys changed after ``version``, newest first; None if the journal does not reach
        back that far or ``version`` is newer than ``current`` (not a version of this state)."""
        if version < self.floor or version > current:
            return None
        keys: list[K] = []
        for key, changed in reversed(self._changes.items()):
            if changed <= version:
                break
            keys.append(key)
        return keys
