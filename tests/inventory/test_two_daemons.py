"""Two real daemons on one private MariaDB database, both with ``[inventory] sync_interval = 1``
against one slow simulated inventory: their runs never overlap (the lease), the one that finds
the lease taken skips its turn and gets the next, and the devices are inserted once."""

from __future__ import annotations

import os

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from mozpool.db import schema
from mozpool.db.pool import Database
from mozpool.fakes.inventory import FakeMozillaInventory, pandas
from tests.inventory.support import serve
from labservers.mariadb import mariadbURL
from tests.system.daemon import Daemon

RUN_SECONDS = float(os.environ.get("MOZPOOL_INVENTORY_RACE_SECONDS", "8"))  # at least; then until enough ran


class TwoDaemons(TestCase):
    timeout = 180

    async def test_never_sync_at_once(self) -> None:
        url = mariadbURL(self)
        db = Database.fromURL(url, reactor)
        self.addCleanup(db.close)
        await schema.create_schema(db)
        # Devices of a server nobody runs: no LifeGuard picks them up while the test watches.
        fake = FakeMozillaInventory(reactor, pandas(3, "elsewhere.example.com"))
        fake.delay = 0.4  # a run (export, a status, a model) takes about 1.2 s, longer than the interval
        inventory = await serve(self, fake)
        daemons = [
            Daemon(self, fakes=0, db=url, config=f"[inventory]\nurl = {inventory}\nusername = {name}\nsync_interval = 1\n")
            for name in ("daemon-a", "daemon-b")
        ]
        for d in daemons:
            await d.start()
        await task.deferLater(reactor, RUN_SECONDS, lambda: None)

        def exports_by(who: str) -> list[object]:
            return [r for r in fake.requests
                    if r.ended is not None and r.who == who and r.path.startswith("/en-US/bulk_action/export/")]

        async def enough() -> bool:
            """What the checks below need has happened (a busy machine runs fewer syncs in RUN_SECONDS)."""
            logs = [d.log_text() for d in daemons]
            a, b = exports_by("daemon-a"), exports_by("daemon-b")
            return bool(a and b and len(a + b) >= 4
                        and any("inventory sync skipped: another inventory sync is running" in t for t in logs)
                        and sum(t.count("inventory sync: insert device") for t in logs) >= 3)

        await daemons[0].wait_for(enough, 60, "both daemons to sync (4 runs in all) and one to skip")
        for d in daemons:
            await d.stop()

        served = [r for r in fake.requests if r.ended is not None]
        by = {who: [r for r in served if r.who == who] for who in ("daemon-a", "daemon-b")}
        exports = {who: [r for r in mine if r.path.startswith("/en-US/bulk_action/export/")] for who, mine in by.items()}
        # Each run starts an interval after its own ended, so the daemons take turns.
        self.assertTrue(exports["daemon-a"] and exports["daemon-b"], {w: len(e) for w, e in exports.items()})
        self.assertGreaterEqual(len(exports["daemon-a"] + exports["daemon-b"]), 4)
        for a in by["daemon-a"]:
            for b in by["daemon-b"]:
                assert a.ended is not None and b.ended is not None
                self.assertFalse(a.started < b.ended and b.started < a.ended,
                                 f"daemon-a's {a.path} ({a.started:.3f}-{a.ended:.3f}) overlaps daemon-b's "
                                 f"{b.path} ({b.started:.3f}-{b.ended:.3f})")
        logs = [d.log_text() for d in daemons]
        self.assertTrue(any("inventory sync skipped: another inventory sync is running" in text for text in logs))
        self.assertEqual(sum(text.count("inventory sync: insert device") for text in logs), 3)
        names = await db.query("SELECT name FROM devices ORDER BY name")
        self.assertEqual(names, [("panda-0001",), ("panda-0002",), ("panda-0003",)])
