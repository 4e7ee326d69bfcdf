"""astrid as the session store of the OpenAI Agents SDK.

``AstridSession`` implements the SDK's ``Session`` protocol over an astrid ``SessionStore`` (any
backend); ``AstridBudgetHooks`` are ``RunHooks`` that charge and enforce astrid's persisted
session and workspace budgets. A library only: it registers nothing with astrid's plugin
manager. See docs/openai-agents.md.
"""

from __future__ import annotations

from .budget import AstridBudgetHooks, model_name
from .session import SDK_ID_KEY, AstridSession, astrid_session_id

__all__ = ["SDK_ID_KEY", "AstridBudgetHooks", "AstridSession", "astrid_session_id", "model_name"]
