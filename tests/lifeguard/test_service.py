"""LifeGuard as the API and the tap use it: ILifeGuard, forced state changes (1.5), the service."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet import defer
from zope.interface.verify import verifyObject

from mozpool.lifeguard.service import LifeGuard
from mozpool.errors import UnknownObject
from mozpool.web.interfaces import ILifeGuard, StateMismatch
from tests.lifeguard.support import DEV, FQDN, LifeGuardTest
from tests.support.dbtest import on_both_backends


class Api(LifeGuardTest):
    async def test_provides_ilifeguard(self) -> None:
        self.assertTrue(verifyObject(ILifeGuard, self.lg))

    async def test_state_change_mismatch(self) -> None:
        with self.assertRaises(StateMismatch) as caught:
            await self.lg.state_change(DEV, "maintenance_mode", "troubleshooting")
        self.assertEqual(str(caught.exception), f"{DEV} is in state ready, not maintenance_mode")
        self.assertEqual((caught.exception.current, caught.exception.expected), ("ready", "maintenance_mode"))
        self.assertEqual(await self.state(), "ready")

    async def test_state_change_runs_a_full_goto(self) -> None:
        await self.lg.state_change(DEV, "ready", "pc_power_cycling")
        self.assertEqual(await self.state(), "pc_power_cycling")
        self.assertEqual(await self.deadline(), "2026-11-26 12:01:00")
        self.assertEqual(self.hw.ops(), ["clear_pxe", "power_cycle"])

    async def test_from_unknown_any_change_is_allowed(self) -> None:
        await self.put("unknown")
        await self.lg.state_change(DEV, "whatever", "locked_out")
        self.assertEqual(await self.state(), "locked_out")
        await self.put("free")  # an unrecognised stored name reads as unknown
        await self.lg.state_change(DEV, "ready", "troubleshooting")
        self.assertEqual(await self.state(), "troubleshooting")

    async def test_a_name_no_state_has_is_persisted_and_read_as_unknown(self) -> None:
        await self.lg.state_change(DEV, "ready", "bogus")
        self.assertEqual(await self.state(), "bogus")
        self.assertIsNone(await self.deadline())
        self.assertEqual(await self.lg.runner.current_state(DEV), "unknown")
        await self.event("please_power_cycle")
        self.assertEqual(await self.state(), "pc_power_cycling")

    async def test_unknown_device(self) -> None:
        with self.assertRaises(UnknownObject):
            await self.lg.device_event("nope", "please_power_cycle", {})
        with self.assertRaises(UnknownObject):
            await self.lg.state_change("nope", "ready", "ready")

    async def test_ignored_event_still_succeeds(self) -> None:
        self.assertIsNone(await self.lg.device_event(DEV, "b2g_rebooting", {}))
        self.assertIn("ignored event b2g_rebooting in state ready", await self.messages())


class Service(LifeGuardTest):
    async def test_make_service(self) -> None:
        service = LifeGuard(self.db, self.clock, self.hw, FQDN, 0.5).makeService()
        self.assertTrue(IService.providedBy(service))
        self.assertIsInstance(service.lifeguard, LifeGuard)  # type: ignore[attr-defined]
        self.assertEqual(service.lifeguard.driver.interval, 5.0)  # type: ignore[attr-defined]

    def count_ticks(self) -> list[defer.Deferred[None]]:
        """Deferreds fired as the driver's ticks finish, one per tick."""
        finished: list[defer.Deferred[None]] = [defer.Deferred() for _ in range(5)]
        original = self.lg.driver.tick
        count = [0]

        async def tick() -> None:
            await original()
            count[0] += 1
            finished[count[0] - 1].callback(None)

        self.lg.driver.tick = tick  # type: ignore[method-assign]
        return finished

    async def test_start_resumes_ticks_and_stops(self) -> None:
        await self.put("start_pxe_boot")
        await self.db.query("UPDATE devices SET next_image_id = (SELECT id FROM images WHERE name = 'b2g')")
        await self.put("new", timeout="2026-11-26 12:00:00", device="panda-0002")
        await self.put("new", timeout="2026-11-26 12:00:00", device="other-0001")
        ticks = self.count_ticks()
        service = self.lg.makeService()
        service.startService()
        await ticks[0]
        await service.stopService()
        await self.settle()
        self.assertEqual(await self.state(), "pxe_power_cycling", "resumed")
        self.assertEqual(await self.state("panda-0002"), "pxe_power_cycling", "first tick: new -> self-test")
        self.assertEqual(await self.state("other-0001"), "new", "another server's device")
        self.assertFalse(service.running)

    async def test_stopping_starts_no_more_timeouts(self) -> None:
        """A stop that comes while the tick is still listing due machines: the tick ends
        without touching them, and the stop waits for it."""
        await self.put("new", timeout="2026-11-26 12:00:00")
        service = self.lg.makeService()
        service.startService()
        await service.stopService()
        await self.settle()
        self.assertEqual(await self.state(), "new")
        self.assertFalse(service.running)

    async def test_the_loop_runs_on_the_injected_clock(self) -> None:
        ticks = self.count_ticks()
        await self.put("new", timeout="2026-11-26 12:00:05")
        service = self.lg.makeService()
        service.startService()
        await ticks[0]
        self.assertEqual(await self.state(), "new", "not due at the first tick")
        self.clock.advance(10)
        await ticks[1]
        await service.stopService()
        await self.settle()
        self.assertEqual(await self.state(), "pxe_power_cycling")


ApiSQLite, ApiMariaDB = on_both_backends(Api)
ServiceSQLite, ServiceMariaDB = on_both_backends(Service)
