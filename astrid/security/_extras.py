"""Unknown keys of persisted models: carried through a load and a save, never honoured."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel


def unknown_keys(model: BaseModel) -> dict[str, Any]:
    """A deep copy of ``model``'s unknown keys, minus any that names or aliases a known field."""
    extra = model.__pydantic_extra__
    if not extra:
        return {}
    fields = type(model).model_fields
    known = set(fields) | {f.alias for f in fields.values() if f.alias}
    return {key: copy.deepcopy(value) for key, value in extra.items() if key not in known}


def with_unknown_keys(data: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the ``extra`` keys it lacks added (a known key always wins); returns it."""
    for key, value in extra.items():
        data.setdefault(key, value)
    return data
