"""``mozpool-inventorysync`` as an operator runs it: a separate process, a real SQLite file, a
simulated inventory on loopback.  Exit codes, what is printed where, --dry-run, --ship-it."""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor, utils
from twisted.trial.unittest import TestCase

import mozpool
from mozpool.db import schema
from mozpool.db.pool import Database
from mozpool.fakes.inventory import FakeMozillaInventory, FakeNetBox
from mozpool.inventory import lease
from mozpool.inventory.sync import LEASE_NAME
from tests.inventory.support import SERVER, pandas, serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mozpool.__file__)))


class Command(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.url = f"sqlite:///{self.dir}/mozpool.sqlite"
        db = Database.fromURL(self.url, reactor)
        await schema.create_schema(db)
        db.close()
        self.fake = FakeMozillaInventory(reactor, pandas(4, SERVER), username="mozpool", password="s%cret")
        self.fake.systems[3].mac = None
        self.inventory = await serve(self, self.fake)
        self.configure(f"url = {self.inventory}\nusername = mozpool\npassword = s%cret\nfilter = /^panda-\n")

    def configure(self, inventory: str) -> None:
        self.config = os.path.join(self.dir, "mozpool.ini")
        with open(self.config, "w") as f:
            f.write(f"[database]\nurl = {self.url}\n[inventory]\n{inventory}")

    async def run_sync(self, *args: str) -> tuple[str, str, int]:
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("MOZPOOL_CONFIG", None)
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-m", "mozpool.cli.inventorysync", "--config", self.config, *args], env=env, path=self.dir)
        return out.decode(), err.decode(), code

    async def names(self) -> list[str]:
        db = Database.fromURL(self.url, reactor)
        try:
            return [r[0] for r in await db.query("SELECT name FROM devices ORDER BY name")]
        finally:
            db.close()

    async def test_dry_run_then_verbose_run(self) -> None:
        out, err, code = await self.run_sync("--dry-run")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.splitlines()[:4], [
            "insert device panda-0001.lab.example.com", "insert device panda-0002.lab.example.com",
            "insert device panda-0003.lab.example.com", "insert relay_board relay-1.lab.example.com",
        ])
        self.assertTrue(out.splitlines()[4].startswith("dry run, nothing changed: 3 devices listed, 1 systems skipped"))
        self.assertEqual(await self.names(), [])

        out, err, code = await self.run_sync("--verbose")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[:4], [
            "panda-0001.lab.example.com downloaded.", "panda-0002.lab.example.com downloaded.",
            "panda-0003.lab.example.com downloaded.",
            'panda-0004.lab.example.com SKIPPED - no MAC address (looking for SREG "nic0" with adapter "hw0")',
        ])
        self.assertIn("insert device panda-0001.lab.example.com", lines)
        self.assertEqual(await self.names(), ["panda-0001", "panda-0002", "panda-0003"])

        out, err, code = await self.run_sync()
        self.assertEqual((out, err, code), ("", "", 0), "quiet without --verbose")

    async def test_failsafe_and_ship_it(self) -> None:
        self.fake.systems = pandas(12, SERVER)
        out, err, code = await self.run_sync()
        self.assertEqual((out, code), ("", 1))
        self.assertEqual(err, "mozpool-inventorysync: 12 changes: pass --ship-it to make these changes\n")
        self.assertEqual(await self.names(), [])
        # A dry run shows what it would do, and says a real run would stop.
        out, err, code = await self.run_sync("--dry-run")
        self.assertEqual(code, 1)
        self.assertEqual(len([line for line in out.splitlines() if line.startswith("insert device")]), 12)
        self.assertIn("pass --ship-it", err)
        out, err, code = await self.run_sync("--ship-it")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(len(await self.names()), 12)

    async def test_aborted_runs_say_why(self) -> None:
        self.fake.fail = {2: 500}
        out, err, code = await self.run_sync()
        self.assertEqual(code, 1)
        self.assertIn("HTTP 500; nothing changed", err)
        self.fake.fail = {}
        self.assertEqual((await self.run_sync())[2], 0)
        self.fake.empty = True
        out, err, code = await self.run_sync()
        self.assertEqual(code, 1)
        self.assertIn("the inventory lists no devices (0 systems skipped): refusing to delete every device", err)
        self.assertEqual(len(await self.names()), 3)

    async def test_lease_held(self) -> None:
        db = Database.fromURL(self.url, reactor)
        await db.runInteraction(lease.take, LEASE_NAME, "img2.example.com pid 9", "2026-01-01 00:00:00", "2099-01-01 00:00:00")
        db.close()
        out, err, code = await self.run_sync()
        self.assertEqual(code, 1)
        self.assertIn("another inventory sync is running (img2.example.com pid 9, until 2099-01-01 00:00:00 UTC)", err)

    async def test_usage_and_configuration_errors(self) -> None:
        self.assertEqual((await self.run_sync("--bogus"))[2], 2)
        self.configure("source = ldap\n")
        out, err, code = await self.run_sync()
        self.assertEqual(code, 1)
        self.assertIn("[inventory] source must be one of mozilla, netbox, file", err)
        self.configure("")
        out, err, code = await self.run_sync()
        self.assertEqual(code, 1)
        self.assertIn("no inventory is configured", err)

    async def test_netbox_and_file_sources(self) -> None:
        netbox = FakeNetBox(reactor, pandas(3, SERVER), token="nbt_k.t")
        url = await serve(self, netbox)
        self.configure(f"source = netbox\nurl = {url}\ntoken = nbt_k.t\nfilter = role=panda\ndomain = lab.example.com\n")
        out, err, code = await self.run_sync("-v")
        self.assertEqual(code, 0, err)
        self.assertIn("panda-0003.lab.example.com downloaded.", out)
        self.assertEqual(await self.names(), ["panda-0001", "panda-0002", "panda-0003"])

        path = os.path.join(self.dir, "lab.csv")
        with open(path, "w") as f:
            f.write("hostname,inventory_id,mac,imaging_server,relay,hardware_type,hardware_model\n"
                    f"panda-0001.lab.example.com,1,02:00:00:00:00:01,{SERVER},relay-1.lab.example.com:bank1:relay1,"
                    "PandaBoard,ES\n")
        self.configure(f"path = {path}\n")
        out, err, code = await self.run_sync("-v")
        self.assertEqual(code, 0, err)
        self.assertIn("delete device panda-0002.lab.example.com", out)
        self.assertEqual(await self.names(), ["panda-0001"])
