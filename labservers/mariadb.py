"""
A private MariaDB server for the tests.

DESIGN.md asks that every database test also runs against a real MariaDB, one the
test runner starts itself: its own datadir, socket and TCP port under a temporary
directory, so it neither needs nor disturbs a system server. This is test support,
not daemon code, so it blocks (subprocess, sleeps while polling); it is kept quick.

Use from a trial test::

    from labservers.mariadb import mariadbURL, mariadbServer

    url = mariadbURL(self)          # fresh empty database, dropped at cleanup
    server = mariadbServer(self)    # the server itself, for stop()/start()

Environment:

- ``CI=true``: a missing MariaDB fails the tests instead of skipping them (one that
  is installed but will not start always fails them).
- ``MOZPOOL_TEST_MYSQL_URL=mysql://user:pw@host:port/``: use that existing server
  instead of starting one (it cannot be stopped, so stop/start tests skip).
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pymysql

USER = "mozpool"
PASSWORD = "mozpool"
HOST = "127.0.0.1"

# Bounds: nothing here may hang a test run.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5

# Small and fast: durability across a crash is not what tests check; a clean
# stop() still keeps every committed row. Native AIO (io_uring/libaio) is often
# blocked in containers.
_INNODB_OPTIONS = (
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-doublewrite=0",
    "--innodb-use-native-aio=0",
)

_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/local/mysql/bin")


def _ci() -> bool:
    """CI decides whether a missing server is a skip (laptop) or a failure (CI)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _which(*names: str) -> str | None:
    """Look in PATH and the sbin directories, which a non-root PATH often lacks."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_SBIN_DIRS)
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def _serverBinary() -> str | None:
    return _which("mariadbd", "mysqld")


def _installBinary() -> str | None:
    return _which("mariadb-install-db", "mysql_install_db")


def _scratch() -> str | None:
    """
    Where to put the datadir: tmpfs when there is room, since schema creation in
    every test means many fsyncs, which a busy disk makes slow.
    """
    chosen = os.environ.get("MOZPOOL_TEST_MARIADB_DIR")
    if chosen:
        return chosen
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= 1 << 30 and os.access("/dev/shm", os.W_OK | os.X_OK):
            return "/dev/shm"
    except OSError:
        pass
    return None


_PREFIX = "mozpool-mariadb-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _removeAbandoned(parent: str) -> None:
    """Remove datadirs left by test processes that were killed (no atexit ran)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(path, "owner.pid")) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(path, ignore_errors=True)


def _freePort() -> int:
    """A port the kernel just handed out on loopback; mariadbd binds it next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _dieWithParent() -> None:
    """
    Have the kernel SIGTERM mariadbd if the test process dies without running
    atexit (killed by a timeout), so no stray servers are left behind.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def _quoteIdent(name: str) -> str:
    if not name or len(name) > 64 or "`" in name or "\0" in name:
        raise ValueError(f"bad database name {name!r}")
    return f"`{name}`"


class MariaDBServer:
    """What the tests need from a server, private or external."""

    canRestart = False
    host: str = HOST
    port: int = 0
    user: str = USER
    password: str = PASSWORD
    unixSocket: str | None = None

    def url(self, database: str) -> str:
        """The URL the daemon's ``[database] url`` takes for ``database``."""
        user, password = quote(self.user, safe=""), quote(self.password, safe="")
        return f"mysql://{user}:{password}@{self.host}:{self.port}/{database}"

    def ensureRunning(self) -> None:
        """Nothing to do unless the server can be stopped."""

    def connect(self, database: str | None = None, **kw: Any) -> pymysql.connections.Connection:
        """A blocking PyMySQL connection over TCP, as the daemon would make."""
        self.ensureRunning()
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=60,
            write_timeout=60,
            charset="utf8mb4",
            autocommit=True,
            **kw,
        )

    def createDatabase(self, name: str) -> str:
        """Create an empty ``name`` (utf8mb4, binary collation) and return its URL."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE DATABASE {_quoteIdent(name)}"
                    " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
        finally:
            conn.close()
        return self.url(name)

    def dropDatabase(self, name: str) -> None:
        """
        Drop ``name``, first ending the connections still using it: a pool the test
        left open would otherwise hold metadata locks and stall the DROP.
        """
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION lock_wait_timeout = 20")
                cur.execute(
                    "SELECT id FROM information_schema.processlist"
                    " WHERE db = %s AND id <> CONNECTION_ID()",
                    (name,),
                )
                for (thread,) in cur.fetchall():
                    try:
                        cur.execute(f"KILL CONNECTION {int(thread)}")
                    except pymysql.err.OperationalError:
                        pass  # it ended by itself meanwhile
                cur.execute(f"DROP DATABASE IF EXISTS {_quoteIdent(name)}")
        finally:
            conn.close()

    def stop(self) -> None:
        raise unittest.SkipTest("the MariaDB server under test cannot be stopped")

    def start(self) -> None:
        raise unittest.SkipTest("the MariaDB server under test cannot be started")

    def close(self) -> None:
        """Release whatever this object holds; called at exit."""


class ExternalMariaDB(MariaDBServer):
    """An already running server named by MOZPOOL_TEST_MYSQL_URL; never stopped."""

    def __init__(self, baseURL: str) -> None:
        parts = urlsplit(baseURL)
        if parts.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
            raise ValueError(f"MOZPOOL_TEST_MYSQL_URL must be mysql://..., not {baseURL!r}")
        self.host = parts.hostname or HOST
        self.port = parts.port or 3306
        self.user = unquote(parts.username or USER)
        self.password = unquote(parts.password or "")
        sockets = parse_qs(parts.query).get("unix_socket")
        self.unixSocket = sockets[0] if sockets else None

    def url(self, database: str) -> str:
        url = super().url(database)
        if self.unixSocket:
            url += f"?unix_socket={self.unixSocket}"
        return url

    def connect(self, database: str | None = None, **kw: Any) -> pymysql.connections.Connection:
        if self.unixSocket:
            kw.setdefault("unix_socket", self.unixSocket)
        return super().connect(database, **kw)


class PrivateMariaDB(MariaDBServer):
    """
    A mariadbd of our own on a free loopback port and a unix socket in a temporary
    directory. stop() and start() keep the datadir and the port, so tests can take
    the database away under a running daemon and bring it back.
    """

    canRestart = True

    def __init__(self, baseDir: str | None = None, startTimeout: float = START_TIMEOUT) -> None:
        server, install = _serverBinary(), _installBinary()
        if server is None or install is None:
            raise RuntimeError(mariadbUnavailableReason() or "MariaDB binaries not found")
        self._server = server
        self._ownDir = baseDir is None
        self._install = install
        self._startTimeout = startTimeout
        if baseDir is None:
            scratch = _scratch()
            _removeAbandoned(scratch or tempfile.gettempdir())
            baseDir = tempfile.mkdtemp(prefix=_PREFIX, dir=scratch)
            with open(os.path.join(baseDir, "owner.pid"), "w") as f:
                f.write(str(os.getpid()))
        self.directory = baseDir
        self.datadir = os.path.join(self.directory, "data")
        self.tmpdir = os.path.join(self.directory, "tmp")
        # A unix socket path must stay under ~107 bytes.
        self.unixSocket = os.path.join(self.directory, "mysqld.sock")
        self.pidFile = os.path.join(self.directory, "mysqld.pid")
        self.errorLog = os.path.join(self.directory, "error.log")
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._initialized = False

    # -- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _installDB(self) -> None:
        os.makedirs(self.tmpdir, exist_ok=True)
        args = [
            self._install,
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            # Passed through to the bootstrap server. Its own tmpdir: concurrent
            # bootstraps sharing /tmp trip over each other's temporary tables.
            # A small redo log is much quicker to create than the default 96 MiB.
            f"--tmpdir={self.tmpdir}",
            *_INNODB_OPTIONS,
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        result = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{self._install} failed ({result.returncode}):\n"
                + result.stdout.decode("utf-8", "replace")[-4000:]
            )

    def _serverArgs(self) -> list[str]:
        args = [
            self._server,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--socket={self.unixSocket}",
            f"--port={self.port}",
            f"--bind-address={HOST}",
            f"--pid-file={self.pidFile}",
            f"--log-error={self.errorLog}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--skip-performance-schema",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin",
            "--max-connections=500",
            *_INNODB_OPTIONS,
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        return args

    def _spawn(self) -> None:
        # Truncate the log so a failure report shows this start only.
        open(self.errorLog, "wb").close()
        self._process = subprocess.Popen(
            self._serverArgs(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_dieWithParent,
            # Keep a ^C at the terminal away from it; atexit stops it.
            start_new_session=True,
        )

    def _logTail(self, limit: int = 3000) -> str:
        try:
            with open(self.errorLog, "rb") as f:
                return f.read().decode("utf-8", "replace")[-limit:]
        except OSError:
            return "(no error log)"

    def _waitReady(self) -> None:
        """Poll until mariadbd answers as root over its socket, or give up loudly."""
        deadline = time.monotonic() + self._startTimeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise _StartFailed(
                    f"mariadbd exited with {self._process.returncode} while starting:\n"
                    + self._logTail()
                )
            try:
                conn = pymysql.connect(
                    unix_socket=self.unixSocket, user="root", password="", connect_timeout=2
                )
            except pymysql.err.OperationalError as e:
                # 2002/2003: not listening yet. Anything else (e.g. 1045) will not
                # get better by waiting.
                if e.args and e.args[0] not in (2002, 2003, 2013):
                    self._kill()
                    raise RuntimeError(f"cannot connect to private MariaDB: {e!r}") from e
            else:
                conn.close()
                return
            if time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(
                    f"private MariaDB not ready after {self._startTimeout:.0f}s:\n"
                    + self._logTail()
                )
            time.sleep(0.05)

    def _createUsers(self) -> None:
        conn = pymysql.connect(
            unix_socket=self.unixSocket, user="root", password="", connect_timeout=5,
            autocommit=True,
        )
        try:
            with conn.cursor() as cur:
                for host in ("localhost", HOST):
                    cur.execute(
                        "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s",
                        (self.user, host, self.password),
                    )
                    cur.execute(
                        "GRANT ALL PRIVILEGES ON *.* TO %s@%s WITH GRANT OPTION",
                        (self.user, host),
                    )
                cur.execute("FLUSH PRIVILEGES")
        finally:
            conn.close()

    def start(self) -> None:
        """Start (or restart) the server; returns once it accepts connections."""
        if self.running:
            return
        if not self._initialized:
            try:
                self._installDB()
            except (RuntimeError, subprocess.TimeoutExpired):
                # Once more from scratch: a busy machine can upset a bootstrap.
                shutil.rmtree(self.datadir, ignore_errors=True)
                self._installDB()
        firstPort = self.port == 0
        attempts = 5 if firstPort else 40
        for attempt in range(attempts):
            if firstPort:
                self.port = _freePort()
            self._spawn()
            try:
                self._waitReady()
            except _StartFailed:
                # Most likely someone took our port between probing and binding
                # (or, on a restart, the old socket lingers): try again.
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1 if firstPort else 0.25)
                continue
            break
        if not self._initialized:
            self._createUsers()
            self._initialized = True

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT)
        self._process = None

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown, so start() finds every committed row."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        self._process = None

    def ensureRunning(self) -> None:
        """A test that stopped the server and failed must not break the next one."""
        if not self.running:
            self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            if self._ownDir:
                shutil.rmtree(self.directory, ignore_errors=True)


class _StartFailed(RuntimeError):
    """mariadbd exited during start-up (typically: port taken)."""


# -- the process-wide server --------------------------------------------------

_server: MariaDBServer | None = None
_startError: BaseException | None = None
_counter = itertools.count(1)


def mariadbUnavailableReason() -> str | None:
    """Why there is no MariaDB to test against, or None if there is one to use."""
    if os.environ.get("MOZPOOL_TEST_MYSQL_URL"):
        return None
    missing = []
    if _serverBinary() is None:
        missing.append("mariadbd")
    if _installBinary() is None:
        missing.append("mariadb-install-db")
    if missing:
        return (
            f"MariaDB not installed ({', '.join(missing)} not found); "
            "apt-get install mariadb-server, or set MOZPOOL_TEST_MYSQL_URL"
        )
    if _startError is not None:
        return f"private MariaDB failed to start: {_startError}"
    return None


def _shutdown() -> None:
    global _server
    if _server is not None:
        try:
            _server.close()
        finally:
            _server = None


def getMariaDB() -> MariaDBServer | None:
    """
    The process-wide test server, started on first use and stopped at exit; None
    when MariaDB is not installed, except under CI where that is an error.
    """
    global _server, _startError
    if _server is not None:
        return _server
    if _startError is not None:
        raise RuntimeError(f"private MariaDB failed to start earlier: {_startError}")
    external = os.environ.get("MOZPOOL_TEST_MYSQL_URL")
    if external:
        _server = ExternalMariaDB(external)
        return _server
    reason = mariadbUnavailableReason()
    if reason is not None:
        if _ci():
            raise RuntimeError(f"CI=true but {reason}")
        return None
    server = PrivateMariaDB()
    atexit.register(_shutdown)
    try:
        server.start()
    except BaseException as e:
        _startError = e
        server.close()
        raise
    _server = server
    return _server


def _requireServer(testcase: unittest.TestCase) -> MariaDBServer:
    server = getMariaDB()
    if server is None:
        raise unittest.SkipTest(mariadbUnavailableReason() or "MariaDB unavailable")
    server.ensureRunning()
    return server


def mariadbServer(testcase: unittest.TestCase) -> MariaDBServer:
    """
    The server itself, for tests that stop() and start() it; skips when it cannot
    be restarted (an external server). The server is restarted at cleanup if the
    test left it stopped.
    """
    server = _requireServer(testcase)
    if not server.canRestart:
        raise unittest.SkipTest("MOZPOOL_TEST_MYSQL_URL server cannot be stopped")
    testcase.addCleanup(server.ensureRunning)
    return server


def mariadbURL(testcase: unittest.TestCase) -> str:
    """
    A fresh, empty database for this test, dropped at cleanup, as a ``mysql://`` URL.
    Skips when MariaDB is missing (fails under CI=true).
    """
    server = _requireServer(testcase)
    name = f"mozpool_t{os.getpid()}_{next(_counter)}"
    server.dropDatabase(name)
    url = server.createDatabase(name)
    testcase.addCleanup(server.dropDatabase, name)
    return url
