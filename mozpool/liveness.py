"""Which imaging servers are alive: each daemon writes a heartbeat to the shared database every
10 s (scaled by ``time_scale``), and a server silent for three intervals is dead: its devices
are shown as unreachable, never picked for ``any``, and a request naming one fails at once.

``[server] heartbeat_file``, when set, is the seed's hook for external watchdogs: it is touched
on every timeout pass (the tap hands :meth:`Heartbeat.touch_file` to both timeout drivers) and
with every heartbeat written, so its modification time says the daemon's timers and database
still work.  A pass skipped for want of the database, or a timeout loop stuck, touches nothing.
"""

from __future__ import annotations

import os
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mozpool.db import catalog
from mozpool.db.pool import Cursor, Database
from mozpool.logconfig import Logger
from mozpool.timeutil import deadline_text

log = Logger()

HEARTBEAT_INTERVAL = 10.0
#: Heartbeats missed before a server counts as dead.
DEAD_AFTER = 3


def dead_before(clock: IReactorTime, time_scale: float) -> str:
    """The time before which a server's last heartbeat makes it dead."""
    return deadline_text(clock.seconds() - DEAD_AFTER * HEARTBEAT_INTERVAL * time_scale)


def alive(last_seen: str | None, cutoff: str) -> bool:
    return last_seen is None or last_seen >= cutoff


class Heartbeat(TimerService):
    """Writes this server's heartbeat every interval; a failed write is logged (once per
    outage) and tried again at the next one."""

    name = "heartbeat"

    def __init__(self, db: Database, fqdn: str, clock: IReactorTime, time_scale: float = 1.0,
                 heartbeat_file: str | None = None) -> None:
        super().__init__(HEARTBEAT_INTERVAL * time_scale, lambda: defer.Deferred.fromCoroutine(self.beat()))
        self.clock = clock
        self.time_scale = time_scale
        self.db = db
        self.fqdn = fqdn
        self.heartbeat_file = heartbeat_file
        self.beats = 0
        #: servers alive at the last heartbeat, this one included: they share the pool's
        #: claims (:meth:`mozpool.broker.intake.Intake.create` sizes its batches by it)
        self.servers_alive = 1
        self._failing = False

    async def beat(self) -> None:
        try:
            alive = await self.db.runInteraction(
                self._beat, deadline_text(self.clock.seconds()), dead_before(self.clock, self.time_scale))
        except Exception as e:
            if not self._failing:
                log.warn("heartbeat not recorded ({error}); other servers will count this one dead", error=e)
            self._failing = True
            return
        self._failing = False
        self.beats += 1
        self.servers_alive = max(1, alive)
        self.touch_file()

    def _beat(self, c: Cursor, now: str, cutoff: str) -> int:
        catalog.heartbeat(c, self.fqdn, now)
        return catalog.servers_alive(c, cutoff)

    def touch_file(self) -> None:
        """Touch ``heartbeat_file`` (created if missing), if there is one."""
        if not self.heartbeat_file:
            return
        try:
            with open(self.heartbeat_file, "a"):
                pass
            os.utime(self.heartbeat_file, None)
        except OSError as e:
            log.warn("cannot touch heartbeat file {path}: {error}", path=self.heartbeat_file, error=e)
