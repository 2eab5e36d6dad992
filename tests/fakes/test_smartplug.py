"""The simulated Tasmota plug over loopback HTTP, exactly as pdudaemon's tasmota driver talks to
it, and the simulated pool with devices behind plugs."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from mozpool.db.fixtures import fake_device_rows, plug_controller
from mozpool.fakes.pool import DeviceRow, FakePool, loopback_plug
from mozpool.fakes.ports import board_ports, referenced_ports
from mozpool.fakes.smartplug import FakeTasmotaPlug, pdudaemon_config
from mozpool.inventory.rules import controller_name
from tests.system.daemon import free_port


class Plug(TestCase):
    timeout = 10

    async def setUp(self) -> None:
        self.plug = FakeTasmotaPlug(reactor, relays=4)
        self.plug.start()
        self.addCleanup(self.plug.stop)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.changes: list[tuple[int, bool]] = []
        self.plug.add_listener(lambda outlet, on: self.changes.append((outlet, on)))

    async def cmnd(self, command: str, **extra: str) -> tuple[int, Any]:
        # what pdudaemon's driver sends: requests.get(url, {"cmnd": "Power3 off"})
        response = await treq.get(f"http://{self.plug.address}/cm", params={"cmnd": command, **extra}, pool=self.pool,
                                  timeout=5)
        body = await response.content()
        try:
            return response.code, json.loads(body)
        except ValueError:
            return response.code, body

    async def test_switch_and_read(self) -> None:
        self.assertEqual(await self.cmnd("Power3 off"), (200, {"POWER3": "OFF"}))
        self.assertEqual(await self.cmnd("Power3"), (200, {"POWER3": "OFF"}))
        self.assertEqual(await self.cmnd("Power3 on"), (200, {"POWER3": "ON"}))
        self.assertEqual(await self.cmnd("Power3 toggle"), (200, {"POWER3": "OFF"}))
        self.assertEqual(await self.cmnd("Power 0"), (200, {"POWER": "OFF"}))
        self.assertEqual(self.changes, [(3, False), (3, True), (3, False), (1, False)])
        self.assertEqual(self.plug.state, {1: False, 2: True, 3: False, 4: True})

    async def test_unknown(self) -> None:
        for command in ("Power5 on", "Power0 on", "Status 0", "Power1 sideways"):
            self.assertEqual(await self.cmnd(command), (200, {"Command": "Unknown"}), command)
        self.assertEqual(self.changes, [])

    async def test_password(self) -> None:
        self.plug.password = "secret"
        code, body = await self.cmnd("Power1 off")
        self.assertIn("WARNING", body)
        self.assertEqual(await self.cmnd("Power1 off", user="admin", password="secret"), (200, {"POWER1": "OFF"}))

    async def test_faults(self) -> None:
        self.plug.stuck.add(2)
        self.assertEqual(await self.cmnd("Power2 off"), (200, {"POWER2": "ON"}), "a stuck outlet says it is still on")
        self.plug.error_status = 503
        self.assertEqual((await self.cmnd("Power1 off"))[0], 503)
        self.plug.error_status = None
        self.plug.hang = True
        d = self.cmnd("Power1 off")
        await self.plug.stop()
        with self.assertRaises(Exception):
            await d
        with self.assertRaises(ConnectionRefusedError):
            await self.cmnd("Power1 off")
        self.plug.hang = False
        self.plug.accept()
        self.assertEqual(await self.cmnd("Power1"), (200, {"POWER1": "ON"}))


class Configuration(SynchronousTestCase):
    def test_pdudaemon_config(self) -> None:
        config = pdudaemon_config({"127.0.0.1:20901": "127.0.0.1:20901"}, "127.0.0.1", 16500)
        self.assertEqual(config["daemon"], {"hostname": "127.0.0.1", "port": 16500, "logging_level": "INFO",
                                            "listener": "http"})
        self.assertEqual(config["pdus"], {"127.0.0.1:20901": {"driver": "tasmota", "ip": "127.0.0.1:20901",
                                                              "port_count": 4, "retries": 2, "retrydelay": 1}})

    def test_fixture_rows_behind_pdudaemon(self) -> None:
        rows = fake_device_rows(38, 1, 1, "now", relay_base_port=41001, pdudaemon=6, pdudaemon_address="127.0.0.1:16500",
                                plug_ports=[42001, 42002])
        infos = [r[8] for r in rows]
        self.assertEqual(infos[31], "localhost:41001:bank4:relay8")
        self.assertEqual(infos[32:], [f"pdudaemon://127.0.0.1:16500/127.0.0.1:{p}/{o}"
                                      for p, o in ((42001, 1), (42001, 2), (42001, 3), (42001, 4), (42002, 1), (42002, 2))])
        self.assertEqual(loopback_plug(infos[37]), ("127.0.0.1", 16500, 42002, 2))
        self.assertIsNone(loopback_plug("pdudaemon://pdud/pdu-1.lab/2"))
        self.assertIsNone(loopback_plug("localhost:41001:bank1:relay1"))
        self.assertEqual(board_ports(infos), {41001})
        self.assertEqual(referenced_ports(infos), {41001, 42001, 42002})

    def test_plug_rows_named_as_the_sync_names_them(self) -> None:
        name, fqdn = plug_controller("127.0.0.1:16500", 42001)
        self.assertEqual(controller_name(fqdn), name)


class PoolWithPlugs(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.board, self.plug = free_port(), free_port()
        self.rows = [
            DeviceRow("panda-0001", "panda-0001.fakes.mozpool.invalid", "020100000000",
                      f"localhost:{self.board}:bank1:relay1", "ready", "android"),
            DeviceRow("panda-0002", "panda-0002.fakes.mozpool.invalid", "020100000001",
                      f"pdudaemon://127.0.0.1:16500/127.0.0.1:{self.plug}/3", "ready", "android"),
            DeviceRow("pdu-0001", "pdu-0001.example.com", "020100000002",
                      "pdudaemon://pdud.example.com/pdu-1/3", "ready", "android"),
        ]
        self.path = os.path.abspath(self.mktemp())
        self.pool = FakePool(reactor, self.rows, api_url="http://127.0.0.1:9", tftp_address=("127.0.0.1", 9),
                             time_scale=0.001, rng=random.Random(1), board_options={"recovery_pause": 0.05},
                             pdudaemon_config_path=self.path)

    async def test_devices_follow_their_outlet(self) -> None:
        await self.pool.start()
        self.addCleanup(self.pool.stop)
        self.assertEqual(sorted(self.pool.boards), [self.board])
        self.assertEqual(sorted(self.pool.plugs), [self.plug])
        self.assertEqual(self.pool.skipped, ["pdu-0001"])
        with open(self.path) as f:
            written = json.load(f)
        self.assertEqual(written, self.pool.pdudaemon_config())
        self.assertEqual(written["daemon"]["port"], 16500)
        self.assertEqual(list(written["pdus"]), [f"127.0.0.1:{self.plug}"])
        plug, outlet = self.pool.plug_for("panda-0002")
        self.assertEqual(outlet, 3)
        self.assertTrue(self.pool.powered("panda-0002"))
        plug.command("Power3 off", {})
        self.assertEqual(self.pool.device("panda-0002").state, "off")
        self.assertFalse(self.pool.powered("panda-0002"))
        self.assertTrue(self.pool.powered("panda-0001"), "the board's device keeps its power")
        await self.pool.stop()
        self.assertEqual(self.pool.plugs, {})
