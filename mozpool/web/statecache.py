"""The in-memory snapshot of every device's state behind ``state/?cache=1`` (spec 4.4).

Monitoring polls every device; with the snapshot that costs one query per 5 s per server.
Concurrent misses share one rebuild.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mozpool.db import devices
from mozpool.db.pool import Database

SNAPSHOT_SECONDS = 5.0


class StateSnapshot:
    def __init__(self, db: Database, clock: IReactorTime, ttl: float = SNAPSHOT_SECONDS) -> None:
        self.db = db
        self.clock = clock
        self.ttl = ttl
        self.builds = 0
        self._states: dict[str, str] | None = None
        self._expires = 0.0
        self._waiters: list[defer.Deferred[Any]] | None = None

    def fresh(self) -> tuple[dict[str, str], float] | None:
        """({name: state}, expiry) when the snapshot is fresh, else None; never waits."""
        if self._states is not None and self.clock.seconds() < self._expires:
            return self._states, self._expires
        return None

    async def states(self) -> tuple[dict[str, str], float]:
        """({name: state}, time the snapshot expires), rebuilding it when stale."""
        fresh = self.fresh()
        if fresh is not None:
            return fresh
        if self._waiters is not None:
            waiter: defer.Deferred[Any] = defer.Deferred()
            self._waiters.append(waiter)
            await waiter
            assert self._states is not None
            return self._states, self._expires
        self._waiters = []
        try:
            states = await devices.all_states(self.db)
        except BaseException as e:
            waiters, self._waiters = self._waiters, None
            for w in waiters:
                w.errback(e)
            raise
        self.builds += 1
        self._states = dict(states)
        self._expires = self.clock.seconds() + self.ttl
        waiters, self._waiters = self._waiters, None
        for w in waiters:
            w.callback(None)
        return self._states, self._expires
