"""The daemon's timed inventory sync: at start, then ``[inventory] sync_interval`` seconds after
each run ends, on the injected clock, under the database lease (one run at a time across every
server on the database).  Counting from the end, a run longer than the interval is never
followed by another at once, and servers whose turn fell in another's run get theirs after it.
A failing inventory, database or lease never stops the loop: each run's outcome is logged and
the next one tries again.  Timed runs never pass the failsafe (``--ship-it`` is for people).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime

from twisted.application.service import Service
from twisted.internet import defer

from mozpool.db.errors import DatabaseError
from mozpool.db.pool import Database
from mozpool.inventory.model import InventorySource, LeaseHeld, SyncAborted
from mozpool.inventory.settings import InventorySettings
from mozpool.inventory.sync import Sync, new_holder, summary
from mozpool.logconfig import Logger

log = Logger()


class InventorySyncService(Service):
    """Runs :class:`Sync` at start and ``settings.sync_interval`` seconds after each run."""

    def __init__(self, db: Database, settings: InventorySettings, clock: IReactorTime, who: str,
                 make_source: Callable[[], InventorySource]) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.who = who
        self.make_source = make_source
        self.setName("inventory")
        self._timer: Any = None
        #: the run in progress, cancelled when the service stops
        self._current: defer.Deferred[None] | None = None
        #: outcomes of finished runs, newest last (for the manhole and tests): "ok", "skipped", ...
        self.outcomes: list[str] = []

    def startService(self) -> None:
        super().startService()
        log.info("inventory sync from {source} every {interval:g} s", source=self.make_source().describe(),
                 interval=self.settings.sync_interval)
        self._timer = self.clock.callLater(0, self.run_once)

    def run_once(self) -> "defer.Deferred[None]":
        """One run now; the next is scheduled when it ends."""
        self._timer = None
        self._current = current = defer.Deferred.fromCoroutine(self._run())

        def next_run(_: Any) -> None:
            self._current = None
            if self.running:
                self._timer = self.clock.callLater(self.settings.sync_interval, self.run_once)

        current.addBoth(next_run)
        return current

    async def _run(self) -> None:
        outcome = "failed"
        try:
            source = self.make_source()
            sync = Sync(self.db, source, self.clock, ignore_re=self.settings.ignore_devices_on_servers_re,
                        holder=new_holder(self.who), report=self._report)
            changes = await sync.run()
            outcome = "ok"
            log.info("inventory sync: {summary}", summary=summary(changes))
        except LeaseHeld as e:
            outcome = "skipped"
            log.info("inventory sync skipped: {reason}", reason=str(e))
        except SyncAborted as e:
            outcome = "aborted"
            log.warn("inventory sync aborted: {reason}", reason=str(e))
        except DatabaseError as e:
            log.warn("inventory sync failed: {error}; trying again in {interval:g} s", error=str(e),
                     interval=self.settings.sync_interval)
        except defer.CancelledError:
            outcome = "cancelled"
            log.info("inventory sync stopped with the daemon")
        except Exception:
            log.failure("inventory sync failed; trying again in {interval:g} s", interval=self.settings.sync_interval)
        finally:
            self.outcomes.append(outcome)
            del self.outcomes[:-100]

    def _report(self, kind: str, line: str) -> None:
        if kind == "change":
            log.info("inventory sync: {change}", change=line)
        elif kind == "note":
            log.warn("inventory sync: {note}", note=line)

    def stopService(self) -> "defer.Deferred[None] | None":
        """A run in progress is cancelled (its lease given back) rather than waited for: a
        fetch may take minutes."""
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._current is not None:
            current = self._current
            current.cancel()
            return current
        return None


def make_sync_service(db: Database, settings: InventorySettings, reactor: Any, who: str) -> InventorySyncService:
    """The service for ``[inventory]``, with a source (and its HTTP client) built per run."""
    from mozpool.inventory.sync import make_source

    return InventorySyncService(db, settings, reactor, who, lambda: make_source(settings, reactor))
