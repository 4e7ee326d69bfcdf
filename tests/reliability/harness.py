"""Process plumbing shared by the crash and concurrency tests (not a test module)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from astrid.plugins import DEFAULT_PLUGINS

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("writer.py")
WATCHDOG_SECONDS = 120.0
"""A child still alive after this long is killed, so a hang fails the test instead of CI."""


def child_env(home: Path | None = None) -> dict[str, str]:
    """The environment of a child: this checkout's astrid, only the built-in plugins, a home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASTRID_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["ASTRID_LOAD_PLUGINS"] = ",".join(DEFAULT_PLUGINS)
    if home is not None:
        env["ASTRID_HOME"] = str(home)
    return env


class Child:
    """A child process with line-based stdout, a watchdog and a SIGKILL."""

    def __init__(self, argv: list[str], *, home: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(home),
            cwd=str(REPO),
        )
        self.lines: list[str] = []
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()
        self.expired = False
        self.stderr = ""

    @classmethod
    def writer(cls, *args: str) -> Child:
        """``writer.py`` with ``args``."""
        return cls([sys.executable, str(WRITER), *args])

    def _expire(self) -> None:
        self.expired = True
        self.proc.kill()

    def readline(self) -> str | None:
        """The next stdout line without its newline (None at EOF)."""
        assert self.proc.stdout is not None
        raw = self.proc.stdout.readline()
        if not raw:
            return None
        line = raw.rstrip("\n")
        self.lines.append(line)
        return line

    def wait_for(self, prefix: str, count: int = 1) -> bool:
        """Read until ``count`` lines starting with ``prefix`` were seen; False at EOF."""
        seen = 0
        while seen < count:
            line = self.readline()
            if line is None:
                return False
            if line.startswith(prefix):
                seen += 1
        return True

    def send(self, line: str) -> None:
        """Write one line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> bool:
        """SIGKILL the child (if still running) and collect its output; True if it was killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.finish() == -signal.SIGKILL

    def finish(self) -> int:
        """Wait for the child, collect the rest of stdout and stderr; its return code."""
        # Read through the text wrappers: ``communicate`` would bypass lines they buffered.
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out = self.proc.stdout.read()
        self.stderr = self.proc.stderr.read()
        self.proc.wait()
        self._watchdog.cancel()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.lines.extend(out.splitlines())
        assert not self.expired, f"child hung and was killed by the watchdog: {self.stderr}"
        return self.proc.returncode


def sqlite_integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of a SQLite file, through a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()
