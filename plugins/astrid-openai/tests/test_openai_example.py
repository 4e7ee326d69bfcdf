"""The runnable host of docs/openai.md: it runs offline against the fake server, as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent.parent
EXAMPLE = PLUGIN / "examples" / "openai_host.py"
DOC = PLUGIN.parent.parent / "docs" / "openai.md"


def test_the_example_host_runs_two_turns_with_tools_approvals_and_a_budget() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASTRID_", "OPENAI_"))}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--fake"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[approval] Read:" in out and out.count("[approval]") == 2
    assert "notes.txt is a shopping list of 5 words." in out
    assert "(2 tool call(s), $0.001368)" in out
    assert "spent $0.001824 of $0.50" in out


def test_without_a_key_the_example_stops_with_one_line_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASTRID_", "OPENAI_"))}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--base-url", "http://127.0.0.1:9/v1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: openai: no API key: the environment variable OPENAI_API_KEY "
        "(llm.options.api_key_env) is not set"
    ]


def test_the_docs_show_the_example_as_it_is() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert EXAMPLE.read_text(encoding="utf-8") in blocks
