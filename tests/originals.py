"""Documents as the Rust astrid writes them, shared by the tests that read or import them."""

from __future__ import annotations

RUST_ID = "6f1c2a8e-0b7d-4f4e-9a51-2d3c4b5a6978"

RUST_DOCUMENT = """{
  "id": "6f1c2a8e-0b7d-4f4e-9a51-2d3c4b5a6978",
  "user_id": "0102030405060708",
  "messages": [
    {"role": "user", "content": "Read a.txt"},
    {"role": "assistant", "content": [
      {"id": "call_1", "name": "read_file", "arguments": {"file_path": "/ws/a.txt"}}]},
    {"role": "tool", "content": {"call_id": "call_1", "content": "hello", "is_error": false}},
    {"role": "assistant", "content": "It says hello"}
  ],
  "system_prompt": "You are ...",
  "created_at": "2026-02-22T03:48:10.123456789Z",
  "token_count": 205,
  "metadata": {"title": null, "tags": [], "turn_count": 0, "tool_call_count": 1,
               "approval_count": 0, "custom": {}},
  "allowances": [],
  "budget_snapshot": {"session_spent_usd": 0.0123,
                      "config": {"session_max_usd": 100.0, "per_action_max_usd": 10.0,
                                 "warn_at_percent": 80},
                      "last_updated": "2026-02-22T03:50:00.000000001Z"},
  "escape_state": {"remembered_paths": []},
  "workspace_path": "/ws",
  "model": "claude-sonnet-4-20250514",
  "git_state": {"branch": "main", "commit": "0123abcd..."}
}
"""
"""The illustrative session document of the original's spec (§2.7), exactly as written there."""
