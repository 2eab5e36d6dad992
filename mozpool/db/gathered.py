"""Work that arrives while earlier work of its kind is in the database waits, and goes together:
one interaction per batch instead of one per item (issue 17).  A burst of request creations,
or of the image look-ups before them, then costs a few statements for the lot; an item that
arrives alone goes at once, as it would without this.

Group commit (:mod:`mozpool.db.pool`) shares a transaction between interactions but still runs
each one's statements; gathering lets one statement serve a whole batch (``WHERE ... IN``, a
multi-row INSERT).
"""

from __future__ import annotations

from typing import Callable, Generic, Sequence, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

from mozpool.db.pool import Cursor, Database

T = TypeVar("T")
R = TypeVar("R")

#: For a batch of items, called in the reactor when it starts (a clock read belongs here):
#: the interaction that serves it, returning one result, or an exception, per item in order.
Serve = Callable[[Sequence[T]], Callable[[Cursor], Sequence["R | Exception"]]]


class Gathered(Generic[T, R]):
    """Items to serve in batches of at most ``most``, with at most ``lanes`` batches in the
    database at once."""

    def __init__(self, db: Database, serve: Serve, most: int, lanes: int = 1) -> None:
        self.db = db
        self.serve = serve
        self.most = most
        self.lanes = lanes
        self._waiting: list[tuple[T, defer.Deferred[R]]] = []
        self._running = 0

    def submit(self, item: T) -> "defer.Deferred[R]":
        """Fires with the item's result once its batch is served (or fails with its error)."""
        done: defer.Deferred[R] = defer.Deferred()
        self._waiting.append((item, done))
        if self._running < self.lanes:
            self._running += 1
            defer.Deferred.fromCoroutine(self._drain())
        return done

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.most], self._waiting[self.most:]
                try:
                    results = await self.db.runInteraction(self.serve([item for item, _ in batch]))
                except Exception:
                    failure = Failure()
                    for _, done in batch:
                        done.errback(failure)
                    continue
                if len(results) != len(batch):
                    results = [RuntimeError(f"{len(batch)} items served with {len(results)} results")] * len(batch)
                for (_, done), result in zip(batch, results):
                    if isinstance(result, Exception):
                        done.errback(Failure(result))
                    else:
                        done.callback(result)
        finally:
            self._running -= 1
