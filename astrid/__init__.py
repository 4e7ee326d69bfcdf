"""astrid: a session runtime for LLM agents.

Importing ``astrid`` loads the session core only; SQLite, cryptography and click are imported
when first used.
"""

from __future__ import annotations

from .document import GitState, SessionDocument, SessionMetadata
from .errors import AstridError
from .hookspecs import hookimpl
from .ids import SessionId
from .messages import Message, MessageRole, ToolCall, ToolCallResult
from .session import AgentSession
from .tokens import ContentEstimator, OriginalEstimator, TokenEstimator

__version__ = "0.2.0.dev0"

__all__ = [
    "AgentSession",
    "AstridError",
    "ContentEstimator",
    "GitState",
    "Message",
    "MessageRole",
    "OriginalEstimator",
    "SessionDocument",
    "SessionId",
    "SessionMetadata",
    "TokenEstimator",
    "ToolCall",
    "ToolCallResult",
    "__version__",
    "hookimpl",
]
