"""Every example runs, as a newcomer would run it: in a fresh process, offline, with a timeout.

The storage plugin in ``examples/plugin_package`` is installed the way a third party's would be
(``pip install --no-deps --target``, so nothing touches the project's environment), found through
its entry point in a fresh process, selected from TOML, and its own test suite is run there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PLUGIN_PACKAGE = EXAMPLES / "plugin_package"

EXAMPLE_TIMEOUT = 30
INSTALL_TIMEOUT = 180
SUITE_TIMEOUT = 120

# Lines (or parts of lines) each example must print; an example not listed must just exit 0.
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": ["session ", "child ", '"messages"'],
    "host.py": ["approvals asked: 1; recorded: 1", "reloaded "],
    "embedding.py": [
        "storage sqlite {'path': 'host-sessions.db'}, session budget $5.00, llm scripted",
        "turn 1: 'You have two open orders: A-17 and B-42.' ($0.000635)",  # [pricing] applied
        "lookup_order",
        "turn 1: 'You have two open orders: A-17 and B-42.'",
        "read_file({'path': 'orders.txt'}) -> ok: A-17 B-42",
        "turn 2: 'Order A-17 shipped on Monday.'",
        "first run done: 8 messages",
        "1 approval(s) asked",
        "resumed ",
        "turn 3: 'B-42 is still waiting for stock; A-17 has shipped.'",
        "lookup_order({'order': 'B-42'}) -> ok: order B-42: waiting for stock",
        "approvals asked in the second run: 0",
        "stored: 13 messages, 3 turns, 4 tool calls",
    ],
    "custom_estimator.py": [
        "config: [tokens] estimator = 'words', options {'tokens_per_word': 1.5}",
        "store estimator: words (WordEstimator, 1.5 tokens a word)",
        "session token_count with 'words': 39",
        "the same messages with 'content': 48",
        "reloaded: token_count 39 (stored), estimator words",
        "after one more message: 44",
        "a misspelt option is refused: ",
        "unknown key 'tokens.options.tokens_per_wrod'",
    ],
}


def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without astrid's variables, with a private astrid home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASTRID_")}
    env.pop("PYTHONPATH", None)
    env["ASTRID_HOME"] = str(home)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def _run(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# -- the example scripts --------------------------------------------------------------------


def _scripts() -> list[Path]:
    return sorted(EXAMPLES.glob("*.py"))


def test_every_expected_example_exists() -> None:
    names = {p.name for p in _scripts()}
    assert set(EXPECTED) <= names, f"missing examples: {sorted(set(EXPECTED) - names)}"


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = _run(
        [sys.executable, str(script)],
        cwd=tmp_path,  # no ./astrid.toml to pick up
        env=_clean_env(home),
        timeout=EXAMPLE_TIMEOUT,
    )
    assert proc.returncode == 0, _explain(proc)
    for expected in EXPECTED.get(script.name, []):
        assert expected in proc.stdout, f"{expected!r} not printed\n{_explain(proc)}"
    assert "Traceback" not in proc.stderr, _explain(proc)
    if script.name in ("embedding.py", "custom_estimator.py"):
        # they keep everything in their own temporary directory
        assert not home.exists() or not any(home.iterdir()), sorted(home.rglob("*"))


# -- the packaged storage plugin ------------------------------------------------------------


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(a copy of the package's source, the directory it was pip-installed into)."""
    base = tmp_path_factory.mktemp("plugin")
    source = base / "src"
    shutil.copytree(
        PLUGIN_PACKAGE,
        source,
        ignore=shutil.ignore_patterns(
            "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"
        ),
    )
    site = base / "site"
    proc = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(source),
        ],
        cwd=base,
        env=_clean_env(base / "pip-home"),
        timeout=INSTALL_TIMEOUT,
    )
    assert proc.returncode == 0, _explain(proc)
    assert (site / "astrid_example_storage" / "backend.py").is_file()
    dist_info = site / "astrid_example_storage-0.1.0.dist-info"
    assert "example-storage = astrid_example_storage" in (
        dist_info / "entry_points.txt"
    ).read_text(encoding="utf-8")
    yield source, site


SAVE_SCRIPT = textwrap.dedent(
    """
    import sys
    import astrid_example_storage
    from astrid import Message
    from astrid.plugins import plugin_info
    from astrid.store import open_store

    site = sys.argv[1]
    assert astrid_example_storage.__file__.startswith(site), astrid_example_storage.__file__
    [info] = [p for p in plugin_info() if p["name"] == "example-storage"]
    print("plugin", info["name"], info["version"], ",".join(info["hooks"]))
    with open_store() as store:  # ./astrid.toml
        print("backend", type(store.backend).__name__, store.backend.name)
        session = store.new_session("You are helpful.").with_model("m-1")
        session.add_message(Message.user("remember the milk"))
        session.add_message(Message.assistant("noted"))
        session.metadata.title = "groceries"
        store.save(session)
        session.add_message(Message.user("and the eggs"))
        revision = store.save(session)
        print("saved", session.id.bare, "revision", revision)
    """
)

LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    from astrid.store import open_store

    with open_store() as store:
        [row] = store.list_sessions()
        session = store.load(sys.argv[1])
        assert session is not None
        texts = [m.text() for m in session.messages]
        print("listed", row.id, row.title, row.message_count, row.revision)
        print("loaded", " | ".join(texts), "revision", store.revision_of(session))
    """
)

JSONL_TOML = """\
[storage]
backend = "jsonl"

[storage.options]
directory = "my-jsonl-store"
fsync = false

[capabilities]
store = "memory"

[git]
capture = "none"
"""


def test_the_installed_plugin_is_selected_from_toml_and_persists(
    installed_plugin: tuple[Path, Path], tmp_path: Path
) -> None:
    _source, site = installed_plugin
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    (work / "astrid.toml").write_text(JSONL_TOML, encoding="utf-8")
    env = _clean_env(home, PYTHONPATH=str(site))

    saved = _run(
        [sys.executable, "-c", SAVE_SCRIPT, str(site)], cwd=work, env=env, timeout=EXAMPLE_TIMEOUT
    )
    assert saved.returncode == 0, _explain(saved)
    assert "plugin example-storage 0.1.0 register_storage_backends" in saved.stdout
    assert "backend JsonlBackend jsonl" in saved.stdout
    session_id = saved.stdout.split("saved ", 1)[1].split()[0]
    assert "revision 2" in saved.stdout

    session_file = home / "my-jsonl-store" / "sessions" / f"{session_id}.jsonl"
    assert session_file.is_file()
    assert len(session_file.read_text(encoding="utf-8").splitlines()) == 2  # one line per save

    loaded = _run(
        [sys.executable, "-c", LOAD_SCRIPT, session_id], cwd=work, env=env, timeout=EXAMPLE_TIMEOUT
    )
    assert loaded.returncode == 0, _explain(loaded)
    assert f"listed {session_id} groceries 3 2" in loaded.stdout
    assert "loaded remember the milk | noted | and the eggs revision 2" in loaded.stdout


def test_without_the_plugin_jsonl_is_an_unknown_backend(tmp_path: Path) -> None:
    (tmp_path / "astrid.toml").write_text(JSONL_TOML, encoding="utf-8")
    proc = _run(
        [sys.executable, "-c", "from astrid.store import open_store; open_store()"],
        cwd=tmp_path,
        env=_clean_env(tmp_path / "home"),
        timeout=EXAMPLE_TIMEOUT,
    )
    assert proc.returncode != 0
    assert "unknown storage 'jsonl'" in proc.stderr, _explain(proc)
    choices = proc.stderr.split("valid choices: ", 1)[1].splitlines()[0].split(", ")
    assert "sqlite" in choices and "jsonl" not in choices


def test_the_plugin_package_passes_its_own_conformance_tests(
    installed_plugin: tuple[Path, Path], tmp_path: Path
) -> None:
    source, site = installed_plugin
    proc = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=source,
        env=_clean_env(tmp_path / "home", PYTHONPATH=str(site)),
        timeout=SUITE_TIMEOUT,
    )
    assert proc.returncode == 0, _explain(proc)
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    assert int(summary.split()[0]) >= 61, summary  # 59 conformance tests (1 skipped), its own 3
