"""``[inventory]`` settings, and the daemon's timed sync: on the injected clock, surviving every
failure, skipping while another server holds the lease, cancelled (lease given back) at stop."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mozpool.config import ConfigError, load_config
from mozpool.inventory import lease
from mozpool.inventory.model import InventoryError
from mozpool.inventory.service import InventorySyncService
from mozpool.inventory.settings import InventorySettings
from mozpool.inventory.sync import LEASE_NAME
from tests.inventory.test_sync import ListSource, system
from tests.support.dbtest import DatabaseTest


class Settings(SynchronousTestCase):
    def load(self, text: str) -> InventorySettings:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[inventory]\n" + text)
        return load_config(path).inventory

    def test_defaults_and_source(self) -> None:
        self.assertFalse(load_config(None).inventory.configured)
        self.assertFalse(self.load("sync_interval = 60\n").configured)
        s = self.load("url = https://inventory.example.com/\nusername = u\npassword = p%w\nfilter = /^panda-\n")
        self.assertEqual((s.source, s.url, s.api, s.sync_interval, s.password, s.filter),
                         ("mozilla", "https://inventory.example.com", "bulk", 3600.0, "p%w", "/^panda-"))
        self.assertTrue(s.timed)
        self.assertNotIn("p%w", repr(s), "secrets stay out of reprs")
        self.assertFalse(self.load("url = https://i.example.com\nsync_interval = 0\n").timed)
        self.assertEqual(self.load("path = lab.csv\n").source, "file")
        n = self.load("source = NetBox\nurl = https://netbox.example.com\ntoken = t\nfilter = role=panda&site=a\n")
        self.assertEqual((n.source, n.relay_field, n.imaging_server_field, n.filter),
                         ("netbox", "mozpool_relay", "mozpool_imaging_server", "role=panda&site=a"))

    def test_bad_values(self) -> None:
        for text, message in (
            ("source = ldap\n", "source must be one of"),
            ("source = netbox\n", "url is required for source = netbox"),
            ("url = inventory.example.com\n", "url must start with https://"),
            ("source = file\n", "path is required"),
            ("url = https://i\napi = v2\n", "api must be bulk or paginated"),
            ("url = https://i\nsync_interval = hourly\n", "sync_interval must be a number"),
            ("url = https://i\nsync_interval = -5\n", "sync_interval must be a number"),
            ("url = https://i\nignore_devices_on_servers_re = (\n", "ignore_devices_on_servers_re"),
            ("url = https://i\nca_certs = /nonexistent.pem\n", "ca_certs: no such file"),
        ):
            e = self.assertRaises(ConfigError, self.load, text)
            self.assertIn(message, str(e), text)

    def test_template_documents_the_section(self) -> None:
        import mozpool

        dist = os.path.join(os.path.dirname(mozpool.__file__), "config.ini.dist")
        with open(dist) as f:
            text = f.read()
        for key in ("source", "url", "username", "password", "filter", "api", "sync_interval",
                    "ignore_devices_on_servers_re", "token", "relay_field", "imaging_server_field", "interface",
                    "domain", "path", "ca_certs"):
            self.assertRegex(text, rf"(?m)^#?{key} =", key)


class Wiring(SynchronousTestCase):
    def services(self, inventory: str) -> set[str]:
        from mozpool.tap import Options, makeService

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"[database]\nurl = sqlite:///{self.mktemp()}.sqlite\n[inventory]\n{inventory}")
        options = Options()
        options.parseOptions(["--config", path, "--port", "0", "--tftp-port", "0"])
        top = makeService(options)
        self.addCleanup(top.db.close)
        return {s.name for s in top}

    def test_the_daemon_syncs_only_when_configured(self) -> None:
        self.assertIn("inventory", self.services("url = https://inventory.example.com\nsync_interval = 600\n"))
        self.assertNotIn("inventory", self.services("url = https://inventory.example.com\nsync_interval = 0\n"))
        self.assertNotIn("inventory", self.services("sync_interval = 600\n"))


class Timed(DatabaseTest, TestCase):
    timeout = 60

    def make(self, source: Any, interval: float = 60) -> tuple[InventorySyncService, task.Clock]:
        clock = task.Clock()
        clock.advance(1_800_000_000)
        settings = InventorySettings(source="file", path="x", sync_interval=interval)
        service = InventorySyncService(self.db, settings, clock, "img1.example.com", lambda: source)
        return service, clock

    async def outcomes(self, service: InventorySyncService, n: int) -> list[str]:
        deadline = reactor.seconds() + 20  # the run's database work is on real threads
        while reactor.seconds() < deadline:
            if len(service.outcomes) >= n:
                return service.outcomes
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"only {service.outcomes}")

    async def test_runs_every_interval_and_survives_failures(self) -> None:
        source = ListSource([system(1), system(2)])
        service, clock = self.make(source)
        service.startService()
        self.addCleanup(service.stopService)
        clock.advance(0)
        self.assertEqual(await self.outcomes(service, 1), ["ok"], "a run at start")
        self.assertEqual(len(await self.db.query("SELECT id FROM devices")), 2)
        source.error = InventoryError("GET https://inventory: HTTP 502")
        clock.advance(60)
        self.assertEqual(await self.outcomes(service, 2), ["ok", "aborted"])
        source.error = ZeroDivisionError("a bug")
        clock.advance(60)
        self.assertEqual(await self.outcomes(service, 3), ["ok", "aborted", "failed"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        source.error = None
        source.systems = [system(n) for n in range(1, 20)]  # 17 inserts: timed runs never ship it
        clock.advance(60)
        self.assertEqual((await self.outcomes(service, 4))[-1], "aborted")
        source.systems = [system(1), system(3)]
        clock.advance(59)
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(service.outcomes), 4, "not before the interval")
        clock.advance(1)
        self.assertEqual((await self.outcomes(service, 5))[-1], "ok")
        self.assertEqual([r[0] for r in await self.db.query("SELECT name FROM devices ORDER BY name")],
                         ["panda-0001", "panda-0003"])

    async def test_skips_while_another_server_syncs(self) -> None:
        await self.db.runInteraction(lease.take, LEASE_NAME, "img2 pid 1", "2026-01-01 00:00:00", "2099-01-01 00:00:00")
        service, clock = self.make(ListSource([system(1)]))
        service.startService()
        self.addCleanup(service.stopService)
        clock.advance(0)
        self.assertEqual(await self.outcomes(service, 1), ["skipped"])
        self.assertEqual(await self.db.query("SELECT id FROM devices"), [])

    async def test_stop_cancels_the_run_and_gives_the_lease_back(self) -> None:
        source = ListSource([])
        source.never = True
        service, clock = self.make(source)
        service.startService()
        clock.advance(0)
        deadline = reactor.seconds() + 20
        while not await self.db.runInteraction(lease.holder_of, LEASE_NAME, "2000-01-01 00:00:00"):
            if reactor.seconds() > deadline:
                self.fail("the run never took the lease")
            await task.deferLater(reactor, 0.02, lambda: None)
        await defer.maybeDeferred(service.stopService)
        self.assertEqual(service.outcomes, ["cancelled"])
        self.assertIsNone(await self.db.runInteraction(lease.holder_of, LEASE_NAME, "2000-01-01 00:00:00"))
