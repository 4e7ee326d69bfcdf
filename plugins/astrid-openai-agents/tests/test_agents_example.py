"""The example of docs/openai-agents.md runs as printed there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[1] / "examples" / "budgeted_agent.py"


def test_the_docs_example_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[:2] == ["run 1: Hello!", "run 2: Still here."]
    assert lines[2].startswith("run 3 refused: astrid session ")
    assert lines[2].endswith(
        "(Agents SDK session 'support-7'): the model call of agent 'support' is refused: "
        "session budget: $6.00 spent of $5.00"
    )
    assert lines[3:] == [
        "astrid sessions list: Hi (5 items)",
        "items: ['user', 'assistant', 'user', 'assistant', 'user']",
    ]


def test_the_docs_page_shows_the_example_unchanged() -> None:
    page = (Path(__file__).parents[3] / "docs" / "openai-agents.md").read_text(encoding="utf-8")
    assert f"```python\n{EXAMPLE.read_text(encoding='utf-8')}```\n" in page
