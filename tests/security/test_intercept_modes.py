"""``intercept(..., require_approval=, ask_human=)``: the stricter approval a tool may ask for
(astrid-mcp's per-server ``approval = "ask" | "policy"``); neither lifts a policy block."""

from __future__ import annotations

import asyncio

import pytest

from astrid.errors import ApprovalDenied, PolicyBlocked
from astrid.security.actions import McpToolCall
from astrid.security.approvals import AllowanceProof
from astrid.security.interceptor import AuditOutcome, PolicyAllowed, UserApproval
from astrid.security.policy import SecurityPolicy
from tests.security.test_interceptor import Harness, auto_approve

NOTES_ADD = McpToolCall(server="notes", tool="add")


def intercept(h: Harness, **modes: bool) -> object:
    return asyncio.run(h.interceptor.intercept(NOTES_ADD, "test", **modes)).proof


def test_the_default_lets_the_policy_allow() -> None:
    handler = auto_approve()
    h = Harness(SecurityPolicy.default(), handler)
    assert isinstance(intercept(h), PolicyAllowed)
    assert handler.requests == []


def test_require_approval_asks_where_the_policy_allows() -> None:
    handler = auto_approve()
    h = Harness(SecurityPolicy.default(), handler)
    assert isinstance(intercept(h, require_approval=True), UserApproval)
    assert [r.action for r in handler.requests] == [NOTES_ADD]


def test_no_human_denies_without_a_grant_and_allows_with_an_allowance() -> None:
    handler = auto_approve()
    h = Harness(SecurityPolicy.default(), handler)
    with pytest.raises(ApprovalDenied, match="no one is asked"):
        intercept(h, require_approval=True, ask_human=False)
    assert handler.requests == []
    assert h.audit.session_entries(h.session.id)[-1].outcome is AuditOutcome.DENIED
    granted = h.session.approval_manager.grant_allowance(NOTES_ADD, session_only=True)
    assert granted is not None
    proof = intercept(h, require_approval=True, ask_human=False)
    assert proof == AllowanceProof(granted)
    assert handler.requests == []


def test_neither_option_lifts_a_policy_block() -> None:
    handler = auto_approve()
    h = Harness(SecurityPolicy(blocked_tools={"notes:add"}), handler)
    for modes in ({}, {"require_approval": True}, {"require_approval": True, "ask_human": False}):
        with pytest.raises(PolicyBlocked):
            intercept(h, **modes)
    assert handler.requests == []
