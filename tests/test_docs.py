"""The docs stay true: every config key is documented, the code in the docs runs, links resolve."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from astrid import Message, ToolCall, ToolCallResult
from astrid.config import PLUGGABLE, AstridConfig
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.plugins import get_implementation, registry
from astrid.security.budget import WorkspaceBudgetSnapshot
from astrid.security.escape import EscapeState
from astrid.store import SessionStore, WorkspaceState
from astrid.timeutil import utcnow

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text(encoding="utf-8")

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks(page: str, language: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def _section_models() -> list[tuple[str, type[BaseModel]]]:
    """(dotted name, model) of every section model under ``AstridConfig``, recursively."""
    found: list[tuple[str, type[BaseModel]]] = []

    def walk(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            for candidate in (field.annotation, *typing.get_args(field.annotation)):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    dotted = f"{prefix}.{name}" if prefix else name
                    found.append((dotted, candidate))
                    walk(dotted, candidate)

    walk("", AstridConfig)
    return found


# -- the configuration reference ------------------------------------------------------------


def test_there_are_sections_to_check() -> None:
    names = [name for name, _ in _section_models()]
    assert {"storage", "tokens", "git", "capabilities", "budget"} <= set(names)


@pytest.mark.parametrize("section", [name for name, _ in _section_models()])
def test_every_section_is_documented(section: str) -> None:
    spellings = (f"`[{section}]`", f"`[{section}.", f"`{section}`")  # [pricing."<model>"] too
    assert any(spelling in CONFIGURATION for spelling in spellings), section


@pytest.mark.parametrize(
    ("section", "field"),
    [(name, field) for name, model in _section_models() for field in model.model_fields],
)
def test_every_config_field_is_documented(section: str, field: str) -> None:
    assert f"`{field}`" in CONFIGURATION, f"[{section}] {field} is missing from configuration.md"


def _builtin_options() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for _section, _key, kind in PLUGGABLE:
        for name, impl in sorted(registry(kind).items()):
            if not impl.plugin.startswith("astrid."):
                continue  # a third-party plugin documents its own options
            out.extend((kind, name, option) for option in impl.options.model_fields)
    return out


@pytest.mark.parametrize(("kind", "name", "option"), _builtin_options())
def test_every_builtin_plugin_option_is_documented(kind: str, name: str, option: str) -> None:
    assert get_implementation(kind, name) is not None
    assert f"`{option}`" in CONFIGURATION, f"option {option!r} of {kind} {name!r} is undocumented"


# -- code blocks ------------------------------------------------------------------------------


def _run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASTRID_")}
    env["ASTRID_HOME"] = str(tmp_path / "home")
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


PYTHON_BLOCKS = [
    (page, index, code)
    for page in ("quickstart.md", "storage.md")
    for index, code in enumerate(_blocks(page, "python"))
]


def test_the_quickstart_has_python_blocks() -> None:
    assert len([b for b in PYTHON_BLOCKS if b[0] == "quickstart.md"]) >= 2


@pytest.mark.parametrize(
    ("page", "index", "code"), PYTHON_BLOCKS, ids=[f"{p}-{i}" for p, i, _ in PYTHON_BLOCKS]
)
def test_python_blocks_run(page: str, index: int, code: str, tmp_path: Path) -> None:
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 0, f"{page} block {index}:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "home" / "astrid.db").is_file()  # it used the default store


def test_quickstart_output_is_what_the_page_implies(tmp_path: Path) -> None:
    first, second = [code for page, _i, code in PYTHON_BLOCKS if page == "quickstart.md"][:2]
    out = _run_python(first, tmp_path).stdout
    assert "my first session 2 messages," in out and "stored sessions: 1" in out
    out = _run_python(second, tmp_path).stdout
    assert "Hello! I am a scripted model." in out and "1 LLM call" in out


RUNTIME_HOSTS = [code for code in _blocks("runtime.md", "python") if "asyncio.run(" in code]
"""The complete hosts of runtime.md (its other Python blocks are parts of a coroutine)."""


def test_the_runtime_guide_host_runs_as_written(tmp_path: Path) -> None:
    assert RUNTIME_HOSTS, "runtime.md lost its runnable host"
    outputs = []
    for index, code in enumerate(RUNTIME_HOSTS):
        where = tmp_path / f"host{index}"
        where.mkdir()
        proc = _run_python(code, where)
        assert proc.returncode == 0, f"runtime.md host {index}:\n{proc.stdout}\n{proc.stderr}"
        assert (where / "home" / "astrid.db").is_file()  # the configured (default) store
        outputs.append(proc.stdout.splitlines())
    here = tmp_path / "host0"
    assert outputs[0] == [  # what the page says it prints
        f"configuration: {here / 'astrid.toml'}",
        f"Your notes say: buy milk. ($0.001260; asked: ['Read: {here / 'project' / 'notes.txt'}'])",
        "Your notes say: buy milk. (8 messages; asked 1 time)",
    ]


# -- the storage page's SQL -------------------------------------------------------------------


def _statements(sql: str) -> list[str]:
    statements: list[str] = []
    current = ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    assert not current.strip(), f"unterminated SQL: {current!r}"
    return statements


def _tables(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    names = [
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    return {name: list(conn.execute(f"PRAGMA table_info({name})")) for name in sorted(names)}


def _indexes(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"
    )
    return {r[0] for r in rows}


def test_the_documented_schema_is_the_real_one(tmp_path: Path) -> None:
    schema, _queries = _blocks("storage.md", "sql")
    documented = sqlite3.connect(":memory:")
    documented.executescript(schema)
    backend = SqliteBackend(tmp_path / "astrid.db")
    backend.close()
    real = sqlite3.connect(tmp_path / "astrid.db")
    try:
        assert _tables(documented) == _tables(real)
        assert _indexes(documented) == _indexes(real)
    finally:
        real.close()
        documented.close()


def _populated_store(path: Path, workspace: Path) -> str:
    """A SQLite store with a summarized session, a sub-agent, workspace state and a deferral."""
    store = SessionStore(SqliteBackend(path))
    session = store.new_session("p").with_model("m-1")
    store.attach_workspace(session, workspace)
    session.metadata.title = "errands"
    session.add_message(Message.user("What is in notes.txt? Call the plumber."))
    session.add_message(
        Message.assistant_with_tools(
            [ToolCall(id="c1", name="read_file", arguments={"path": "notes.txt"})]
        )
    )
    session.add_message(Message.tool_result(ToolCallResult.success("c1", "call the plumber")))
    session.add_message(Message.assistant("Call the plumber."))
    store.save(session)
    session.clear_messages()
    session.add_message(Message.system("Summary: the plumber"))
    store.save(session)
    child = session.child("helper")
    child.add_message(Message.user("plan"))
    store.save(child)
    store.save_workspace_state(
        workspace,
        WorkspaceState(
            budget=WorkspaceBudgetSnapshot(total_spent_usd=1.5, last_updated=utcnow()),
            escape=EscapeState(remembered_paths=[]),
        ),
    )
    store.deferred_queue_kv(session.id).set("0b1d6c1e-8f2a-4c53-9d7e-2f0e6a1b3c4d", b"{}")
    store.close()
    return session.id.bare


def test_the_documented_queries_run_on_a_real_store(tmp_path: Path) -> None:
    _schema, queries = _blocks("storage.md", "sql")
    workspace = (tmp_path / "ws").resolve()
    workspace.mkdir()
    sid = _populated_store(tmp_path / "astrid.db", workspace)
    conn = sqlite3.connect(f"file:{tmp_path / 'astrid.db'}?mode=ro", uri=True)
    results: list[list[tuple[object, ...]]] = []
    try:
        for statement in _statements(queries.replace("<session-uuid>", sid)):
            try:
                results.append(conn.execute(statement).fetchall())
            except sqlite3.Error as exc:  # pragma: no cover - the message is the point
                pytest.fail(f"{exc}: {statement}")
    finally:
        conn.close()
    flat = repr(results)
    assert "errands" in flat and "read_file" in flat and "Summary: the plumber" in flat
    assert str(workspace) in flat and "1.5" in flat and "0003_kv" in flat
    assert any(row == (sid, 4) for rows in results for row in rows)  # 4 messages replaced


# -- the pages themselves ---------------------------------------------------------------------


def test_the_index_lists_every_page() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"]({page.name})" in index, f"docs/index.md does not link {page.name}"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_resolve(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        assert (DOCS / path).exists(), f"{page} links {target}, which does not exist"
