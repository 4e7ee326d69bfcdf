"""GitState capture: the .git reader agrees with ``git rev-parse`` on every repository shape."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from astrid.document import GitState
from astrid.gitstate import capture_fs, capture_none, capture_subprocess

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _hermetic_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient GIT_* variables or user/system config; a fixed identity for commits."""
    for name in list(os.environ):
        if name.startswith("GIT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Astrid Test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "astrid@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Astrid Test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "astrid@example.invalid")


def git(cwd: Path, *args: str | bytes) -> str:
    """Run git in ``cwd`` and return its trimmed stdout."""
    cmd: list[str | bytes] = [
        "git",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "protocol.file.allow=always",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return proc.stdout.decode("utf-8", "replace").strip()


def make_repo(path: Path, commits: int = 2) -> Path:
    """A repository on ``main`` with ``commits`` commits."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    for i in range(commits):
        (path / "file.txt").write_text(f"{i}\n")
        git(path, "add", "file.txt")
        git(path, "commit", "-q", "-m", f"commit {i}")
    return path


def head(path: Path) -> str:
    """The commit HEAD points at."""
    return git(path, "rev-parse", "HEAD")


def both(path: Path) -> GitState | None:
    """Capture both ways, assert they agree, return the result."""
    fs = capture_fs(path)
    sp = capture_subprocess(path)
    assert fs == sp, f"capture_fs={fs!r} capture_subprocess={sp!r} at {path}"
    return fs


def test_normal_repo_on_main(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert both(repo) == GitState(branch="main", commit=head(repo))


def test_subdirectory(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    sub = repo / "a" / "b"
    sub.mkdir(parents=True)
    assert both(sub) == GitState(branch="main", commit=head(repo))


@pytest.mark.parametrize("name", ["feature/x", "deep/nested/branch-1", "café"])
def test_branch_names(tmp_path: Path, name: str) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "-q", "-b", name)
    assert both(repo) == GitState(branch=name, commit=head(repo))


def test_branch_name_trimmed_like_rust(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "-q", "-b", "wide\u3000")
    assert both(repo) == GitState(branch="wide", commit=head(repo))


def test_branch_name_not_utf8(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "-q", "-b", b"caf\xe9")
    assert both(repo) == GitState(branch=None, commit=head(repo))


def test_detached_head(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", commits=3)
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    git(repo, "checkout", "-q", "--detach", first)
    assert both(repo) == GitState(branch="HEAD", commit=first)


def test_packed_refs_only(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "tag", "-a", "-m", "annotated", "v1")
    git(repo, "checkout", "-q", "-b", "feature/x")
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "feature" / "x").exists()
    assert (repo / ".git" / "packed-refs").exists()
    assert both(repo) == GitState(branch="feature/x", commit=head(repo))


def test_loose_ref_wins_over_packed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "pack-refs", "--all")
    git(repo, "commit", "-q", "--allow-empty", "-m", "after packing")
    assert (repo / ".git" / "refs" / "heads" / "main").exists()
    assert both(repo) == GitState(branch="main", commit=head(repo))


def test_linked_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "other", str(wt))
    (wt / "new.txt").write_text("x\n")
    git(wt, "add", "new.txt")
    git(wt, "commit", "-q", "-m", "on other")
    assert (wt / ".git").is_file()
    (wt / "inner").mkdir()
    expected = GitState(branch="other", commit=head(wt))
    assert expected.commit != head(repo)
    assert both(wt) == expected
    assert both(wt / "inner") == expected
    assert both(repo) == GitState(branch="main", commit=head(repo))
    git(repo, "pack-refs", "--all")
    assert both(wt) == expected


def test_linked_worktree_detached(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "--detach", str(wt))
    assert both(wt) == GitState(branch="HEAD", commit=head(repo))


def test_submodule(tmp_path: Path) -> None:
    lib = make_repo(tmp_path / "lib", commits=3)
    app = make_repo(tmp_path / "app")
    git(app, "submodule", "add", "-q", str(lib), "sub")
    git(app, "commit", "-q", "-m", "add submodule")
    sub = app / "sub"
    assert (sub / ".git").is_file()
    assert both(sub) == GitState(branch="main", commit=head(lib))
    assert both(app) == GitState(branch="main", commit=head(app))
    git(sub, "checkout", "-q", "-b", "topic")
    assert both(sub) == GitState(branch="topic", commit=head(lib))


def test_unborn_branch(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q")
    assert both(repo) is None
    (repo / "sub").mkdir()
    assert both(repo / "sub") is None


def test_unborn_branch_with_a_file_named_head(tmp_path: Path) -> None:
    # git falls back to taking "HEAD" as a file name: it prints "HEAD" and exits 0.
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "HEAD").write_text("not a ref\n")
    assert both(repo) == GitState(branch="HEAD", commit="HEAD")


def test_not_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert both(plain) is None


def test_missing_path(tmp_path: Path) -> None:
    assert both(tmp_path / "does" / "not" / "exist") is None


def test_path_is_a_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert both(repo / "file.txt") is None


def test_gitfile_to_missing_dir(tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / ".git").write_text("gitdir: ../nowhere\n")
    assert both(alone) is None
    # Inside another repository git does not look further up: a broken gitfile is fatal.
    repo = make_repo(tmp_path / "repo")
    nested = repo / "nested"
    nested.mkdir()
    (nested / ".git").write_text(f"gitdir: {tmp_path / 'missing'}\n")
    assert both(nested) is None


@pytest.mark.parametrize("content", ["", "garbage\n", "gitdir: \n", "gitdir:/x\n"])
def test_malformed_gitfile(tmp_path: Path, content: str) -> None:
    repo = make_repo(tmp_path / "repo")
    nested = repo / "nested"
    nested.mkdir()
    (nested / ".git").write_text(content)
    assert both(nested) is None


def test_empty_dot_git_dir_is_skipped(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    nested = repo / "nested"
    (nested / ".git").mkdir(parents=True)
    assert both(nested) == GitState(branch="main", commit=head(repo))


def test_inside_the_git_dir(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    expected = GitState(branch="main", commit=head(repo))
    assert both(repo / ".git") == expected
    assert both(repo / ".git" / "refs" / "heads") == expected


def test_bare_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(tmp_path, "clone", "-q", "--bare", str(repo), "bare.git")
    assert both(tmp_path / "bare.git") == GitState(branch="main", commit=head(repo))
    empty = tmp_path / "empty.git"
    git(tmp_path, "init", "-q", "--bare", str(empty))
    both(empty)  # unborn: git prints "HEAD" because the bare dir holds a file named HEAD
    both(empty / "refs")


def test_symlinked_path(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "inner").mkdir()
    link = tmp_path / "elsewhere" / "link"
    link.parent.mkdir()
    link.symlink_to(repo / "inner")
    assert both(link) == GitState(branch="main", commit=head(repo))


def test_tag_named_like_the_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "tag", "main")
    assert both(repo) == GitState(branch="heads/main", commit=head(repo))
    git(repo, "pack-refs", "--all")
    assert both(repo) == GitState(branch="heads/main", commit=head(repo))


def test_ambiguous_head(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "update-ref", "refs/tags/HEAD", head(repo))
    assert both(repo) == GitState(branch="", commit=head(repo))


def test_head_on_a_remote_tracking_ref(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "update-ref", "refs/remotes/origin/x", head(repo))
    git(repo, "symbolic-ref", "HEAD", "refs/remotes/origin/x")
    assert both(repo) == GitState(branch="origin/x", commit=head(repo))


def test_symbolic_ref_chain(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "symbolic-ref", "refs/heads/alias", "refs/heads/main")
    git(repo, "symbolic-ref", "HEAD", "refs/heads/alias")
    assert both(repo) == GitState(branch="main", commit=head(repo))


def test_symbolic_ref_loop(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    heads = repo / ".git" / "refs" / "heads"
    (heads / "a").write_text("ref: refs/heads/b\n")
    (heads / "b").write_text("ref: refs/heads/a\n")
    git(repo, "symbolic-ref", "HEAD", "refs/heads/a")
    assert both(repo) is None


def test_hand_written_uppercase_ref(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    sha = head(repo)
    (repo / ".git" / "refs" / "heads" / "upper").write_text(sha.upper() + "\n")
    git(repo, "symbolic-ref", "HEAD", "refs/heads/upper")
    assert both(repo) == GitState(branch="upper", commit=sha)


def test_corrupt_ref(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".git" / "refs" / "heads" / "main").write_text("not a sha\n")
    assert both(repo) is None


def test_capture_none(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert capture_none(repo) is None


_NO_SPAWN_CHILD = """
import json, sys
SPAWN = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
         "os.fork", "os.forkpty"}
def hook(event, args):
    if event in SPAWN:
        raise RuntimeError("process spawned: " + event)
sys.addaudithook(hook)
from pathlib import Path
from astrid.gitstate import capture_fs
state = capture_fs(Path(sys.argv[1]))
print(json.dumps(None if state is None else state.model_dump()))
"""


def _child(code: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "", "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_capture_fs_spawns_no_process(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "other", str(wt))
    for path, branch in ((repo, "main"), (wt, "other")):
        proc = _child(_NO_SPAWN_CHILD, path)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"branch": branch, "commit": head(repo)}


def test_capture_subprocess_without_git_binary(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    code = (
        "import sys; from pathlib import Path; from astrid.gitstate import capture_subprocess; "
        "print(capture_subprocess(Path(sys.argv[1])))"
    )
    proc = _child(code, repo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
