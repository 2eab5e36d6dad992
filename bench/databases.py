"""The databases a benchmark runs on: SQLite in its work directory, or a private MariaDB server it
starts for itself; direct SQL on either (``?`` placeholders); the fixture of N devices.

A benchmark does not import ``tests/``: the private server here is a small one of its own (no
restarts, no external server, none of the test suite's fault injection).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import unquote, urlsplit

from bench.daemons import ROOT, child_env, free_port, mozpool_db, python
from bench.report import say

_INNODB = ("--innodb-buffer-pool-size=256M", "--innodb-flush-log-at-trx-commit=2", "--innodb-use-native-aio=0")


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or next(
            (p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}") if os.access(p, os.X_OK)), None
        )
        if found:
            return found
    return None


class MariaDB:
    """A mariadbd of this benchmark's own, on a free loopback port, its files in a temporary directory."""

    user = "mozpool"
    password = "mozpool"

    def __init__(self, timeout: float = 120) -> None:
        server, install = _binary("mariadbd", "mysqld"), _binary("mariadb-install-db", "mysql_install_db")
        if server is None or install is None:
            raise RuntimeError("MariaDB not installed (apt-get install mariadb-server)")
        self.dir = tempfile.mkdtemp(prefix="mozpool-bench-mariadb-")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.port = free_port()
        datadir, tmpdir = os.path.join(self.dir, "data"), os.path.join(self.dir, "tmp")
        os.makedirs(tmpdir)
        root = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run([install, "--no-defaults", f"--datadir={datadir}", "--auth-root-authentication-method=normal",
                        "--skip-test-db", f"--tmpdir={tmpdir}", *_INNODB, *root],
                       check=True, capture_output=True, timeout=300)
        self._log = os.path.join(self.dir, "error.log")
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [server, "--no-defaults", f"--datadir={datadir}", f"--tmpdir={tmpdir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--log-error={self._log}", "--skip-name-resolve",
             "--skip-log-bin", "--max-connections=1000", *_INNODB, *root],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._as_root(["CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", "GRANT ALL ON *.* TO %s@'127.0.0.1'"],
                      timeout)
        self._n = 0

    def _as_root(self, statements: list[str], timeout: float) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.process.returncode}; see {self._log}")
            try:
                conn = pymysql.connect(unix_socket=self.socket, user="root", password="", autocommit=True)
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"mariadbd not ready within {timeout:g} s") from None
                time.sleep(0.1)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement, (self.user, self.password)[: statement.count("%s")])
        finally:
            conn.close()

    def database(self, prefix: str = "mozpool_bench") -> str:
        """A new empty database's URL."""
        self._n += 1
        name = f"{prefix}_{os.getpid()}_{self._n}"
        self._as_root([f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"], 10)
        return f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{name}"

    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Backends:
    """The back-ends a benchmark runs on, each with a fresh database: SQLite in ``workdir``, and a
    private MariaDB started on first use (skipped with a message when it cannot start)."""

    def __init__(self, names: str, workdir: str) -> None:
        self.names = names.split(",")
        self.workdir = workdir
        self.mariadb: MariaDB | None = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for backend in self.names:
            if backend == "sqlite":
                yield backend, "sqlite:///" + os.path.join(self.workdir, "mozpool.sqlite")
                continue
            try:
                self.mariadb = self.mariadb or MariaDB()
            except Exception as e:
                say(f"[mariadb] skipped: {e}")
                continue
            yield backend, self.mariadb.database()

    def close(self) -> None:
        if self.mariadb is not None:
            self.mariadb.close()


@contextmanager
def _connect(db_url: str) -> Iterator[tuple[Any, bool]]:
    """A blocking connection to the daemon's database (not autocommitting) and whether it is MySQL."""
    if db_url.startswith("sqlite:///"):
        conn: Any = sqlite3.connect(unquote(db_url[len("sqlite:///"):]), timeout=30)
        mysql = False
    else:
        import pymysql

        p = urlsplit(db_url)
        conn = pymysql.connect(host=p.hostname, port=p.port or 3306, user=unquote(p.username or ""),
                               password=unquote(p.password or ""), database=p.path.lstrip("/"), charset="utf8mb4",
                               autocommit=False)
        mysql = True
    try:
        yield conn, mysql
    finally:
        conn.close()


def sql(db_url: str, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
    """Run statements (``?`` placeholders) against the database directly, in one transaction."""
    with _connect(db_url) as (conn, mysql):
        cur = conn.cursor()
        if mysql:
            cur.execute("SET time_zone = '+00:00'")
        for stmt, params in statements:
            cur.execute(stmt.replace("?", "%s") if mysql else stmt, tuple(params))
        conn.commit()


def sql_query(db_url: str, stmt: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Rows of one query (``?`` placeholders), read directly from the database."""
    with _connect(db_url) as (conn, mysql):
        cur = conn.cursor()
        cur.execute(stmt.replace("?", "%s") if mysql else stmt, tuple(params))
        return list(cur.fetchall())


def sql_executemany(db_url: str, stmt: str, rows: Sequence[Sequence[Any]]) -> None:
    with _connect(db_url) as (conn, mysql):
        conn.cursor().executemany(stmt.replace("?", "%s") if mysql else stmt, [tuple(r) for r in rows])
        conn.commit()


def utc_text(offset: float = 0.0) -> str:
    """The database's time text (UTC, whole seconds) for now + offset."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(time.time() + offset)))


def load_fixture(db_url: str, fqdn: str, devices: int, relay_base_port: int | None = None) -> None:
    """Schema + N fixture devices owned by ``fqdn``.  With no relay base port, through the
    ``mozpool-db`` command as an operator would; with one, through the same fixture code
    (the command has no option for the relay ports)."""
    mozpool_db(db_url, "create-schema")
    if relay_base_port is None:
        mozpool_db(db_url, "load-fixture", "--devices", str(devices), fqdn=fqdn)
        return
    # task.react exits the process; run it in a child instead.
    code = (
        "import sys; sys.path.insert(0, %r); from bench.databases import _load_child; _load_child(%r, %r, %d, %d)"
        % (ROOT, db_url, fqdn, devices, relay_base_port)
    )
    out = subprocess.run([python(), "-c", code], env=child_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    if out.returncode:
        raise RuntimeError(f"loading the fixture failed: {out.stderr[-2000:]}")


def _load_child(db_url: str, fqdn: str, devices: int, relay_base_port: int) -> None:
    from twisted.internet import defer, task

    from mozpool.db import fixtures
    from mozpool.db.pool import Database
    from mozpool.timeutil import dbnow

    async def go(reactor: Any) -> None:
        db = Database.fromURL(db_url, reactor, timeout=300)
        try:
            await fixtures.load_fixture(db, fqdn, devices, dbnow(reactor), relay_base_port=relay_base_port)
        finally:
            db.close()

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
