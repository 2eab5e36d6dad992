"""One adbapi connection pool behind one query interface, for SQLite and MySQL/MariaDB.

Everything that differs between the back-ends is decided here, once: placeholders (``?`` in our
SQL, ``%s`` for PyMySQL), datetime values (always returned as ``YYYY-MM-DD HH:MM:SS`` text),
integrity errors (always :class:`Conflict`) and lost connections (one retry, then
:class:`DatabaseUnavailable`).  adbapi's pool threads are the only threads in the process.

Faults answer fast (MySQL/MariaDB, Galera included).  A query that runs past the bound
(:data:`DEFAULT_TIMEOUT`, 10 s) fails; and when the server answers *nothing* for that long
while work waits (a hung server: every pool thread blocked on it), or refuses service (down,
or a Galera node outside the primary component: ``wsrep_ready`` OFF, error 1047), the database
is marked unavailable: every waiting call fails at once with :class:`DatabaseUnavailable` (the
API's 503, ``Retry-After: 5``), and so does every new one after at most :data:`PROBE_WAIT`
(0.5 s) spent waiting for a probe.  A probe asks the server every :data:`PROBE_INTERVAL`
seconds, and when a call comes (so the first call after the server is back is served), until
it answers; then calls flow as before.  Work that a caller abandoned before a pool thread
reached it is skipped, not run late.  Transactions InnoDB rolled back (deadlock, lock wait
timeout) and Galera write sets that lost certification (reported as deadlocks at commit) run
again, up to :data:`RERUN_ATTEMPTS` times.  On a Galera node every connection reads causally
(``wsrep_sync_wait = 1``): a read sees every write the cluster had committed when it began,
whichever node took it, so a server never acts on another's stale row.

Group commit: interactions that queue up behind busy connections are run together in one
transaction (:data:`BATCH_MAX`), each seeing the database as if it ran alone after the ones
before it; a burst of API calls then costs one thread hop and one commit per batch.  The change
journal and the state history are written at the transaction's end as multi-row INSERTs
(:meth:`Cursor.insert_later`).
"""

from __future__ import annotations

import math
import random
import re
import socket
import sqlite3
from collections import deque
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
from twisted.enterprise import adbapi
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from mozpool.logconfig import Logger
from twisted.python.failure import Failure

from mozpool.db.errors import Conflict, DatabaseUnavailable

log = Logger()

T = TypeVar("T")

#: A held-back INSERT (:meth:`Cursor.insert_later`): (sql, params, then).
Later = tuple[str, tuple[Any, ...], "Callable[[Cursor, int], None] | None"]
#: Rows per multi-row INSERT ... RETURNING.
_RETURNING_CHUNK = 200
#: SQLite has INSERT ... RETURNING from 3.35.
_SQLITE_RETURNING = sqlite3.sqlite_version_info >= (3, 35)


class Pending:
    """A held-back row's parameter known only once an earlier held-back row is written (its
    id, say): ``make()`` gives it at the flush."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def _resolved(params: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(p.make() if isinstance(p, Pending) else p for p in params)


def _returning(txn: Any, mysql: bool) -> bool:
    """Whether the connection's server answers INSERT ... RETURNING (noted on it when opened)."""
    if not mysql:
        return _SQLITE_RETURNING
    return bool(getattr(txn.connection, "mozpool_returning", False))

#: PyMySQL client errors meaning "the connection went away" (1927: killed by the server):
#: retry the interaction once.
RECONNECTABLE_MYSQL_ERRORS = frozenset({2006, 2013, 2014, 2045, 2055, 1927})
#: InnoDB gave up on the transaction (deadlock, lock wait timeout) and rolled it back, or a
#: Galera write set failed certification against another node's (reported as 1213), or a table
#: changed under the transaction's snapshot ("Table definition has changed, please retry
#: transaction", 1412): run it again.
TRANSACTION_RETRY_ERRORS = frozenset({1213, 1205, 1412})
#: Galera: "WSREP has not yet prepared node for application use" -- the node is not part of
#: the primary component (cut off from the cluster, or still joining).
WSREP_NOT_READY = 1047
#: "Got error during COMMIT" (the transaction was rolled back): a Galera node that left the
#: primary component while a transaction was committing says this once before it says 1047.
COMMIT_FAILED = 1180
#: Errors meaning "the server cannot be reached (or cannot serve) right now".
UNREACHABLE_MYSQL_ERRORS = RECONNECTABLE_MYSQL_ERRORS | {
    2002, 2003, 2005, 2026, 1040, 1053, WSREP_NOT_READY, COMMIT_FAILED}
#: "No such table" (1146) or "unknown column" (1054): the schema is not there yet, or only part
#: of it (another server, or this one, is creating it while the API already listens: MySQL's DDL
#: is not transactional, and a table's later columns come with later statements), like SQLite's
#: OperationalError for the same.
SCHEMA_NOT_READY_MYSQL_ERRORS = frozenset({1146, 1054})

#: The bound after which a running query counts as failed (the API's 503 rule).
DEFAULT_TIMEOUT = 10.0
#: The bound on a query's whole wait, time queued behind other work included.
DEFAULT_QUEUE_TIMEOUT = 60.0
#: While the database is unavailable, how often it is asked whether it is back.
PROBE_INTERVAL = 1.0
#: A call made while the database is unavailable asks at once too (no more often than every
#: PROBE_GAP seconds) and waits for that answer up to PROBE_WAIT seconds after the probe began:
#: the first call after the database returns is served, and a hung server delays no call longer.
PROBE_GAP = 0.1
PROBE_WAIT = 0.5
#: What a 503 for an unavailable database tells the client to wait (Retry-After, seconds).
RETRY_AFTER = 5
#: Runs of a transaction that keeps losing to concurrent work (deadlock, certification).
RERUN_ATTEMPTS = 5
#: Group commit: interactions queued behind busy connections run together, up to this many in
#: one transaction.  Smaller on MySQL, where a batch holds the row locks of all its members
#: until it commits.
BATCH_MAX = {"sqlite": 64, "mysql": 8}


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

    def __init__(self, txn: Any, mysql: bool, later: list[Later] | None = None) -> None:
        self._txn = txn
        self._mysql = mysql
        #: INSERTs held back until the transaction's end (see :meth:`insert_later`)
        self._later = later
        #: what this interaction has already read or written, for helpers that would otherwise
        #: ask again (a request's claim: :func:`mozpool.db.requests.claim_of`).  Only the
        #: interaction's own statements change what it reads (its snapshot), so a value noted
        #: here stays true until the interaction itself writes it anew.
        self.known: dict[Any, Any] = {}

    @property
    def mysql(self) -> bool:
        """For the few statements worth writing differently per back-end."""
        return self._mysql

    def insert_later(
        self, sql: str, params: Sequence[Any], then: Callable[["Cursor", int], None] | None = None
    ) -> None:
        """An INSERT nothing reads back in this transaction (the change journal, the state
        history, log lines): sent at the transaction's end with the others of its kind as one
        multi-row INSERT, so a burst writes its journal in a few statements instead of one a
        change.  ``then(cursor, id)`` is called with the new row's id once it is written (a log
        line's journal entry needs it: a :class:`Pending` parameter of a later row can read
        it).  Other interactions of the same group commit see these rows only once it commits,
        as if they had run before it."""
        if self._later is None:
            self.execute(sql, _resolved(params))
            if then is not None:
                then(self, self.lastrowid)
        else:
            self._later.append((sql, tuple(params), then))

    def flush_later(self) -> None:
        """Send the held-back INSERTs: one multi-row INSERT per statement, rows in their order,
        those whose ids are wanted first.  Also called before a write whose order matters
        against them (a line whose id is needed at once, a delete)."""
        while self._later:
            pending = list(self._later)
            self._later.clear()
            by_statement: dict[tuple[bool, str], list[tuple[tuple[Any, ...], Any]]] = {}
            for sql, params, then in pending:
                by_statement.setdefault((then is None, sql), []).append((params, then))
            for (plain, sql), rows in sorted(by_statement.items(), key=lambda item: item[0][0]):
                if plain:
                    self.executemany(sql, [_resolved(params) for params, _ in rows])
                    continue
                for (_, then), row_id in zip(rows, self.insert_rows(sql, [params for params, _ in rows])):
                    then(self, row_id)

    def insert_rows(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]:
        """Insert ``rows`` (``sql`` is an ``INSERT ... VALUES (?, ...)`` of one row) and return
        their ids in the rows' order: one ``RETURNING`` statement per chunk where the server has
        it (MariaDB, SQLite >= 3.35; ids grow in insertion order, so sorted they match the
        rows), one statement a row elsewhere."""
        if not _returning(self._txn, self._mysql):
            ids = []
            for params in rows:
                self.execute(sql, _resolved(params))
                ids.append(self.lastrowid)
            return ids
        head, _, values = sql.rpartition(" VALUES ")
        ids = []
        for start in range(0, len(rows), _RETURNING_CHUNK):
            chunk = rows[start:start + _RETURNING_CHUNK]
            found = self.execute(
                f"{head} VALUES {', '.join([values] * len(chunk))} RETURNING id", [v for r in chunk for v in _resolved(r)]
            ).fetchall()
            if len(found) != len(chunk):
                raise RuntimeError(f"{len(chunk)} rows inserted, {len(found)} ids returned")
            ids.extend(sorted(int(r[0]) for r in found))
        return ids

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
    # MariaDB has INSERT ... RETURNING from 10.5 (its version may follow a "5.5.5-" prefix
    # kept for old clients); MySQL has none.
    mariadb = re.search(r"(\d+)\.(\d+)\.\d+-MariaDB", conn.get_server_info())
    conn.mozpool_returning = mariadb is not None and (int(mariadb[1]), int(mariadb[2])) >= (10, 5)
    sock = getattr(conn, "_sock", None)
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    with conn.cursor() as cur:
        # GROUP_CONCAT joins id lists (the dead servers, an image's hardware types): MySQL's
        # default cuts them at 1,024 bytes without an error (MariaDB's is 1 MiB).
        cur.execute("SET time_zone = '+00:00', group_concat_max_len = 1048576")
        if _galera(cur):
            # Causal reads: wait until this node has applied what the cluster committed.
            cur.execute("SET SESSION wsrep_sync_wait = 1")
    conn.commit()


def _galera(cur: Any) -> bool:
    """Whether the server is a Galera node (wsrep on); False for MySQL builds without wsrep."""
    try:
        cur.execute("SELECT @@wsrep_on")
        row = cur.fetchone()
    except pymysql.err.MySQLError:
        return False
    return bool(row and row[0] and int(row[0]))


def _probe(c: "Cursor") -> None:
    """Ask the server whether it serves: it answers, and a Galera node is in the primary
    component (a non-primary node answers ``SELECT 1`` but refuses every table)."""
    c.execute("SELECT 1").fetchall()
    try:
        wsrep = c.scalar("SELECT @@wsrep_on")
    except pymysql.err.MySQLError:
        return  # a MySQL build without wsrep
    if wsrep in (1, "1"):
        ready = c.execute("SHOW STATUS LIKE 'wsrep_ready'").fetchone()
        if ready is not None and str(ready[1]).upper() != "ON":
            raise pymysql.err.OperationalError(WSREP_NOT_READY, "wsrep_ready is OFF (not in the primary component)")


class _Connection(adbapi.Connection):
    """adbapi's pooled connection with a quiet rollback: when the server refuses the rollback
    (gone, or a Galera node outside the primary component) the connection is dropped and the
    next interaction opens a new one.  The interaction's own error is what its caller sees and
    the pool reports an outage once, so a failing server is not a traceback per call."""

    def rollback(self) -> None:
        try:
            self._connection.rollback()
        except BaseException as e:
            log.debug("rollback failed ({error}); dropping the connection", error=e)
            self._pool.disconnect(self._connection)


class _Abandoned(Exception):
    """Raised in a pool thread for work whose caller left before a thread reached it."""


class _Attempt:
    """One try of an interaction, as the fault handling sees it."""

    __slots__ = ("deferred", "began", "abandoned", "expired", "tripped", "probe")

    def __init__(self, probe: bool) -> None:
        self.deferred: defer.Deferred[Any] | None = None
        self.began = False
        #: the caller left before a thread started it: the thread must not run it
        self.abandoned = False
        #: ran past the bound
        self.expired = False
        #: failed because the database was marked unavailable
        self.tripped = ""
        self.probe = probe


@dataclass(eq=False)
class _Work:
    """One queued interaction: run in a pool thread, began and deliver in the reactor."""

    attempt: _Attempt
    #: run(txn, later): the interaction, its held-back INSERTs appended to ``later``
    run: Callable[[Any, list[Later]], Any]
    began: Callable[[], None]
    deliver: Callable[[Any], None]
    #: runs in a transaction of its own (schema changes: DDL commits implicitly on MySQL)
    alone: bool = False


class _BatchLost(Exception):
    """Raised in a pool thread when a batch member raised: the transaction is rolled back, that
    member gets ``error``, the rest run again."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


def alone(fn: Callable[..., T]) -> Callable[..., T]:
    """Mark an interaction that must not share its transaction (group commit) with others."""
    fn.alone = True  # type: ignore[attr-defined]
    return fn


def unavailable(message: str) -> DatabaseUnavailable:
    """A :class:`DatabaseUnavailable` carrying the ``retry_after`` seconds for a 503."""
    err = DatabaseUnavailable(message)
    err.retry_after = RETRY_AFTER  # type: ignore[attr-defined]
    return err


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
        self.probe_interval = PROBE_INTERVAL
        #: why the database is unavailable, while it is (MySQL/MariaDB only); "" when it serves
        self.down_reason = ""
        self.down_since: float | None = None
        self._pending: set[_Attempt] = set()
        #: since when the server has answered nothing while work waited
        self._stall_from = 0.0
        self._watchdog: Any = None
        self._probe_timer: Any = None
        self._probing = False
        self._probe_began = 0.0
        self._probe_ended = float("-inf")
        self._probe_waiters: list[defer.Deferred[None]] = []
        self._closed = False
        #: interactions waiting for a connection, and the batches running (one per connection)
        self._queue: deque[_Work] = deque()
        self._batches = 0
        self.batch_max = BATCH_MAX[backend]

    @property
    def mysql(self) -> bool:
        return self.backend == "mysql"

    @property
    def available(self) -> bool:
        """False while the database is marked unavailable (calls fail fast)."""
        return not self.down_reason

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
                # A hung server frees a pool thread a moment after the query bound has
                # failed its caller (the handshake of a new connection is bounded the same).
                read_timeout=math.ceil(timeout) + 2,
                write_timeout=math.ceil(timeout) + 2,
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
            pool.connectionFactory = _Connection
            return cls(pool, "mysql", reactor, url, timeout)
        raise ValueError(f"unsupported database URL {url!r} (use sqlite:/// or mysql://)")

    def _attempt(self, fn: Callable[..., T], args: tuple, kw: dict, probe: bool = False) -> "defer.Deferred[T]":
        """One try of an interaction.  Its ``timeout`` runs from the moment a pool thread starts
        it, so a burst of work queued behind busy connections is served, not failed; the whole
        wait, queue included, is bounded by ``queue_timeout``, and by the stall watchdog on
        MySQL (see :meth:`_check_stall`)."""
        attempt = _Attempt(probe)
        timers: list[Any] = []

        def expire() -> None:
            attempt.expired = True
            assert attempt.deferred is not None
            attempt.deferred.cancel()

        def began() -> None:
            self._progress()
            if attempt.deferred is not None and not attempt.deferred.called:
                timers.append(self._reactor.callLater(self.timeout, expire))

        def interaction(txn: Any, later: list[Later]) -> T:
            return fn(Cursor(txn, self.mysql, later), *args, **kw)

        def cancelled(d: defer.Deferred[Any]) -> None:
            # adbapi cannot take work back from its queue: make the thread skip it instead.
            if not attempt.began:
                attempt.abandoned = True

        d: defer.Deferred[T] = defer.Deferred(cancelled)
        attempt.deferred = d
        self._pending_add(attempt)

        def deliver(result: Any) -> None:
            if d.called:
                return None  # the caller left (or the bound passed) meanwhile: drop the result
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

        work = _Work(attempt, interaction, began, deliver, bool(getattr(fn, "alone", False)))
        if probe:
            self._queue.appendleft(work)  # whether the server answers: not behind queued work
        else:
            self._queue.append(work)
        self._dispatch()
        d.addTimeout(self.queue_timeout, self._reactor)

        def finish(result: Any) -> Any:
            for t in timers:
                if t.active():
                    t.cancel()
            self._pending_remove(attempt, result)
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                if attempt.tripped:
                    return Failure(unavailable(attempt.tripped))
                if attempt.expired:
                    return Failure(defer.TimeoutError(f"query ran longer than {self.timeout:g} s"))
            return result

        return d.addBoth(finish)

    # -- group commit --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start a batch on every free connection: the interactions queued behind busy ones run
        together in one transaction, so a burst costs one thread hop and one commit per batch,
        not per call.  Each member still sees the database as if it ran alone after the ones
        before it; only their commit is shared."""
        while self._queue and self._batches < self.pool.max:
            batch: list[_Work] = []
            while self._queue and len(batch) < self.batch_max:
                if batch and (batch[0].alone or self._queue[0].alone):
                    break
                work = self._queue.popleft()
                if work.attempt.abandoned:
                    work.deliver(Failure(_Abandoned()))
                else:
                    batch.append(work)
            if batch:
                self._batches += 1
                self.pool.runInteraction(self._run_batch, batch).addBoth(self._batch_done, batch)

    def _run_batch(self, txn: Any, batch: list[_Work]) -> list[Any]:
        """In a pool thread: the members one after the other in one transaction.  A member that
        raises loses the batch (:class:`_BatchLost`): the transaction is rolled back, that member
        gets its error and the others run again -- errors are rare, and this costs no statement
        when there are none (a savepoint per member would cost two round trips on MySQL)."""
        live = [w for w in batch if not w.attempt.abandoned]
        for w in live:
            w.attempt.began = True
        self._reactor.callFromThread(self._began, live)  # type: ignore[attr-defined]
        later: list[Later] = []
        results: list[Any] = []
        for i, w in enumerate(batch):
            if not w.attempt.began:
                results.append(Failure(_Abandoned()))
                continue
            try:
                results.append(w.run(txn, later))
            except Exception as e:
                if len(batch) == 1:
                    raise  # a plain transaction: its own error, as without group commit
                raise _BatchLost(i, e) from e
        Cursor(txn, self.mysql, later).flush_later()
        return results

    @staticmethod
    def _began(live: list[_Work]) -> None:
        for w in live:
            w.began()

    def _batch_done(self, outcome: Any, batch: list[_Work]) -> None:
        """Put back what runs again, start the next batch on the connection just freed, and
        only then deliver the results: the callers' callbacks (the machines' next steps, a
        burst's worth of Python) run while the database works on the next batch."""
        self._batches -= 1
        deliveries: list[tuple[_Work, Any]] = []
        if isinstance(outcome, Failure) and outcome.check(_BatchLost):
            lost: _BatchLost = outcome.value  # type: ignore[assignment]
            # Rolled back with the transaction: the others run again, first, in their order.
            self._queue.extendleft(reversed([w for i, w in enumerate(batch) if i != lost.index]))
            deliveries.append((batch[lost.index], Failure(lost.error)))
        elif isinstance(outcome, Failure) and len(batch) > 1:
            # The transaction failed as a whole (at commit: a Galera certification conflict, a
            # lost connection): nothing says which member caused it, so each runs again alone
            # and meets its own outcome.
            for w in batch:
                w.alone = True
            self._queue.extendleft(reversed(batch))
        elif isinstance(outcome, Failure):
            deliveries.append((batch[0], outcome))
        else:
            deliveries.extend(zip(batch, outcome))
        self._dispatch()
        for w, result in deliveries:
            w.deliver(result)

    # -- fault handling (MySQL/MariaDB) -----------------------------------------------------

    def _pending_add(self, attempt: _Attempt) -> None:
        if not self._pending:
            self._stall_from = self._reactor.seconds()
        self._pending.add(attempt)
        if self.mysql and self._watchdog is None and not self._closed:
            self._watchdog = self._reactor.callLater(self.timeout, self._check_stall)

    def _pending_remove(self, attempt: _Attempt, result: Any) -> None:
        self._pending.discard(attempt)
        if not (isinstance(result, Failure) and result.check(defer.CancelledError, _Abandoned)):
            self._progress()  # the server answered (success or an error of its own)
        if not self._pending and self._watchdog is not None:
            if self._watchdog.active():
                self._watchdog.cancel()
            self._watchdog = None

    def _progress(self) -> None:
        self._stall_from = self._reactor.seconds()

    def _check_stall(self) -> None:
        """Runs ``timeout`` after work started waiting: if the server has answered nothing
        since, although work waited all along, it hangs: mark it unavailable."""
        self._watchdog = None
        if not self._pending or self._closed:
            return
        silent = self._reactor.seconds() - self._stall_from
        if silent >= self.timeout - 1e-6:
            if self.available:
                self._mark_down(f"no answer from the database for {silent:.0f} s")
            return
        self._watchdog = self._reactor.callLater(self.timeout - silent, self._check_stall)

    def _mark_down(self, reason: str) -> None:
        """Fail every waiting call at once (new ones wait for a probe, briefly), and probe
        until the server serves."""
        if self._closed or not self.mysql:
            return
        if self.available:
            self.down_since = self._reactor.seconds()
            log.error("database unavailable ({reason}): calls fail fast (503) until it answers again",
                      reason=reason)
        self.down_reason = reason
        message = f"database unavailable: {reason}"
        for attempt in list(self._pending):
            if not attempt.probe and attempt.deferred is not None and not attempt.deferred.called:
                attempt.tripped = message
                attempt.deferred.cancel()
        if not self._probing and self._probe_timer is None:
            self._probe_now()

    def _probe_now(self) -> None:
        if self._probe_timer is not None and self._probe_timer.active():
            self._probe_timer.cancel()
        self._probe_timer = None
        if self._closed or self.available or self._probing:
            return
        self._probing = True
        self._probe_began = self._reactor.seconds()
        d = self._attempt(_probe, (), {}, probe=True)
        d.addCallbacks(self._probe_ok, self._probe_failed)

    async def _ask_again(self) -> None:
        """For a call made while the database is unavailable: the answer of a probe begun at
        most :data:`PROBE_WAIT` ago (one is begun now unless one ended in the last
        :data:`PROBE_GAP`), or nothing once that wait is over."""
        now = self._reactor.seconds()
        if not self.mysql:
            return
        if not self._probing:
            if now - self._probe_ended < PROBE_GAP:
                return
            self._probe_now()
            if not self._probing:
                return
        remaining = self._probe_began + PROBE_WAIT - now
        if remaining <= 0:
            return  # the probe has been waiting: the server hangs
        waiter: defer.Deferred[None] = defer.Deferred()
        self._probe_waiters.append(waiter)
        timer = self._reactor.callLater(remaining, lambda: waiter.called or waiter.callback(None))
        await waiter
        if timer.active():
            timer.cancel()

    def _probe_done(self) -> None:
        self._probing = False
        self._probe_ended = self._reactor.seconds()
        waiters, self._probe_waiters = self._probe_waiters, []
        for w in waiters:
            if not w.called:
                w.callback(None)

    def _probe_ok(self, _: Any) -> None:
        if not (self._closed or self.available):
            since = self.down_since if self.down_since is not None else self._reactor.seconds()
            log.info("database available again after {s:.1f} s", s=self._reactor.seconds() - since)
            self.down_reason = ""
            self.down_since = None
        self._probe_done()

    def _probe_failed(self, failure: Failure) -> None:
        if not (self._closed or self.available):
            self.down_reason = f"{failure.value}" or failure.type.__name__
            self._probe_timer = self._reactor.callLater(self.probe_interval, self._probe_now)
        self._probe_done()

    def _classify(self, err: BaseException) -> str:
        """'retry', 'rerun', 'unavailable', 'not_ready', 'timeout', 'cancelled' or 'other'
        for an exception from an interaction."""
        if isinstance(err, DatabaseUnavailable):
            return "down"  # the database was marked unavailable while this call waited
        if isinstance(err, defer.TimeoutError):
            return "timeout"
        if isinstance(err, (defer.CancelledError, _Abandoned)):
            return "cancelled"  # the caller stopped waiting (an HTTP client hung up)
        if isinstance(err, adbapi.ConnectionLost):
            return "retry"
        if isinstance(err, pymysql.err.InterfaceError):
            return "retry"
        if isinstance(err, pymysql.err.MySQLError) and err.args and err.args[0] in TRANSACTION_RETRY_ERRORS:
            return "rerun"
        if isinstance(err, pymysql.err.MySQLError) and err.args and err.args[0] in SCHEMA_NOT_READY_MYSQL_ERRORS:
            return "not_ready"
        if isinstance(err, pymysql.err.OperationalError) and err.args:
            code = err.args[0]
            if code in RECONNECTABLE_MYSQL_ERRORS:
                return "retry"
            if code in UNREACHABLE_MYSQL_ERRORS:
                return "unavailable"
        if isinstance(err, sqlite3.OperationalError):
            return "not_ready"
        if isinstance(err, (ConnectionError, OSError)):
            return "unavailable"
        return "other"

    async def _run(self, fn: Callable[..., T], args: tuple, kw: dict) -> T:
        retried = reruns = 0
        while True:
            if not self.available:
                await self._ask_again()
                if not self.available:
                    raise unavailable(f"database unavailable: {self.down_reason}")
            try:
                return await self._attempt(fn, args, kw)
            except Exception as e:
                kind = self._classify(e)
                if kind in ("cancelled", "down"):
                    raise
                if kind == "timeout":
                    raise unavailable(f"no answer from the database within {self.timeout:g} s") from e
                if kind == "retry" and not retried:
                    retried += 1
                    log.info("database: {error}; running the transaction again", error=e)
                    continue
                if kind == "rerun":
                    reruns += 1
                    if reruns >= RERUN_ATTEMPTS:
                        raise Conflict(f"transaction lost {reruns} times to concurrent work: {e}") from e
                    log.info("database: {error}; running the transaction again", error=e)
                    if reruns > 1:
                        # Apart from the other party's next try: up to 20 ms, then 40, 60 ...
                        await task.deferLater(self._reactor, random.uniform(0, 0.02 * reruns), lambda: None)
                    continue
                if kind in ("retry", "unavailable"):
                    self._mark_down(str(e))
                    raise unavailable(f"database unavailable: {e}") from e
                if kind == "not_ready":
                    raise unavailable(f"database not ready: {e}") from e
                raise

    def runInteraction(self, fn: Callable[..., T], *args: Any, **kw: Any) -> "defer.Deferred[T]":
        """Run ``fn(cursor, *args, **kw)`` in one transaction; it must return plain data."""
        return defer.Deferred.fromCoroutine(self._run(fn, args, kw))

    def query(self, sql: str, params: Sequence[Any] = ()) -> "defer.Deferred[list[tuple]]":
        return self.runInteraction(lambda c: c.execute(sql, params).fetchall())

    def close(self) -> None:
        self._closed = True
        for timer in (self._watchdog, self._probe_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._watchdog = self._probe_timer = None
        self.pool.close()
