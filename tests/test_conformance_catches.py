"""The storage conformance suite catches the bugs it used to miss.

Each case copies ``examples/plugin_package``'s backend into ``tmp_path``, plants one bug in the
copy, runs the suite's checks on it with pytest in a subprocess and expects exactly the check
made for that bug to fail, showing the values (``astrid.testing`` is rewritten by pytest through
the ``pytest11`` entry point).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugin_package" / "astrid_example_storage"

CHECKS = (
    "test_listing_ties_are_ordered_by_id",
    "test_a_save_based_on_another_message_count_is_a_conflict",
    "test_two_processes_appending_to_one_session_lose_nothing",
    "test_a_write_keeps_the_summarys_updated_at_and_an_append_stamps_now",
    "test_listing_rows_carry_the_stored_revision",
)

BUGS: dict[str, tuple[str, str, str, str]] = {
    # bug: (check that must fail, code replaced, replacement, a value the failure shows)
    "ties by title": (
        CHECKS[0],
        "rows.sort(key=lambda r: (-r.updated_at.timestamp(), r.id))",
        "rows.sort(key=lambda r: (-r.updated_at.timestamp(), r.title or ''))",
        r"assert \['[0-9a-f]{8}",
    ),
    "append count unchecked": (
        CHECKS[1],
        "if last is not None and not change.replace and count != change.base_count:",
        "if False:",
        "DID NOT RAISE",
    ),
    "no cross-process lock": (
        CHECKS[2],
        "        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)\n",
        "",
        r"assert \d+ == \d+",
    ),
    "write stamps now": (
        CHECKS[3],
        "change.summary, message_count=kept + len(change.messages), revision=revision",
        "change.summary, message_count=kept + len(change.messages), revision=revision, "
        "updated_at=datetime.now(UTC)",
        r"updated_at 20\d\d-.* instead of 2021-03-04 05:06:07\+00:00",
    ),
    "row without revision": (
        CHECKS[4],
        "change.summary, message_count=kept + len(change.messages), revision=revision",
        "change.summary, message_count=kept + len(change.messages)",
        r"assert 0 == 1",
    ),
}

TEST_MODULE = '''
from pathlib import Path

from astrid_example_storage import JsonlBackend
from astrid.testing import StorageConformance


class TestPlanted(StorageConformance):
    def make_backend(self, tmp_path: Path) -> JsonlBackend:
        return JsonlBackend(tmp_path / "jsonl", fsync=False)

    def reopen_backend(self, backend: JsonlBackend, tmp_path: Path) -> JsonlBackend:
        return JsonlBackend(tmp_path / "jsonl", fsync=False)
'''


def _run_suite(tmp_path: Path, bug: str | None) -> subprocess.CompletedProcess[str]:
    package = tmp_path / "astrid_example_storage"
    shutil.copytree(EXAMPLE, package, ignore=shutil.ignore_patterns("__pycache__"))
    if bug is not None:
        _check, old, new, _shown = BUGS[bug]
        backend = package / "backend.py"
        source = backend.read_text()
        assert source.count(old) == 1, f"the example backend changed: {old!r} not found"
        backend.write_text(source.replace(old, new))
    (tmp_path / "test_planted.py").write_text(TEST_MODULE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short",
         "-k", " or ".join(CHECKS), "test_planted.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def _failed(output: str) -> set[str]:
    return set(re.findall(r"^FAILED test_planted\.py::TestPlanted::(\w+)", output, re.M))


def test_the_example_backend_passes_the_new_checks(tmp_path: Path) -> None:
    out = _run_suite(tmp_path, None)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(CHECKS)} passed" in out.stdout


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_the_suite_catches_a_planted_bug(tmp_path: Path, bug: str) -> None:
    check, _old, _new, shown = BUGS[bug]
    out = _run_suite(tmp_path, bug)
    assert out.returncode == 1, out.stdout + out.stderr
    assert _failed(out.stdout) == {check}, out.stdout
    assert re.search(shown, out.stdout), out.stdout
