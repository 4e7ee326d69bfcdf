"""A throwaway PostgreSQL server for tests and benchmarks: ``TemporaryServer``.

It finds ``initdb`` and ``pg_ctl`` (``$ASTRID_PG_BIN``, ``PATH``, ``/usr/lib/postgresql/*/bin``,
``/usr/local/bin``, ``/usr/local/pgsql/bin``), creates a cluster in a new temporary directory
(``initdb -A trust -U astrid``), starts it on 127.0.0.1 on a free port with its socket in that
directory, creates a database, and stops it (``pg_ctl stop -m fast``) and removes the directory
on ``stop()``. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres``
OS user (created by Debian's ``postgresql`` package) through ``runuser`` (or ``su``).

Host connections as the initdb user are trusted; other roles must give a password
(``scram-sha-256``), so tests can check password handling for real.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

BIN_ENV = "ASTRID_PG_BIN"
SERVER_USER = "postgres"

__all__ = ["LoginRole", "ServerUnavailable", "TemporaryServer", "find_binaries"]


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why and what to install."""


@dataclass(frozen=True)
class LoginRole:
    """A login role that must give its password (host connections use scram-sha-256)."""

    name: str
    password: str


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def find_binaries() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest Debian version first)."""
    candidates: list[Path] = []
    env = os.environ.get(BIN_ENV)
    if env:
        candidates.append(Path(env))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    candidates += [Path("/usr/local/bin"), Path("/usr/local/pgsql/bin")]
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise ServerUnavailable(
        f"no initdb and pg_ctl found (${BIN_ENV}, PATH, /usr/lib/postgresql/*/bin, "
        "/usr/local/bin); install PostgreSQL, e.g. `apt-get install postgresql`"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TemporaryServer:
    """A PostgreSQL cluster in a temporary directory, on 127.0.0.1 and a free port."""

    def __init__(
        self,
        *,
        user: str = "astrid",
        database: str = "astrid_test",
        durable: bool = False,
        max_connections: int = 200,
    ) -> None:
        self.user = user
        self.database = database
        self.durable = durable
        self.max_connections = max_connections
        self.host = "127.0.0.1"
        self.port = 0
        self.root: Path | None = None
        self.bindir: Path | None = None
        self._running = False
        self._as_user: pwd.struct_passwd | None = None

    # -- running commands -----------------------------------------------------------------------

    def _command(self, argv: Sequence[str]) -> list[str]:
        if self._as_user is None:
            return list(argv)
        if shutil.which("runuser"):
            return ["runuser", "-u", self._as_user.pw_name, "--", *argv]
        return ["su", self._as_user.pw_name, "-s", "/bin/sh", "-c", shlex.join(argv)]

    def _run(self, argv: Sequence[str], what: str, cwd: Path | None = None) -> None:
        cwd = cwd or self.root
        try:
            done = subprocess.run(
                self._command(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServerUnavailable(f"{what} failed: {exc}") from exc
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()[-2000:]
            raise ServerUnavailable(f"{what} failed (exit {done.returncode}): {output}")

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> TemporaryServer:
        """Create and start the cluster and its database; ``ServerUnavailable`` if impossible."""
        if self._running:
            return self
        self.bindir = find_binaries()
        if os.geteuid() == 0:
            try:
                self._as_user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise ServerUnavailable(
                    f"running as root and there is no {SERVER_USER!r} OS user to run the "
                    "server as (Debian's postgresql package creates it)"
                ) from None
        base = "/tmp" if self._as_user is not None and Path("/tmp").is_dir() else None
        self.root = Path(tempfile.mkdtemp(prefix="astrid-pg-", dir=base))
        try:
            if self._as_user is not None:
                os.chown(self.root, self._as_user.pw_uid, self._as_user.pw_gid)
            self._init()
            self._start()
            self._create_database()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def _init(self) -> None:
        assert self.root is not None and self.bindir is not None
        data = self.root / "data"
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                self.user,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
        # Trust the initdb user on 127.0.0.1; every other role needs its password.
        hba = data / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            f"host all {self.user} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n",
            encoding="utf-8",
        )
        if self._as_user is not None:
            os.chown(hba, self._as_user.pw_uid, self._as_user.pw_gid)

    def _start(self) -> None:
        assert self.root is not None and self.bindir is not None
        settings = [f"max_connections={self.max_connections:d}"]
        if not self.durable:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        last: ServerUnavailable | None = None
        for _ in range(3):
            self.port = free_port()
            options = ["-h", self.host, "-p", str(self.port), "-k", str(self.root)]
            for setting in settings:
                options += ["-c", setting]
            try:
                self._run(
                    [
                        str(self.bindir / "pg_ctl"),
                        "-D",
                        str(self.root / "data"),
                        "-l",
                        str(self.root / "server.log"),
                        "-w",
                        "-t",
                        "60",
                        "-o",
                        shlex.join(options),
                        "start",
                    ],
                    "pg_ctl start",
                )
            except ServerUnavailable as exc:
                last = ServerUnavailable(f"{exc}; server log: {self.log_tail()}")
                if "already in use" not in self.log_tail():
                    break
                continue
            self._running = True
            return
        assert last is not None
        raise last

    def _create_database(self) -> None:
        try:
            with psycopg.connect(self.dsn(dbname="postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        except psycopg.Error as exc:
            raise ServerUnavailable(f"cannot create the test database: {exc}") from exc

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server log ('' if there is none)."""
        if self.root is None:
            return ""
        try:
            return (self.root / "server.log").read_text(errors="replace")[-size:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) and remove its directory (idempotent)."""
        root, self.root = self.root, None
        if root is None:
            return
        self._running = False
        if self.bindir is not None and (root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(ServerUnavailable):
                self._run(
                    [
                        str(self.bindir / "pg_ctl"),
                        "-D",
                        str(root / "data"),
                        "-m",
                        "fast",
                        "-w",
                        "stop",
                    ],
                    "pg_ctl stop",
                    cwd=root,
                )
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    # -- connecting -----------------------------------------------------------------------------

    def dsn(self, *, dbname: str | None = None, user: str | None = None) -> str:
        """A conninfo string for the server (no password)."""
        return (
            f"host={self.host} port={self.port} user={user or self.user} "
            f"dbname={dbname or self.database}"
        )

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection as the (superuser) initdb user."""
        return psycopg.connect(self.dsn(), autocommit=True)

    def create_role(self, name: str) -> LoginRole:
        """Create a login role with a random password (it has no privileges yet)."""
        password = f"pw-{secrets.token_urlsafe(16)}"
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
        return LoginRole(name, password)

    def __enter__(self) -> TemporaryServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
