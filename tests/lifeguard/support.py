"""Test support for LifeGuard: a recording fake of the hardware and a base test on a real DB."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, task
from zope.interface import implementer

from mozpool.bmm.interfaces import DeviceInfo, IDeviceHardware
from mozpool.db import fixtures, logs
from mozpool.lifeguard.service import LifeGuard
from tests.support.dbtest import DatabaseTest

T0 = 1795694400.0  # 2026-11-26 12:00:00 UTC
NOW = "2026-11-26 12:00:00"
FQDN = "a.example.com"
OTHER = "b.example.com"
DEV = "panda-0001"


@implementer(IDeviceHardware)
class FakeHardware:
    """Records every call; Deferred operations wait for :meth:`complete`, unless ``auto`` names
    an answer to give at once."""

    OPS = ("power_cycle", "power_off", "ping", "sut_verify", "sut_sdcard_check")

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.pending: dict[str, list[defer.Deferred[bool]]] = {}
        self.auto: dict[str, bool] = {}

    def _op(self, op: str, device: DeviceInfo) -> "defer.Deferred[bool]":
        self.calls.append((op, device.name))
        if op in self.auto:
            return defer.succeed(self.auto[op])
        # Cancelling leaves the queue, as a real relay operation does when LifeGuard supersedes it.
        d: defer.Deferred[bool] = defer.Deferred(lambda d: self.pending[op].remove(d))
        self.pending.setdefault(op, []).append(d)
        return d

    def power_cycle(self, device: DeviceInfo) -> "defer.Deferred[bool]":
        return self._op("power_cycle", device)

    def power_off(self, device: DeviceInfo) -> "defer.Deferred[bool]":
        return self._op("power_off", device)

    def ping(self, device: DeviceInfo) -> "defer.Deferred[bool]":
        return self._op("ping", device)

    def sut_verify(self, device: DeviceInfo) -> "defer.Deferred[bool]":
        return self._op("sut_verify", device)

    def sut_sdcard_check(self, device: DeviceInfo) -> "defer.Deferred[bool]":
        return self._op("sut_sdcard_check", device)

    def set_pxe(self, device: DeviceInfo, contents: str) -> None:
        self.calls.append(("set_pxe", device.name, contents))

    def clear_pxe(self, device: DeviceInfo) -> None:
        self.calls.append(("clear_pxe", device.name))

    def ops(self) -> list[str]:
        return [c[0] for c in self.calls]

    def complete(self, op: str, result: bool = True) -> None:
        """Fire the oldest outstanding ``op``."""
        self.pending[op].pop(0).callback(result)

    def fail(self, op: str) -> None:
        self.pending[op].pop(0).errback(RuntimeError(f"{op} broke"))

    def outstanding(self, op: str) -> int:
        return len(self.pending.get(op, []))

    def reset(self) -> None:
        self.calls.clear()


class LifeGuardTest(DatabaseTest):
    """A pool of two pandas owned by ``FQDN`` and a LifeGuard driving them on a Clock."""

    time_scale = 1.0

    async def setUp(self) -> None:
        await super().setUp()
        self.clock = task.Clock()
        self.clock.advance(T0)
        await fixtures.load_fixture(self.db, FQDN, 2, NOW)
        await fixtures.load_fixture(self.db, OTHER, 1, NOW, prefix="other")
        await self.db.query("UPDATE devices SET state = 'ready', state_timeout = NULL")
        self.hw = FakeHardware()
        self.delivered: list[tuple[int, str, dict[str, Any]]] = []
        self.posted: list[defer.Deferred[Any]] = []
        self.lg = self.makeLifeGuard()

    def makeLifeGuard(self, hw: FakeHardware | None = None, http_client: Any = None, in_process: bool = True) -> LifeGuard:
        lg = LifeGuard(
            self.db,
            self.clock,
            hw or self.hw,
            FQDN,
            self.time_scale,
            http_client=http_client,
            request_events=self.request_event if in_process else None,
        )
        runner_post = lg.runner.post

        def post(key: str, event: str, args: dict[str, Any] | None = None) -> "defer.Deferred[Any]":
            d = runner_post(key, event, args)
            self.posted.append(d)
            return d

        lg.runner.post = post  # type: ignore[method-assign]
        self.driver = lg.driver
        return lg

    def request_event(self, request_id: int, event: str, body: dict[str, Any]) -> None:
        self.delivered.append((request_id, event, body))

    # -- driving ---------------------------------------------------------------------------

    async def settle(self) -> None:
        """Wait for every event posted by a side effect, and every notification in flight."""
        while self.posted or self.lg.results.inflight:
            while self.posted:
                await self.posted.pop(0)
            await self.lg.results.drain()

    async def event(self, name: str, args: dict[str, Any] | None = None, device: str = DEV) -> None:
        await self.lg.device_event(device, name, args or {})
        await self.settle()

    async def complete(self, op: str, result: bool = True) -> None:
        self.hw.complete(op, result)
        await self.settle()

    async def after(self, seconds: float) -> None:
        """Move the clock on and run one driver tick, as the LoopingCall would."""
        self.clock.advance(seconds)
        await self.driver.tick()
        await self.settle()

    async def put(self, state: str, counters: dict[str, int] | None = None, timeout: str | None = None,
                  device: str = DEV) -> None:
        """Store a state directly (no entry action), as a crash or an old row would leave it."""
        await self.db.query(
            "UPDATE devices SET state = ?, state_counters = ?, state_timeout = ? WHERE name = ?",
            (state, json.dumps(counters or {}), timeout, device),
        )

    async def enter(self, state: str, counters: dict[str, int] | None = None, device: str = DEV) -> None:
        """Store ``counters``, then enter ``state`` properly (deadline and entry action)."""
        await self.put("troubleshooting", counters, device=device)
        await self.lg.state_change(device, "troubleshooting", state)
        await self.settle()

    # -- reading ---------------------------------------------------------------------------

    async def state(self, device: str = DEV) -> str:
        return (await self.db.query("SELECT state FROM devices WHERE name = ?", (device,)))[0][0]

    async def deadline(self, device: str = DEV) -> str | None:
        return (await self.db.query("SELECT state_timeout FROM devices WHERE name = ?", (device,)))[0][0]

    async def counters(self, device: str = DEV) -> dict[str, int]:
        text = (await self.db.query("SELECT state_counters FROM devices WHERE name = ?", (device,)))[0][0]
        return json.loads(text)

    async def images(self, device: str = DEV) -> tuple[Any, ...]:
        """(image, boot_config, next_image, next_boot_config) by name."""
        return tuple(
            (
                await self.db.query(
                    "SELECT i.name, d.boot_config, n.name, d.next_boot_config FROM devices d"
                    " LEFT JOIN images i ON i.id = d.image_id LEFT JOIN images n ON n.id = d.next_image_id"
                    " WHERE d.name = ?",
                    (device,),
                )
            )[0]
        )

    async def set_images(self, image: str | None, boot_config: str | None, next_image: str | None = None,
                         next_boot_config: str | None = None, device: str = DEV) -> None:
        await self.db.query(
            "UPDATE devices SET image_id = (SELECT id FROM images WHERE name = ?), boot_config = ?,"
            " next_image_id = (SELECT id FROM images WHERE name = ?), next_boot_config = ? WHERE name = ?",
            (image, boot_config, next_image, next_boot_config, device),
        )

    async def messages(self, device: str = DEV) -> list[str]:
        device_id = (await self.db.query("SELECT id FROM devices WHERE name = ?", (device,)))[0][0]
        entries = await self.db.runInteraction(logs.get_log, "device", int(device_id), self.lg.runner.now())
        return [e["message"] for e in entries]

    async def claim(self, device: str = DEV, server: str = FQDN) -> int:
        """A request owned by ``server`` claiming ``device``; returns the request id."""

        def q(c: Any) -> int:
            server_id = c.scalar("SELECT id FROM imaging_servers WHERE fqdn = ?", (server,))
            image_id = c.scalar("SELECT id FROM images WHERE name = 'b2g'")
            c.execute(
                "INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id, boot_config,"
                " state, state_counters, environment) VALUES (?, 'any', 'me', ?, ?, '{}', 'pending', '{}', 'any')",
                (server_id, "2026-11-27 12:00:00", image_id),
            )
            request_id = c.lastrowid
            device_id = c.scalar("SELECT id FROM devices WHERE name = ?", (device,))
            c.execute("INSERT INTO device_requests (request_id, device_id) VALUES (?, ?)", (request_id, device_id))
            return int(request_id)

        return await self.db.runInteraction(q)

    async def imaging_result(self, device: str = DEV) -> str | None:
        rows = await self.db.query(
            "SELECT dr.imaging_result FROM device_requests dr JOIN devices d ON d.id = dr.device_id WHERE d.name = ?",
            (device,),
        )
        return rows[0][0] if rows else None

    async def drop_pxe_config(self, image: str) -> None:
        await self.db.query(
            "DELETE FROM image_pxe_configs WHERE image_id = (SELECT id FROM images WHERE name = ?)", (image,)
        )
