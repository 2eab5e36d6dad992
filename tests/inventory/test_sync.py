"""Whole sync runs against a real database, SQLite and MariaDB: what is inserted, updated and
deleted (and journalled), what is never touched, the failsafes, dry runs, a fetch that fails
part-way, a change that fails part-way, the run's bound, and the lease."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor, task

from mozpool.db import fixtures
from mozpool.db.pool import Cursor, Database
from mozpool.inventory import lease
from mozpool.inventory.model import InventoryError, LeaseHeld, SyncAborted, System
from mozpool.inventory.sync import LEASE_NAME, Sync
from tests.inventory.support import SERVER, mozilla, pandas
from tests.support.dbtest import DatabaseTest, on_both_backends

NAMES = {"relay_info": "system.relay.0", "imaging_server": "system.imaging_server.0", "mac": "mac",
         "hardware_type": "server model"}


def system(n: int, **kw: Any) -> System:
    values: dict[str, Any] = dict(
        hostname=f"panda-{n:04d}.lab.example.com", inventory_id=n, mac=f"02:00:00:00:00:{n:02x}",
        imaging_server=SERVER, relay_info=f"relay-{1 + (n - 1) // 32}.lab.example.com:bank1:relay{1 + (n - 1) % 8}",
        hardware_type="PandaBoard", hardware_model="ES")
    values.update(kw)
    return System(**values)


class ListSource:
    """A source that lists what the test says, or fails as told."""

    field_names = NAMES

    def __init__(self, systems: list[System]) -> None:
        self.systems = systems
        self.error: Exception | None = None
        self.never = False

    def describe(self) -> str:
        return "the test's list"

    async def fetch(self) -> list[System]:
        if self.never:
            await defer.Deferred()
        if self.error:
            raise self.error
        return list(self.systems)


DEVICE_SQL = (
    "SELECT d.name, d.fqdn, d.inventory_id, d.mac_address, s.fqdn, d.relay_info, h.type, h.model, d.state,"
    " d.state_counters, d.state_timeout, d.environment, d.comments"
    " FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
    " LEFT JOIN hardware_types h ON h.id = d.hardware_type_id ORDER BY d.name"
)


class SyncRuns(DatabaseTest):
    timeout = 60

    async def sync(self, systems: list[System] | ListSource | Any, **kw: Any) -> Any:
        source = systems if not isinstance(systems, list) else ListSource(systems)
        lines: list[tuple[str, str]] = []
        kw.setdefault("holder", "test")
        self.lines = lines
        return await Sync(self.db, source, reactor, report=lambda kind, line: lines.append((kind, line)), **kw).run()

    async def devices(self) -> list[tuple]:
        return await self.db.query(DEVICE_SQL)

    async def everything(self) -> list[Any]:
        """Every row the sync could touch, to show a run changed nothing."""
        tables = ("devices", "relay_boards", "device_logs", "request_logs", "device_requests", "changes",
                  "hardware_types", "imaging_servers")
        return [await self.db.query(f"SELECT * FROM {t} ORDER BY 1") for t in tables]

    async def test_inserts(self) -> None:
        changes = await self.sync([system(1), system(2), system(40, hardware_model="")])
        self.assertEqual(len(changes.devices), 3)
        rows = await self.devices()
        self.assertEqual([r[:8] for r in rows], [
            ("panda-0001", "panda-0001.lab.example.com", 1, "020000000001", SERVER,
             "relay-1.lab.example.com:bank1:relay1", "PandaBoard", "ES"),
            ("panda-0002", "panda-0002.lab.example.com", 2, "020000000002", SERVER,
             "relay-1.lab.example.com:bank1:relay2", "PandaBoard", "ES"),
            ("panda-0040", "panda-0040.lab.example.com", 40, "020000000028", SERVER,
             "relay-2.lab.example.com:bank1:relay8", "PandaBoard", ""),
        ])
        # New devices wait in 'new', due now, for their state machine; environment takes its default.
        self.assertEqual({(r[8], r[9], r[11], r[12]) for r in rows}, {("new", "{}", "none", None)})
        self.assertTrue(all(r[10] for r in rows))
        boards = await self.db.query("SELECT b.name, b.fqdn, s.fqdn, b.state, b.state_counters FROM relay_boards b"
                                     " JOIN imaging_servers s ON s.id = b.imaging_server_id ORDER BY b.name")
        self.assertEqual(boards, [("relay-1", "relay-1.lab.example.com", SERVER, "ready", "{}"),
                                  ("relay-2", "relay-2.lab.example.com", SERVER, "ready", "{}")])
        journal = await self.db.query("SELECT kind, data FROM changes ORDER BY id")
        self.assertEqual(journal[0], ("device_state", json.dumps({"state": "new", "old_state": None}, separators=(",", ":"))))
        self.assertIn("added by inventory sync (inventory id 1", journal[1][1])
        self.assertIn(("change", "insert device panda-0001.lab.example.com"), self.lines)
        self.assertIn(("change", "insert relay_board relay-2.lab.example.com"), self.lines)
        # Run again: nothing to do.
        again = await self.sync([system(1), system(2), system(40, hardware_model="")])
        self.assertEqual(again.changes, [])

    async def test_updates_touch_only_the_inventory_fields(self) -> None:
        await self.sync([system(1), system(2)])
        await self.db.query("UPDATE devices SET state = 'ready', state_counters = '{\"x\": 1}', state_timeout = NULL,"
                            " environment = 'prod', comments = 'flaky usb'")
        before = {r[0]: r for r in await self.devices()}
        await self.sync([system(1, mac="02:00:00:00:00:99", relay_info="relay-1.lab.example.com:bank2:relay1",
                                hardware_type="Samsung", hardware_model="Nexus S"), system(2)])
        after = {r[0]: r for r in await self.devices()}
        self.assertEqual(after["panda-0002"], before["panda-0002"])
        self.assertEqual(after["panda-0001"][3], "020000000099")
        self.assertEqual(after["panda-0001"][5:8], ("relay-1.lab.example.com:bank2:relay1", "Samsung", "Nexus S"))
        self.assertEqual(after["panda-0001"][8:], before["panda-0001"][8:], "state, counters, timeout, environment, comments")
        log = await self.db.query("SELECT source, message FROM device_logs ORDER BY id DESC LIMIT 1")
        self.assertEqual(log[0][0], "inventory")
        self.assertIn("updated by inventory sync: mac_address '020000000001' -> '020000000099'", log[0][1])
        # A new imaging server and hardware type are inserted when first named.
        await self.sync([system(1, imaging_server="img2.example.com:8010"), system(2, imaging_server="img2.example.com:8010")])
        self.assertEqual({r[4] for r in await self.devices()}, {"img2.example.com:8010"})
        servers = await self.db.query("SELECT fqdn FROM imaging_servers ORDER BY fqdn")
        self.assertEqual(servers, [(SERVER,), ("img2.example.com:8010",)], "imaging servers are never deleted")

    async def claim(self, device: str) -> int:
        """A request holding ``device``."""

        def q(c: Cursor) -> int:
            fixtures.seed_catalog(c)
            image = c.scalar("SELECT id FROM images WHERE name = 'android'")
            server = c.scalar("SELECT id FROM imaging_servers")
            c.execute("INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id,"
                      " boot_config, state, state_counters, environment) VALUES (?, 'any', 'ci', '2030-01-01 00:00:00',"
                      " ?, '{}', 'ready', '{}', 'any')", (server, image))
            request = c.lastrowid
            c.execute("INSERT INTO device_requests (request_id, device_id) SELECT ?, id FROM devices WHERE name = ?",
                      (request, device))
            return request

        return await self.db.runInteraction(q)

    async def test_deletes(self) -> None:
        await self.sync([system(1), system(2), system(33)])
        request = await self.claim("panda-0002")
        await self.sync([system(1)])
        self.assertEqual([r[0] for r in await self.devices()], ["panda-0001"])
        self.assertEqual(await self.db.query("SELECT fqdn FROM relay_boards"), [("relay-1.lab.example.com",)])
        self.assertEqual(await self.db.query("SELECT COUNT(*) FROM device_requests"), [(0,)])
        self.assertEqual(await self.db.query("SELECT COUNT(*) FROM device_logs WHERE device_id <> 1"), [(0,)])
        lost = await self.db.query("SELECT message FROM request_logs WHERE request_id = ?", (request,))
        self.assertEqual(lost, [("device panda-0002 was deleted by inventory sync; this request no longer holds it",)])
        # Followers of /api/events see the claim dropped and a last line naming each device.
        from mozpool.db import changes

        def read(c: Cursor) -> list[Any]:
            return changes.read_after(c, 0)

        events = [(e.kind, e.data) for e in await self.db.runInteraction(read)]
        dropped = [d for k, d in events if k == "request_device"]
        self.assertEqual(dropped[-1]["device"], None)
        last = [d for k, d in events if k == "device_log" and "deleted" in d["message"]]
        self.assertEqual(sorted(d["device"] for d in last), ["panda-0002", "panda-0033"])
        self.assertEqual({d["imaging_server"] for d in last}, {SERVER})

    async def test_large_changes_need_ship_it(self) -> None:
        with self.assertRaises(SyncAborted) as e:
            await self.sync([system(n) for n in range(1, 11)])
        self.assertEqual(str(e.exception), "10 changes: pass --ship-it to make these changes")
        self.assertEqual(await self.devices(), [])
        await self.sync([system(n) for n in range(1, 11)], ship_it=True)
        self.assertEqual(len(await self.devices()), 10)
        snapshot = await self.everything()
        with self.assertRaises(SyncAborted):
            await self.sync([system(n) for n in range(1, 5)])  # 6 deletes
        self.assertEqual(await self.everything(), snapshot)
        await self.sync([system(n) for n in range(1, 6)])  # 5 deletes pass
        self.assertEqual(len(await self.devices()), 5)

    async def test_empty_inventory_never_deletes_everything_unattended(self) -> None:
        await self.sync([system(1), system(2)])
        snapshot = await self.everything()
        for listed in ([], [system(3, mac=None)]):
            with self.assertRaises(SyncAborted) as e:
                await self.sync(listed)
            self.assertIn("the inventory lists no devices", str(e.exception))
            self.assertEqual(await self.everything(), snapshot)
        await self.sync([], ship_it=True)
        self.assertEqual(await self.devices(), [])
        self.assertEqual(await self.db.query("SELECT COUNT(*) FROM relay_boards"), [(0,)])

    async def test_dry_run(self) -> None:
        await self.sync([system(1), system(2)])
        snapshot = await self.everything()
        changes = await self.sync([system(2, mac="02:00:00:00:00:77"), system(3)], dry_run=True, holder=None)
        self.assertEqual([c.describe() for c in changes.changes], [
            "delete device panda-0001.lab.example.com",
            "update device panda-0002.lab.example.com: mac_address '020000000002' -> '020000000077'",
            "insert device panda-0003.lab.example.com",
        ])
        self.assertEqual([line for kind, line in self.lines if kind == "change"], [c.describe() for c in changes.changes])
        self.assertEqual(await self.everything(), snapshot)
        with self.assertRaises(SyncAborted):
            await self.sync([], dry_run=True, holder=None)
        self.assertEqual(await self.everything(), snapshot)

    async def test_verbose_lines(self) -> None:
        await self.sync([system(1), system(2, skip="decommissioned"), system(3, relay_info="nonsense")])
        self.assertEqual([line for kind, line in self.lines if kind in ("system", "note")], [
            "panda-0001.lab.example.com downloaded.",
            "panda-0003.lab.example.com downloaded.",
            "panda-0002.lab.example.com SKIPPED - decommissioned",
            "panda-0003.lab.example.com: relay 'nonsense' is not host[:port]:bankN:relayN; no relay board for it",
        ])

    async def test_a_failed_fetch_changes_nothing(self) -> None:
        await self.sync([system(1), system(2)])
        snapshot = await self.everything()
        source = ListSource([])
        source.error = InventoryError("GET https://inventory/: HTTP 502")
        with self.assertRaises(SyncAborted) as e:
            await self.sync(source)
        self.assertEqual(str(e.exception), "reading the test's list failed: GET https://inventory/: HTTP 502; nothing changed")
        self.assertEqual(await self.everything(), snapshot)

    async def test_partial_fetch_over_http_changes_nothing(self) -> None:
        """The export answered, a look-up failed: the database is not even read."""
        systems = pandas(3, SERVER)
        await self.sync([system(1)], ship_it=True)
        snapshot = await self.everything()
        fake, source = await mozilla(self, systems, fail={2: 500})
        with self.assertRaises(SyncAborted) as e:
            await self.sync(source)
        self.assertIn("HTTP 500; nothing changed", str(e.exception))
        self.assertEqual(await self.everything(), snapshot)
        fake.fail = {}
        await self.sync(source)
        self.assertEqual([r[0] for r in await self.devices()], ["panda-0001", "panda-0002", "panda-0003"])

    async def test_board_on_two_servers_aborts_before_any_change(self) -> None:
        await self.sync([system(1)])
        snapshot = await self.everything()
        with self.assertRaises(SyncAborted) as e:
            await self.sync([system(1), system(2, imaging_server="img2.example.com")])
        self.assertIn("relay board relay-1.lab.example.com is wired to devices of two imaging servers", str(e.exception))
        self.assertEqual(await self.everything(), snapshot)

    async def test_a_failure_part_way_stops_and_the_next_run_converges(self) -> None:
        db = FailingDatabase(self.db, fail_at=2)
        with self.assertRaises(SyncAborted) as e:
            await Sync(db, ListSource([system(1), system(2), system(3)]), reactor, holder="t").run()  # type: ignore[arg-type]
        self.assertIn("failed after 1 of 4 changes were applied", str(e.exception))
        self.assertEqual([r[0] for r in await self.devices()], ["panda-0001"])
        self.assertIsNone(await self.db.runInteraction(lease.holder_of, LEASE_NAME, "2000-01-01 00:00:00"),
                          "the lease was given back")
        await self.sync([system(1), system(2), system(3)])
        self.assertEqual(len(await self.devices()), 3)
        self.assertEqual(len(await self.db.query("SELECT id FROM relay_boards")), 1)

    async def test_the_run_is_bounded(self) -> None:
        clock = task.Clock()
        clock.advance(1_800_000_000)
        source = ListSource([])
        source.never = True
        running = defer.ensureDeferred(Sync(self.db, source, clock, holder="t").run())
        deadline = reactor.seconds() + 20  # the run takes the lease on a real database thread
        while not await self.db.runInteraction(lease.holder_of, LEASE_NAME, "2000-01-01 00:00:00"):
            if reactor.seconds() > deadline:
                self.fail("the run never took the lease")
            await task.deferLater(reactor, 0.02, lambda: None)
        clock.advance(600)
        e = await self.assertFailure(running, SyncAborted)
        self.assertEqual(str(e), "the test's list was not read within 600 s; nothing changed")
        self.assertIsNone(await self.db.runInteraction(lease.holder_of, LEASE_NAME, "2000-01-01 00:00:00"))

    async def test_one_run_at_a_time(self) -> None:
        far = "2099-01-01 00:00:00"
        self.assertIsNone(await self.db.runInteraction(lease.take, LEASE_NAME, "img2 pid 7", "2026-11-30 12:00:00", far))
        with self.assertRaises(LeaseHeld) as e:
            await self.sync([system(1)])
        self.assertIn(f"another inventory sync is running (img2 pid 7, until {far} UTC)", str(e.exception))
        self.assertEqual(await self.devices(), [])
        # Nobody takes it while it is held; anybody once it expired.
        held = await self.db.runInteraction(lease.take, LEASE_NAME, "b", "2098-12-31 23:59:59", "2099-01-01 00:11:00")
        self.assertEqual(held, lease.Holder("img2 pid 7", far))
        self.assertIsNone(await self.db.runInteraction(lease.take, LEASE_NAME, "b", far, "2099-01-01 00:11:00"))
        self.assertFalse(await self.db.runInteraction(lease.release, LEASE_NAME, "img2 pid 7"), "not its holder now")
        self.assertTrue(await self.db.runInteraction(lease.release, LEASE_NAME, "b"))
        await self.sync([system(1)])
        self.assertEqual(len(await self.devices()), 1)

    async def test_racing_servers_take_the_lease_once(self) -> None:
        """Two connection pools (two servers) racing for the lease, round after round: exactly
        one wins each round."""
        other = self.makeDatabase(self.db.url)
        for round in range(15):
            now = f"2026-11-30 12:{round:02d}:00"
            until = f"2026-11-30 12:{round:02d}:30"
            attempts = [db.runInteraction(lease.take, LEASE_NAME, f"{name}-{round}-{i}", now, until)
                        for i in range(3) for name, db in (("a", self.db), ("b", other))]
            results = await defer.gatherResults([d.addErrback(lambda f: "conflict") for d in attempts])
            self.assertEqual(sum(r is None for r in results), 1, results)


class FailingDatabase:
    """The test's database, whose ``fail_at``-th change transaction fails."""

    def __init__(self, db: Database, fail_at: int) -> None:
        self.db = db
        self.fail_at = fail_at
        self.calls = 0

    def runInteraction(self, fn: Any, *args: Any, **kw: Any) -> Any:
        from mozpool.inventory.queries import apply_change

        if fn is apply_change:
            self.calls += 1
            if self.calls == self.fail_at:
                return defer.fail(RuntimeError("the database went away"))
        return self.db.runInteraction(fn, *args, **kw)


SyncRunsSQLite, SyncRunsMariaDB = on_both_backends(SyncRuns)
