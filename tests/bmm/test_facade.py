"""The BMM facade: outcomes logged against the device, PXE files, the API's BMM actions."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from mozpool.bmm import pxe
from mozpool.bmm.facade import BMMActions, Hardware, database_logger
from mozpool.bmm.relay import RelayResult
from mozpool.bmm.sut import SUTResult
from mozpool.db import fixtures, logs
from tests.support.dbtest import DatabaseTest, on_both_backends


class FakePower:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.result = RelayResult(True)

    def power_cycle(self, relay_info: Any) -> "defer.Deferred[RelayResult]":
        self.calls.append(("power_cycle", relay_info))
        return defer.succeed(self.result)

    def power_off(self, relay_info: Any) -> "defer.Deferred[RelayResult]":
        self.calls.append(("power_off", relay_info))
        return defer.succeed(self.result)

    def test_controller(self, controller: Any) -> "defer.Deferred[RelayResult]":
        self.calls.append(("test", controller))
        return defer.succeed(self.result)


class FakeSUT:
    def verify(self, fqdn: str, deviceLog: Any = None) -> "defer.Deferred[SUTResult]":
        deviceLog("connecting to SUT agent")
        return defer.succeed(SUTResult(False, "connection refused"))


class FakePinger:
    def ping(self, fqdn: str) -> "defer.Deferred[bool]":
        return defer.succeed(fqdn.startswith("panda-0001"))


class Facade(DatabaseTest):
    async def setUp(self) -> None:
        await super().setUp()
        await fixtures.load_fixture(self.db, "a.example.com", 2, "2026-11-26 12:00:00")
        self.clock = task.Clock()
        self.clock.advance(1795694400)
        self.root = self.mktemp()
        self.power = FakePower()
        self.hw = Hardware(self.power, FakePinger(), FakeSUT(), self.root, "10.0.0.5", database_logger(self.db, self.clock))
        self.bmm = BMMActions(self.db, self.hw)

    async def messages(self, device_id: int = 1) -> list[tuple[str, str]]:
        entries = await self.db.runInteraction(logs.get_log, "device", device_id, "2026-11-26 12:00:00")
        return [(e["source"], e["message"]) for e in entries]

    async def test_power_cycle_with_pxe(self) -> None:
        await self.bmm.power_cycle("panda-0001", "b2g-install", '{"b2gbase": "http://x/"}')
        await self.bmm.settle()
        self.assertEqual(self.power.calls, [("power_cycle", "localhost:20001:bank1:relay1")])
        text = pxe.read_pxe_config(self.root, "020100000000")
        self.assertIn("mobile-imaging-url=http://10.0.0.5/scripts/b2g-second-stage.sh", text)
        stored = await self.db.query("SELECT next_boot_config FROM devices WHERE name = 'panda-0001'")
        self.assertEqual(stored, [('{"b2gbase": "http://x/"}',)])
        self.assertEqual(
            set(await self.messages()),
            {("bmm", "PXE config set"), ("bmm", "power-cycle started"), ("bmm", "power-cycle succeeded")},
        )

    async def test_power_cycle_without_pxe_clears_file(self) -> None:
        pxe.set_pxe_config(self.root, "020100000000", "x", "1.1.1.1")
        self.power.result = RelayResult(False, "connection refused")
        await self.bmm.power_cycle("panda-0001", None, None)
        await self.bmm.settle()
        self.assertIsNone(pxe.read_pxe_config(self.root, "020100000000"))
        self.assertIn(("bmm", "power-cycle failed: connection refused"), await self.messages())

    async def test_success_note_logged(self) -> None:
        """A driver without read-back says so in the device's log."""
        self.power.result = RelayResult(True, note="no read-back")
        await self.bmm.power_off("panda-0001")
        await self.bmm.settle()
        self.assertIn(("bmm", "power-off succeeded (no read-back)"), await self.messages())

    async def test_ping_sut_and_relay_test(self) -> None:
        self.assertTrue(await self.bmm.ping("panda-0001"))
        self.assertFalse(await self.bmm.ping("panda-0002"))
        self.assertTrue(await self.bmm.relay_test("localhost-20001"))
        self.assertEqual(self.power.calls, [("test", "localhost:20001")])
        with self.assertRaises(LookupError):
            await self.bmm.relay_test("nope")
        from mozpool.bmm.interfaces import DeviceInfo

        ok = await self.hw.sut_verify(DeviceInfo("panda-0001", "panda-0001.x", "020100000000", None))
        self.assertFalse(ok)
        self.assertIn(("sut", "connecting to SUT agent"), await self.messages())
        self.assertEqual((await self.messages())[-1], ("sut", "SUT verify failed: connection refused"))


FacadeSQLite, FacadeMariaDB = on_both_backends(Facade)
