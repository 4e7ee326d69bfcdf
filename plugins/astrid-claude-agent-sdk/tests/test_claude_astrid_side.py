"""What astrid shows of mirrored transcripts, bad keys, the example, and two writing processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import InvalidKey
from astrid.store import SessionStore
from astrid.testing import run_together

from astrid_claude_agent_sdk import KEY_PREFIX, AstridTranscriptStore, astrid_session_id

PLUGIN = Path(__file__).parents[1]
MAIN: Any = {"project_key": "-work-app", "session_id": "3f0c"}
SUB: Any = {**MAIN, "subpath": "subagents/agent-7"}
PROMPT = {"type": "user", "uuid": "u1", "message": {"role": "user", "content": "Fix the build"}}


def test_listed_by_astrid_with_titles_counts_and_parent(
    make_store: Callable[[], SessionStore],
) -> None:
    astrid_store = make_store()
    store = AstridTranscriptStore(astrid_store)

    async def scenario() -> None:
        await store.append(MAIN, [PROMPT, {"type": "assistant", "uuid": "a1"}])
        await store.append(MAIN, [{"type": "custom-title", "customTitle": "later"}])
        await store.append(SUB, [{"type": "user", "uuid": "s1", "isSidechain": True}])

    asyncio.run(scenario())
    rows = {row.id: row for row in astrid_store.list_sessions()}
    main = rows[astrid_session_id(MAIN)]
    sub = rows[astrid_session_id(SUB)]
    assert (main.title, main.message_count) == ("Fix the build", 3)
    assert (sub.title, sub.message_count) == ("claude-agent-sdk 3f0c subagents/agent-7", 1)
    assert sub.parent_id == main.id
    loaded = astrid_store.load(main.id)
    assert loaded is not None
    assert loaded.metadata.custom[KEY_PREFIX + "project_key"] == "-work-app"
    assert loaded.metadata.custom[KEY_PREFIX + "session_id"] == "3f0c"


@pytest.mark.parametrize(
    ("key", "part"),
    [
        ({"project_key": "", "session_id": "s"}, "project_key"),
        ({"project_key": "p", "session_id": 7}, "session_id"),
        ({"project_key": "p", "session_id": "s", "subpath": ""}, "subpath"),
    ],
)
def test_a_bad_key_is_a_named_error(key: Any, part: str, tmp_path: Path) -> None:
    with SessionStore(SqliteBackend(tmp_path / "a.db")) as astrid_store:
        store = AstridTranscriptStore(astrid_store)
        with pytest.raises(InvalidKey, match=f"{part} must be a non-empty string"):
            asyncio.run(store.append(key, [PROMPT]))
        assert astrid_store.count() == 0


def test_the_docs_example_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(PLUGIN / "examples" / "mirror_transcripts.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "options carry the store: True"
    assert lines[1].endswith(" - List the files in this project")
    assert lines[2:] == [
        "user: List the files in this project",
        "assistant: [{'type': 'text', 'text': 'README.md and src/.'}]",
        "astrid sessions list: List the files in this project (2 messages)",
    ]


WORKER = """
import asyncio, sys
from pathlib import Path
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.store import SessionStore
from astrid_claude_agent_sdk import AstridTranscriptStore

async def main(db, name, go):
    with SessionStore(SqliteBackend(db)) as astrid_store:
        store = AstridTranscriptStore(astrid_store)
        Path(go).with_name("ready-" + name).touch()
        while not Path(go).exists():
            await asyncio.sleep(0.005)
        for n in range(40):
            key = {"project_key": "p", "session_id": "shared"}
            await store.append(key, [{"type": "x", "uuid": f"{name}-{n}"}])

asyncio.run(main(*sys.argv[1:]))
"""


def test_two_processes_append_to_one_transcript(tmp_path: Path) -> None:
    go = tmp_path / "go"
    run_together(
        {n: [sys.executable, "-c", WORKER, str(tmp_path / "a.db"), n, str(go)] for n in "ab"}, go
    )
    with SessionStore(SqliteBackend(tmp_path / "a.db")) as astrid_store:
        entries = asyncio.run(
            AstridTranscriptStore(astrid_store).load({"project_key": "p", "session_id": "shared"})
        )
    assert entries is not None and len(entries) == 80
    for name in ("a", "b"):
        assert [e["uuid"] for e in entries if e["uuid"].startswith(name)] == [
            f"{name}-{n}" for n in range(40)
        ]


def test_the_docs_page_shows_the_example_unchanged() -> None:
    example = PLUGIN / "examples" / "mirror_transcripts.py"
    page = (PLUGIN.parents[1] / "docs" / "claude-agent-sdk.md").read_text(encoding="utf-8")
    assert f"```python\n{example.read_text(encoding='utf-8')}```\n" in page
