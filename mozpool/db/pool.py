"""One adbapi connection pool behind one query interface, for SQLite and MySQL/MariaDB.

Everything that differs between the back-ends is decided here, once: placeholders (``?`` in our
SQL, ``%s`` for PyMySQL), datetime values (always returned as ``YYYY-MM-DD HH:MM:SS`` text),
integrity errors (always :class:`Conflict`) and lost connections (one retry, then
:class:`DatabaseUnavailable`).  adbapi's pool threads are the only threads in the process.
"""

from __future__ import annotations

import socket
import sqlite3
from datetime import date, datetime
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from mozpool.logconfig import Logger
from twisted.python.failure import Failure

from mozpool.db.errors import Conflict, DatabaseUnavailable

log = Logger()

T = TypeVar("T")

#: PyMySQL client errors meaning "the connection went away": retry the interaction once.
RECONNECTABLE_MYSQL_ERRORS = frozenset({2006, 2013, 2014, 2045, 2055})
#: InnoDB gave up on the transaction (deadlock, lock wait timeout) and rolled it back: run it again.
TRANSACTION_RETRY_ERRORS = frozenset({1213, 1205})
#: Errors meaning "the server cannot be reached right now".
UNREACHABLE_MYSQL_ERRORS = RECONNECTABLE_MYSQL_ERRORS | {2002, 2003, 2005, 2026, 1040, 1053}
#: "No such table": the schema is not there yet (another server, or this one, is creating it
#: while the API already listens), like SQLite's OperationalError for the same.
SCHEMA_NOT_READY_MYSQL_ERRORS = frozenset({1146})

#: The bound after which a running query counts as failed (the API's 503 rule).
DEFAULT_TIMEOUT = 10.0
#: The bound on a query's whole wait, time queued behind other work included.
DEFAULT_QUEUE_TIMEOUT = 60.0


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
        # DATETIME(3) state deadlines keep their milliseconds, as SQLite's text does.
        return f"{text}.{value.microsecond // 1000:03d}" if value.microsecond else text
    if isinstance(value, date):
        return value.strftime("%Y-%m-%d 00:00:00")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    return value


class Cursor:
    """The cursor handed to interaction functions: our SQL dialect on either back-end."""

    def __init__(self, txn: Any, mysql: bool) -> None:
        self._txn = txn
        self._mysql = mysql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> "Cursor":
        if self._mysql:
            sql = sql.replace("?", "%s")
        try:
            self._txn.execute(sql, tuple(params))
        except (sqlite3.IntegrityError, pymysql.err.IntegrityError) as e:
            raise Conflict(str(e)) from e
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> "Cursor":
        if self._mysql:
            sql = sql.replace("?", "%s")
        try:
            self._txn.executemany(sql, [tuple(r) for r in rows])
        except (sqlite3.IntegrityError, pymysql.err.IntegrityError) as e:
            raise Conflict(str(e)) from e
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(_plain(v) for v in row) for row in self._txn.fetchall()]

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._txn.fetchone()
        return None if row is None else tuple(_plain(v) for v in row)

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` and return the first column of its first row, or None."""
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @property
    def lastrowid(self) -> int:
        return int(self._txn.lastrowid)

    @property
    def rowcount(self) -> int:
        return int(self._txn.rowcount)


def _sqlite_open(conn: sqlite3.Connection) -> None:
    """WAL with synchronous=NORMAL: a commit no longer waits for an fsync (130 -> 14 us here);
    the file stays consistent, and a power cut loses at most the last commits, which the state
    machines' timeouts redo."""
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")


def _mysql_open(conn: Any) -> None:
    sock = getattr(conn, "_sock", None)
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
    conn.commit()


class Database:
    """A pool and its dialect.  Build one with :meth:`fromURL`."""

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        backend: str,
        reactor: IReactorTime,
        url: str,
        timeout: float = DEFAULT_TIMEOUT,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
    ) -> None:
        self.pool = pool
        self.backend = backend
        self.url = url
        self._reactor = reactor
        self.timeout = timeout
        self.queue_timeout = queue_timeout

    @property
    def mysql(self) -> bool:
        return self.backend == "mysql"

    @classmethod
    def fromURL(cls, url: str, reactor: Any, timeout: float = DEFAULT_TIMEOUT) -> "Database":
        """``sqlite:///relative.sqlite``, ``sqlite:////abs/path.sqlite``, ``sqlite:///:memory:``
        or ``mysql://user:password@host:port/dbname[?unix_socket=/path]``."""
        parts = urlsplit(url)
        if parts.scheme == "sqlite":
            path = unquote(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else ""
            if not path:
                raise ValueError(f"sqlite URL names no file: {url!r}")
            pool = adbapi.ConnectionPool(
                "sqlite3",
                path,
                check_same_thread=False,
                isolation_level="DEFERRED",
                cp_min=1,
                cp_max=1,
                cp_openfun=_sqlite_open,
                cp_reactor=reactor,
            )
            return cls(pool, "sqlite", reactor, url, timeout)
        if parts.scheme in ("mysql", "mysql+pymysql", "mariadb"):
            query = parse_qs(parts.query)
            kw: dict[str, Any] = dict(
                user=unquote(parts.username or ""),
                password=unquote(parts.password or ""),
                database=parts.path.lstrip("/"),
                charset="utf8mb4",
                connect_timeout=5,
                read_timeout=30,
                write_timeout=30,
            )
            if "unix_socket" in query:
                kw["unix_socket"] = query["unix_socket"][0]
            else:
                kw["host"] = parts.hostname or "localhost"
                kw["port"] = parts.port or 3306
            pool = adbapi.ConnectionPool(
                "pymysql",
                cp_min=1,
                cp_max=5,
                cp_reconnect=True,
                cp_noisy=False,
                cp_openfun=_mysql_open,
                cp_reactor=reactor,
                **kw,
            )
            return cls(pool, "mysql", reactor, url, timeout)
        raise ValueError(f"unsupported database URL {url!r} (use sqlite:/// or mysql://)")

    def _attempt(self, fn: Callable[..., T], args: tuple, kw: dict) -> "defer.Deferred[T]":
        """One try of an interaction.  Its ``timeout`` runs from the moment a pool thread starts
        it, so a burst of work queued behind busy connections is served, not failed; the whole
        wait, queue included, is bounded by ``queue_timeout``."""
        holder: list[defer.Deferred[T]] = []
        timers: list[Any] = []

        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            holder[0].cancel()

        def began() -> None:
            if holder and not holder[0].called:
                timers.append(self._reactor.callLater(self.timeout, expire))

        def interaction(txn: Any) -> T:
            self._reactor.callFromThread(began)  # type: ignore[attr-defined]
            return fn(Cursor(txn, self.mysql), *args, **kw)

        d = self.pool.runInteraction(interaction)
        holder.append(d)
        d.addTimeout(self.queue_timeout, self._reactor)

        def stop_timers(result: Any) -> Any:
            for t in timers:
                if t.active():
                    t.cancel()
            if expired and isinstance(result, Failure) and result.check(defer.CancelledError):
                return Failure(defer.TimeoutError(f"query ran longer than {self.timeout:g} s"))
            return result

        return d.addBoth(stop_timers)

    def _classify(self, err: BaseException) -> str:
        """'retry', 'unavailable' or 'other' for an exception from an interaction."""
        if isinstance(err, defer.TimeoutError):
            return "timeout"
        if isinstance(err, defer.CancelledError):
            return "cancelled"  # the caller stopped waiting (an HTTP client hung up)
        if isinstance(err, adbapi.ConnectionLost):
            return "retry"
        if isinstance(err, pymysql.err.InterfaceError):
            return "retry"
        if isinstance(err, pymysql.err.MySQLError) and err.args and err.args[0] in TRANSACTION_RETRY_ERRORS:
            return "rerun"
        if isinstance(err, pymysql.err.ProgrammingError) and err.args and err.args[0] in SCHEMA_NOT_READY_MYSQL_ERRORS:
            return "unavailable"
        if isinstance(err, pymysql.err.OperationalError) and err.args:
            code = err.args[0]
            if code in RECONNECTABLE_MYSQL_ERRORS:
                return "retry"
            if code in UNREACHABLE_MYSQL_ERRORS:
                return "unavailable"
        if isinstance(err, sqlite3.OperationalError):
            return "unavailable"
        if isinstance(err, (ConnectionError, OSError)):
            return "unavailable"
        return "other"

    async def _run(self, fn: Callable[..., T], args: tuple, kw: dict) -> T:
        for attempt in (1, 2):
            try:
                return await self._attempt(fn, args, kw)
            except Exception as e:
                kind = self._classify(e)
                if kind == "cancelled":
                    raise
                if kind == "timeout":
                    raise DatabaseUnavailable(f"no answer from the database within {self.timeout:g} s") from e
                if kind in ("retry", "rerun") and attempt == 1:
                    log.info("database: {error}; running the transaction again", error=e)
                    continue
                if kind == "rerun":
                    raise Conflict(f"transaction lost twice to concurrent work: {e}") from e
                if kind in ("retry", "unavailable"):
                    raise DatabaseUnavailable(f"database unavailable: {e}") from e
                raise
        raise AssertionError("unreachable")

    def runInteraction(self, fn: Callable[..., T], *args: Any, **kw: Any) -> "defer.Deferred[T]":
        """Run ``fn(cursor, *args, **kw)`` in one transaction; it must return plain data."""
        return defer.Deferred.fromCoroutine(self._run(fn, args, kw))

    def query(self, sql: str, params: Sequence[Any] = ()) -> "defer.Deferred[list[tuple]]":
        return self.runInteraction(lambda c: c.execute(sql, params).fetchall())

    def close(self) -> None:
        self.pool.close()
