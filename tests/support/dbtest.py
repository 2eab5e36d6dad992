"""Run one set of database-facing tests against SQLite and against the private MariaDB.

Write the tests in a mixin that uses ``self.db`` (a fresh database with the current schema),
then make the two concrete test cases with :func:`on_both_backends`::

    class DeviceQueries(DatabaseTest):
        async def test_something(self): ...

    DeviceQueriesSQLite, DeviceQueriesMariaDB = on_both_backends(DeviceQueries)

The module attributes must carry the names the classes get (mixin name + SQLite/MariaDB):
``trial -j`` workers find tests by those names.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mozpool.db import schema
from mozpool.db.pool import Cursor, Database


class DatabaseTest:
    """Mixin: ``self.db`` is ready in setUp; subclasses pick the back-end with ``backend``."""

    backend = "sqlite"

    def databaseURL(self) -> str:
        if self.backend == "sqlite":
            return "sqlite:///" + self.mktemp() + ".sqlite"  # type: ignore[attr-defined]
        from labservers.mariadb import mariadbURL

        return mariadbURL(self)

    def makeDatabase(self, url: str | None = None) -> Database:
        db = Database.fromURL(url or self.databaseURL(), reactor)
        self.addCleanup(db.close)  # type: ignore[attr-defined]
        return db

    def setUp(self) -> Any:
        self.db = self.makeDatabase()
        return defer.ensureDeferred(schema.create_schema(self.db))


def on_both_backends(mixin: type) -> tuple[type, type]:
    """Two trial TestCases running ``mixin``'s tests on SQLite and on MariaDB."""
    made = []
    for backend, suffix in (("sqlite", "SQLite"), ("mysql", "MariaDB")):
        cls = type(mixin.__name__ + suffix, (mixin, TestCase), {"backend": backend})
        cls.__module__ = mixin.__module__
        made.append(cls)
    return made[0], made[1]


def statements_sent(test: Any) -> list[str]:
    """Every statement the daemon's cursors send from now on, for the rest of ``test`` (a
    trial TestCase, whose ``patch`` undoes this)."""
    sent: list[str] = []
    execute = Cursor.execute

    def counting(c: Cursor, sql: str, params: Any = ()) -> Cursor:
        sent.append(sql)
        return execute(c, sql, params)

    test.patch(Cursor, "execute", counting)
    return sent
