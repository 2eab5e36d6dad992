"""Power through a real pdudaemon (from PyPI) driving simulated Tasmota plugs on loopback: the
pdudaemon driver against the real thing, and a mixed ``--fakes`` pool (ProXR boards and plugs
behind pdudaemon) whose devices power-cycle, image and serve requests alike."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from mozpool.bmm.pdudaemon import PdudaemonClient, PdudaemonTiming
from mozpool.fakes.smartplug import FakeTasmotaPlug, pdudaemon_config
from mozpool.fakes.pool import default_http_client
from tests.system.daemon import Daemon, free_board_ports, free_port
from tests.system.pdudaemon import PdudaemonProcess, require_pdudaemon


class DriverAgainstPdudaemon(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        require_pdudaemon()
        self.plug = FakeTasmotaPlug(reactor, relays=4)
        self.plug.start()
        self.addCleanup(self.plug.stop)
        self.plug_name = f"127.0.0.1:{self.plug.port}"
        config = pdudaemon_config({self.plug_name: self.plug.address, "gone": "127.0.0.1:9"}, "127.0.0.1", free_port(),
                                  retries=2, retrydelay=1)
        self.pdud = PdudaemonProcess(self, config)
        await self.pdud.start()
        self.client = PdudaemonClient(reactor, default_http_client(reactor), PdudaemonTiming(deadline=15, cycle_delay=1))
        self.outlet = f"pdudaemon://127.0.0.1:{self.pdud.port}/{self.plug_name}"

    async def test_on_off_cycle(self) -> None:
        result = await self.client.power_off(self.outlet + "/2")
        self.assertEqual((result.ok, result.note), (True, "no read-back"), result)
        self.assertFalse(self.plug.device_on(2))
        result = await self.client.power_on(self.outlet + "/2")
        self.assertTrue(result.ok, result)
        self.assertTrue(self.plug.device_on(2))
        changes: list[tuple[int, bool]] = []
        self.plug.add_listener(lambda outlet, on: changes.append((outlet, on)))
        start = reactor.seconds()
        result = await self.client.power_cycle(self.outlet + "/3")
        self.assertTrue(result.ok, result)
        self.assertEqual(changes, [(3, False), (3, True)])
        self.assertGreaterEqual(reactor.seconds() - start, 1.0, "pdudaemon's delay between off and on")
        self.assertEqual(self.plug.actions, [(2, "off"), (2, "on"), (3, "off"), (3, "on")])
        self.assertTrue((await self.client.test_controller(self.outlet)).ok)

    async def test_failures_map_to_outcomes(self) -> None:
        # A port the plug does not have, a PDU pdudaemon does not know, a plug that is gone:
        # pdudaemon's 500 after its retries.
        for location, fragment in ((self.outlet + "/9", "could not on"),
                                   (f"pdudaemon://127.0.0.1:{self.pdud.port}/nonesuch/1", "could not on"),
                                   (f"pdudaemon://127.0.0.1:{self.pdud.port}/gone/1", "could not on")):
            result = await self.client.power_on(location)
            self.assertFalse(result.ok, location)
            self.assertIn(fragment, result.reason)
            self.assertIn("HTTP 500 'Invalid request'", result.reason)
        # An outlet that does not switch: the driver sees the wrong state and gives up.
        self.plug.stuck.add(1)
        result = await self.client.power_off(self.outlet + "/1")
        self.assertFalse(result.ok)
        self.assertTrue(self.plug.device_on(1))

    async def test_hung_plug_and_pdudaemon_down(self) -> None:
        """A plug that never answers hangs pdudaemon's request: MozPool gives up at its deadline.
        A pdudaemon that is down: refused at once."""
        self.plug.hang = True
        client = PdudaemonClient(reactor, default_http_client(reactor), PdudaemonTiming(deadline=2))
        start = reactor.seconds()
        result = await client.power_off(self.outlet + "/1")
        self.assertFalse(result.ok)
        self.assertIn("timeout communicating with pdudaemon", result.reason)
        self.assertLess(reactor.seconds() - start, 4)
        await self.plug.stop()  # ends the hung request inside pdudaemon
        await self.pdud.stop()
        result = await client.power_on(self.outlet + "/1")
        self.assertEqual(result.reason, f"connection refused by pdudaemon at 127.0.0.1:{self.pdud.port}")
        self.assertFalse((await client.test_controller(self.outlet)).ok)


class MixedPool(TestCase):
    """``--fakes 8`` with ``[fakes] pdudaemon = 5``: three devices on a ProXR board, five on two
    plugs behind a real pdudaemon started first from the same configuration."""

    timeout = 240

    async def test_mixed_pool_serves_requests(self) -> None:
        require_pdudaemon()
        d = Daemon(self, fakes=8)
        plug_base = free_board_ports(2)
        while d.relay_base in (plug_base, plug_base + 1):
            plug_base = free_board_ports(2)
        pdud_port = free_port()
        with open(d.config_path, "a") as f:  # the file ends in its [fakes] section
            f.write(f"pdudaemon = 5\npdudaemon_url = http://127.0.0.1:{pdud_port}\nplug_base_port = {plug_base}\n")
        plugs = {f"127.0.0.1:{p}": f"127.0.0.1:{p}" for p in (plug_base, plug_base + 1)}
        pdud = PdudaemonProcess(self, pdudaemon_config(plugs, "127.0.0.1", pdud_port))
        await pdud.start()
        await d.start()
        await d.wait_ready(timeout=120)
        devices = {x["name"]: x for x in (await d.get("/api/device/list/?details"))["devices"]}
        self.assertEqual(devices["panda-0003"]["relay_info"], f"localhost:{d.relay_base}:bank1:relay3")
        self.assertEqual(devices["panda-0004"]["relay_info"], f"pdudaemon://127.0.0.1:{pdud_port}/127.0.0.1:{plug_base}/1")
        self.assertEqual(devices["panda-0008"]["relay_info"],
                         f"pdudaemon://127.0.0.1:{pdud_port}/127.0.0.1:{plug_base + 1}/1")
        # the daemon wrote the same pdudaemon configuration for its operator
        with open(os.path.join(d.dir, "pdudaemon-fakes.json")) as f:
            self.assertEqual(json.load(f)["pdus"], pdudaemon_config(plugs, "127.0.0.1", pdud_port)["pdus"])

        # One request for a device behind pdudaemon, one for a device on the board: both ready.
        requests = {}
        for name in ("panda-0007", "panda-0002"):
            code, body = await d.request(name, image="android")
            self.assertEqual(code, 200, body)
            requests[name] = body["request"]["id"]
        for name, rid in requests.items():
            self.assertEqual(await d.wait_request(rid, timeout=90), "ready", name)
        log = [e["message"] for e in (await d.get("/api/device/panda-0007/log/"))["log"]]
        self.assertIn("power-cycle succeeded (no read-back)", log)
        self.assertIn("power-cycle succeeded", [e["message"] for e in (await d.get("/api/device/panda-0002/log/"))["log"]])

        # The relay test works per controller: the board and the PDU.
        self.assertEqual(await d.get(f"/api/relay/localhost-{d.relay_base}/test/"), {"success": True})
        self.assertEqual(await d.get(f"/api/relay/127.0.0.1-{plug_base}/test/"), {"success": True})
        code, page = await d.call("GET", "/ui/lab")
        self.assertEqual(code, 200)
        self.assertIn(b'data-kind="pdudaemon PDU"', page)

        # A pdudaemon that goes away fails its devices' power cleanly; the board's go on.
        await pdud.stop()
        self.assertEqual(await d.call("GET", "/api/device/panda-0005/power-off/"), (200, {}))

        async def refused() -> bool:
            log = [e["message"] for e in (await d.get("/api/device/panda-0005/log/"))["log"]]
            return any(m.startswith("power-off failed: connection refused by pdudaemon") for m in log)

        await d.wait_for(refused, 30, "the refused power-off in the device's log")
        self.assertFalse((await d.get(f"/api/relay/127.0.0.1-{plug_base}/test/"))["success"])
        self.assertEqual(await d.get(f"/api/relay/localhost-{d.relay_base}/test/"), {"success": True})

