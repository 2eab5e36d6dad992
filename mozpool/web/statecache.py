"""The in-memory snapshot of every device's state behind ``state/?cache=1`` (spec 4.4).

Monitoring polls every device; with the snapshot that costs one query per 5 s per server.
Concurrent misses share one rebuild.

When the database cannot answer, the snapshot keeps answering from memory while it is younger
than :data:`STALE_SECONDS` (60 s): at once while the database is marked unavailable, and after
:data:`REBUILD_WAIT` (1 s) when a rebuild is slow (a hung server before it is marked
unavailable).  An older snapshot, or none, waits for the rebuild and fails with it (503).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mozpool.db import devices
from mozpool.db.errors import DatabaseUnavailable
from mozpool.db.pool import Database

SNAPSHOT_SECONDS = 5.0
#: The oldest snapshot answered from memory while the database cannot answer.
STALE_SECONDS = 60.0
#: How long a call with a stale (but not too old) snapshot waits for the rebuild.
REBUILD_WAIT = 1.0


class StateSnapshot:
    def __init__(
        self, db: Database, clock: IReactorTime, ttl: float = SNAPSHOT_SECONDS, max_stale: float = STALE_SECONDS
    ) -> None:
        self.db = db
        self.clock = clock
        self.ttl = ttl
        self.max_stale = max_stale
        self.builds = 0
        #: answers given from a stale snapshot because the database could not answer
        self.stale_answers = 0
        self._states: dict[str, str] | None = None
        self._built = 0.0
        self._expires = 0.0
        self._waiters: list[defer.Deferred[Any]] | None = None

    def fresh(self) -> tuple[dict[str, str], float] | None:
        """({name: state}, expiry) when the snapshot is fresh, else None; never waits."""
        if self._states is not None and self.clock.seconds() < self._expires:
            return self._states, self._expires
        return None

    def _usable(self) -> tuple[dict[str, str], float] | None:
        """The snapshot, if it is young enough to answer while the database cannot."""
        if self._states is not None and self.clock.seconds() - self._built < self.max_stale:
            return self._states, self._expires
        return None

    def _db_available(self) -> bool:
        return bool(getattr(self.db, "available", True))

    def at_once(self) -> tuple[dict[str, str], float] | None:
        """What can be answered without waiting: a fresh snapshot, or while the database is
        marked unavailable, one younger than ``max_stale``."""
        fresh = self.fresh()
        if fresh is not None or self._db_available():
            return fresh
        return self._stale()

    def _stale(self) -> tuple[dict[str, str], float] | None:
        usable = self._usable()
        if usable is not None:
            self.stale_answers += 1
        return usable

    async def states(self) -> tuple[dict[str, str], float]:
        """({name: state}, time the snapshot expires), rebuilding it when stale; from memory
        while the database cannot answer and the snapshot is younger than ``max_stale``."""
        now = self.at_once()
        if now is not None:
            return now
        if self._usable() is None:
            await self._rebuilt()
            assert self._states is not None
            return self._states, self._expires
        waiter = self._rebuilt()
        timer = self.clock.callLater(REBUILD_WAIT, waiter.cancel)
        try:
            await waiter
        except (defer.CancelledError, DatabaseUnavailable):
            stale = self._stale()
            if stale is None:
                raise
            return stale
        finally:
            if timer.active():
                timer.cancel()
        assert self._states is not None
        return self._states, self._expires

    def _rebuilt(self) -> "defer.Deferred[None]":
        """Fires when the rebuild in progress (started now if none is) has finished."""
        waiter: defer.Deferred[None] = defer.Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        defer.Deferred.fromCoroutine(self._rebuild())
        return waiter

    async def _rebuild(self) -> None:
        try:
            states = await devices.all_states(self.db)
        except BaseException as e:
            waiters, self._waiters = self._waiters or [], None
            for w in waiters:
                if not w.called:
                    w.errback(e)
            return
        self.builds += 1
        self._states = dict(states)
        self._built = self.clock.seconds()
        self._expires = self._built + self.ttl
        waiters, self._waiters = self._waiters or [], None
        for w in waiters:
            if not w.called:
                w.callback(None)
