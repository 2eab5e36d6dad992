"""The private MariaDB harness works: other database tests lean on it."""

from __future__ import annotations

import os
from unittest import mock
from urllib.parse import urlsplit

import pymysql
from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase

from labservers import mariadb
from labservers.mariadb import getMariaDB, mariadbServer, mariadbURL


def _connect(url: str) -> pymysql.connections.Connection:
    """Connect the way the daemon will: only from what the URL says."""
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username,
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        connect_timeout=5,
        autocommit=True,
    )


class MariaDBURLTests(SynchronousTestCase):
    def test_urlConnects(self) -> None:
        """The URL is a loopback mysql:// URL on which the mozpool user can make tables."""
        url = mariadbURL(self)
        parts = urlsplit(url)
        self.assertEqual(parts.scheme, "mysql")
        if not os.environ.get("MOZPOOL_TEST_MYSQL_URL"):
            self.assertEqual((parts.hostname, parts.username), ("127.0.0.1", "mozpool"))
        conn = _connect(url)
        self.addCleanup(conn.close)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(32))")
            cur.execute("INSERT INTO t VALUES (1, 'panda-0001')")
            cur.execute("SELECT name FROM t")
            self.assertEqual(cur.fetchall(), (("panda-0001",),))
            cur.execute(
                "SELECT default_character_set_name, default_collation_name"
                " FROM information_schema.schemata WHERE schema_name = DATABASE()"
            )
            self.assertEqual(cur.fetchall(), (("utf8mb4", "utf8mb4_bin"),))

    def test_freshDatabases(self) -> None:
        """Each call gives a different, empty database, dropped at cleanup."""
        first, second = mariadbURL(self), mariadbURL(self)
        self.assertNotEqual(first, second)
        conn = _connect(second)
        self.addCleanup(conn.close)
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            self.assertEqual(cur.fetchall(), ())

    def test_dropAtCleanup(self) -> None:
        """The database made for a test is gone once that test's cleanups have run."""
        urls = []

        class Inner(SynchronousTestCase):
            def test_makeOne(self) -> None:
                urls.append(mariadbURL(self))

        result = TestResult()
        Inner("test_makeOne").run(result)
        self.assertEqual((result.errors, result.failures, len(urls)), ([], [], 1))
        name = urlsplit(urls[0]).path.lstrip("/")
        server = getMariaDB()
        assert server is not None
        conn = server.connect()
        self.addCleanup(conn.close)
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (name,))
            self.assertEqual(cur.fetchall(), ())


    def test_dropWithConnectionsOpen(self) -> None:
        """A connection left mid-transaction does not stall dropping the database."""
        server = getMariaDB()
        if server is None:
            mariadbURL(self)  # skips (or fails under CI) with the reason
            return
        name = f"mozpool_droptest_{os.getpid()}"
        url = server.createDatabase(name)
        self.addCleanup(server.dropDatabase, name)
        conn = _connect(url)
        self.addCleanup(conn.close)
        conn.autocommit(False)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
            cur.execute("INSERT INTO t VALUES (1)")
            cur.execute("SELECT * FROM t")  # holds a metadata lock until commit
        server.dropDatabase(name)
        admin = server.connect()
        self.addCleanup(admin.close)
        with admin.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (name,))
            self.assertEqual(cur.fetchall(), ())


class RestartTests(SynchronousTestCase):
    def test_stopStartKeepsData(self) -> None:
        """Rows committed before stop() are there after start(), on the same URL."""
        url = mariadbURL(self)
        server = mariadbServer(self)
        conn = _connect(url)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE devices (name VARCHAR(32) PRIMARY KEY) ENGINE=InnoDB")
            cur.execute("INSERT INTO devices VALUES ('panda-0001'), ('panda-0002')")
        conn.close()

        server.stop()
        self.assertRaises(pymysql.err.OperationalError, _connect, url)
        server.start()

        conn = _connect(url)
        self.addCleanup(conn.close)
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM devices ORDER BY name")
            self.assertEqual(cur.fetchall(), (("panda-0001",), ("panda-0002",)))

    def test_stoppedServerComesBack(self) -> None:
        """A test that leaves the server stopped does not break the next user."""
        server = mariadbServer(self)
        server.stop()
        url = mariadbURL(self)
        conn = _connect(url)
        self.addCleanup(conn.close)
        self.assertTrue(conn.open)


class AvailabilityTests(SynchronousTestCase):
    def test_missingBinariesSkipOutsideCI(self) -> None:
        """Without the binaries, no server and a reason; under CI=true, an error."""
        self.patch(mariadb, "_server", None)
        self.patch(mariadb, "_startError", None)
        self.patch(mariadb, "_which", lambda *names: None)
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "MOZPOOL_TEST_MYSQL_URL")}
        with mock.patch.dict(os.environ, env, clear=True):
            self.assertIsNone(getMariaDB())
            reason = mariadb.mariadbUnavailableReason()
            assert reason is not None
            self.assertIn("mariadbd", reason)
            os.environ["CI"] = "true"
            self.assertRaises(RuntimeError, getMariaDB)

    def test_externalURL(self) -> None:
        """MOZPOOL_TEST_MYSQL_URL names a server to use instead of a private one."""
        self.patch(mariadb, "_server", None)
        self.patch(mariadb, "_startError", None)
        with mock.patch.dict(
            os.environ, {"MOZPOOL_TEST_MYSQL_URL": "mysql://u:p%40ss@db.example:3307/"}
        ):
            server = getMariaDB()
        assert server is not None
        self.assertFalse(server.canRestart)
        self.assertEqual(server.url("x"), "mysql://u:p%40ss@db.example:3307/x")
        self.assertEqual((server.host, server.port, server.password), ("db.example", 3307, "p@ss"))
