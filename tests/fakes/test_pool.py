"""FakePool over real loopback wires: boards on the rows' own ports, power through the real
relay client, PXE configs through our TFTP server, events to a real HTTP server, SUT agents
reached through ``sut_address`` by the real SUT client."""

from __future__ import annotations

import os
import random
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from mozpool.bmm.pxe import clear_pxe_config, set_pxe_config
from mozpool.bmm.relay import RelayClient, RelayTiming
from mozpool.bmm.sut import SUTClient, SUTTimings
from mozpool.bmm.tftp import TFTPServer
from mozpool.db.fixtures import _PXE_TEMPLATE, fake_device_rows
from mozpool.fakes.device import FailureSettings
from mozpool.fakes.pool import DeviceRow, FakePool, FakePoolService, loopback_location, rows_for_server
from tests.support.polling import until

from .support import RecordingAPI

ANDROID = ["mobile_init_started", "android_downloading", "android_extracting", "android_rebooting"]
#: The client waits well past the boards' own recovery (they listen again at once here): with
#: equal pauses a board that noticed the close a little late (a loaded CI machine) was still
#: not listening when the next operation connected (CI saw "connection refused").
TIMING = RelayTiming.uniform(3.0, cycle_pause=0.05, recovery_pause=0.2, close_grace=0.2)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Once(Protocol):
    """Send one frame, collect whatever comes back until the peer closes or a byte arrives."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.reply: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.frame)

    def dataReceived(self, data: bytes) -> None:
        if not self.reply.called:
            self.reply.callback(data)
        self.transport.loseConnection()


class Rows(SynchronousTestCase):
    def test_loopback_location(self) -> None:
        self.assertEqual(loopback_location("localhost:40001:bank2:relay5"), ("localhost", 40001, 2, 5))
        self.assertEqual(loopback_location("127.0.0.1:40002:bank1:relay8"), ("127.0.0.1", 40002, 1, 8))
        self.assertIsNone(loopback_location("relay-3.example.com:bank2:relay5"))
        self.assertIsNone(loopback_location("localhost:bank2:relay5"), "no port: a real board")
        self.assertIsNone(loopback_location(None))
        self.assertIsNone(loopback_location("localhost:40001:bonk2:relay5"))

    def test_rows_from_details(self) -> None:
        details = [
            {"name": "a", "fqdn": "a.x", "mac_address": "020000000001", "relay_info": "localhost:1:bank1:relay1",
             "state": "ready", "image": "android", "imaging_server": "me"},
            {"name": "b", "fqdn": "b.x", "mac_address": "020000000002", "relay_info": "localhost:1:bank1:relay2",
             "state": "new", "image": None, "imaging_server": "other"},
        ]
        self.assertEqual(rows_for_server(details, "me"),
                         [DeviceRow("a", "a.x", "020000000001", "localhost:1:bank1:relay1", "ready", "android")])

    def test_fixture_layout(self) -> None:
        """The generated fixture's 40 devices land on two boards at its two ports."""
        rows = [DeviceRow(name=r[0], fqdn=r[1], mac=r[6], relay_info=r[8], state=r[3])
                for r in fake_device_rows(40, 1, 1, "now", relay_base_port=41001)]
        pool = FakePool(reactor, rows, api_url="http://127.0.0.1:1", tftp_address=("0.0.0.0", 6969), http=object())
        self.assertEqual(pool._board_ports, {41001, 41002})
        self.assertEqual(pool._locations["panda-0001"], (41001, 1, 1))
        self.assertEqual(pool._locations["panda-0032"], (41001, 4, 8))
        self.assertEqual(pool._locations["panda-0033"], (41002, 1, 1))
        self.assertEqual(pool.tftp_address, ("127.0.0.1", 6969))
        self.assertEqual(pool.simulated_ping("panda-0001.fakes.mozpool.invalid"), False, "not started: off")
        self.assertIsNone(pool.simulated_ping("elsewhere.example.com"))


class OverTheWires(TestCase):
    timeout = 30

    def setUp(self) -> None:
        # TFTP root with a PXE config per device, as LifeGuard writes it
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        tftp = reactor.listenUDP(0, TFTPServer(self.root, reactor, interface="127.0.0.1"), interface="127.0.0.1")
        self.addCleanup(tftp.stopListening)

        # the "daemon's API": records events, clears PXE at mobile_init_started as LifeGuard does
        self.api = RecordingAPI(on_event=self.lifeguard)
        site = Site(self.api)
        http = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(http.stopListening)

        self.ports = [free_port(), free_port()]
        self.rows = [
            DeviceRow("panda-0001", "panda-0001.fakes.mozpool.invalid", "020100000000",
                      f"127.0.0.1:{self.ports[0]}:bank1:relay1", "ready", "android"),
            DeviceRow("panda-0002", "panda-0002.fakes.mozpool.invalid", "020100000001",
                      f"127.0.0.1:{self.ports[0]}:bank1:relay2", "new", None),
            DeviceRow("panda-0033", "panda-0033.fakes.mozpool.invalid", "020100000020",
                      f"localhost:{self.ports[1]}:bank1:relay1", "ready", "b2g"),
            DeviceRow("real-0001", "real-0001.example.com", "020100000099",
                      "relay-1.example.com:bank1:relay1", "ready", "android"),
        ]
        self.pool = FakePool(
            reactor, self.rows,
            api_url=f"http://127.0.0.1:{http.getHost().port}",
            tftp_address=("0.0.0.0", tftp.getHost().port),
            time_scale=0.001,
            rng=random.Random(3),
            board_options={"recovery_pause": 0.0},
        )
        self.relays = RelayClient(reactor, TIMING)
        self.addCleanup(self.relays.drained)  # its recovery pause outlives each operation

    def lifeguard(self, device: str, event: str) -> None:
        if event == "mobile_init_started":
            clear_pxe_config(self.root, self.pool.device(device).mac)

    async def start(self) -> None:
        await self.pool.start()
        self.addCleanup(self.pool.stop)

    async def test_boards_listen_on_the_rows_ports(self) -> None:
        await self.start()
        self.assertEqual(sorted(self.pool.boards), sorted(self.ports))
        self.assertEqual(self.pool.skipped, ["real-0001"])
        status = await self.relays.get_status(self.rows[0].relay_info)
        self.assertTrue(status.ok, status)
        # the "localhost" board answers the two-way test on its own port
        proto = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[1]), _Once(bytes([254, 33])))
        self.assertEqual(await proto.reply, bytes([85]))

    async def test_start_up_and_ping(self) -> None:
        await self.start()
        ping = self.pool.simulated_ping
        self.assertIs(ping("panda-0001.fakes.mozpool.invalid"), True, "ready android: running")
        self.assertIs(ping("panda-0002.fakes.mozpool.invalid"), False, "new: hung")
        self.assertIs(ping("panda-0033.fakes.mozpool.invalid"), True, "ready b2g: running")
        self.assertIsNone(ping("real-0001.example.com"), "not simulated: really ping it")
        self.assertEqual(self.pool.sut_address("real-0001.example.com"), ("real-0001.example.com", 20701))

    async def test_sut_agent_through_sut_address(self) -> None:
        await self.start()
        client = SUTClient(reactor, SUTTimings(), address_for=self.pool.sut_address)
        host, port = self.pool.sut_address("panda-0001.fakes.mozpool.invalid")
        self.assertEqual(host, "127.0.0.1")
        self.assertNotEqual(port, 0)
        result = await client.verify("panda-0001.fakes.mozpool.invalid")
        self.assertTrue(result, result)
        result = await client.verify("panda-0002.fakes.mozpool.invalid")
        self.assertFalse(result, "a hung device runs no agent")

    async def test_power_follows_the_relay(self) -> None:
        await self.start()
        fqdn = "panda-0001.fakes.mozpool.invalid"
        result = await self.relays.power_off(self.rows[0].relay_info)
        self.assertTrue(result.ok, result)
        self.assertEqual(self.pool.device("panda-0001").state, "off")
        self.assertIs(self.pool.simulated_ping(fqdn), False)
        self.assertIs(self.pool.simulated_ping("panda-0002.fakes.mozpool.invalid"), False)
        self.assertEqual(self.pool.device("panda-0002").state, "failed", "the neighbour keeps its power")
        result = await self.relays.power_on(self.rows[0].relay_info)
        self.assertTrue(result.ok, result)
        await until(lambda: self.pool.device("panda-0001").state == "running_android", "panda-0001 running Android", 20, 0.02)
        self.assertIs(self.pool.simulated_ping(fqdn), True)

    async def test_android_install_over_the_wires(self) -> None:
        """Relay power cycle -> TFTP read of the PXE config -> events over HTTP -> SD boot."""
        await self.start()
        set_pxe_config(self.root, "020100000001", _PXE_TEMPLATE.format(stage="android-second-stage"), "127.0.0.1")
        result = await self.relays.power_cycle(self.rows[1].relay_info)
        self.assertTrue(result.ok, result)
        device = self.pool.device("panda-0002")
        await until(lambda: device.state == "running_android", "the device running Android", 20, 0.02)
        self.assertEqual(self.api.device_events("panda-0002"), ANDROID)
        self.assertEqual({m for (m, _, _) in self.api.events}, {"POST"})
        self.assertIs(self.pool.simulated_ping("panda-0002.fakes.mozpool.invalid"), True)
        client = SUTClient(reactor, SUTTimings(), address_for=self.pool.sut_address)
        await until(lambda: self.pool.agents["panda-0002"].listening, "panda-0002's agent listening", 20, 0.02)
        self.assertTrue(await client.verify("panda-0002.fakes.mozpool.invalid"))

    async def test_operator_fault_injection(self) -> None:
        self.pool.failures.set("android_extracting", 1.0, device="panda-0002")
        await self.start()
        set_pxe_config(self.root, "020100000001", _PXE_TEMPLATE.format(stage="android-second-stage"), "127.0.0.1")
        await self.relays.power_cycle(self.rows[1].relay_info)
        device = self.pool.device("panda-0002")
        await until(lambda: device.state == "running_corrupt", "the device running a corrupt image", 20, 0.02)
        self.assertEqual(self.api.device_events("panda-0002"), ANDROID[:3])
        self.assertEqual(device.injected_failures, 1)

    async def test_stop_releases_the_ports(self) -> None:
        await self.pool.start()
        agent_port = self.pool.sut_address("panda-0001.fakes.mozpool.invalid")[1]
        await self.pool.stop()
        for port in (self.ports[0], agent_port):
            with self.assertRaises(ConnectionRefusedError):
                await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())

    async def test_port_in_use_fails_start(self) -> None:
        blocker = reactor.listenTCP(self.ports[1], Site(self.api), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        with self.assertRaises(Exception):
            await self.pool.start()
        self.assertEqual(self.pool.boards, {})
        self.flushLoggedErrors()
        # the other board was closed again
        with self.assertRaises(ConnectionRefusedError):
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[0]), Protocol())

    async def test_service_reports_a_pool_that_cannot_start(self) -> None:
        """A port another process holds: the service hands the failure to ``on_failure`` (the
        tap stops the daemon with it) and is never ready."""
        blocker = reactor.listenTCP(self.ports[1], Site(self.api), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        reported: list[Any] = []
        service = FakePoolService(self.pool, on_failure=reported.append)
        service.startService()
        await until(lambda: bool(reported), "a report", 20, 0.02)
        self.assertIn("Couldn't listen", reported[0].getErrorMessage())
        self.assertFalse(service.ready.called)
        self.assertEqual(self.pool.boards, {})
        self.flushLoggedErrors()
        await service.stopService()

    async def test_service(self) -> None:
        made: list[Any] = []

        def make() -> Deferred[FakePool]:
            made.append(1)
            d: Deferred[FakePool] = Deferred()
            reactor.callLater(0, d.callback, self.pool)
            return d

        service = FakePoolService(make)
        self.assertIsNone(service.simulated_ping("panda-0001.fakes.mozpool.invalid"), "not running yet")
        service.startService()
        pool = await service.ready
        self.assertIs(pool, self.pool)
        self.assertIs(service.simulated_ping("panda-0001.fakes.mozpool.invalid"), True)
        self.assertEqual(service.sut_address("panda-0001.fakes.mozpool.invalid")[0], "127.0.0.1")
        await service.stopService()
        self.assertEqual(pool.boards, {})
        self.assertEqual(made, [1])


class Settings(SynchronousTestCase):
    def test_failures_shared_by_devices(self) -> None:
        rows = [DeviceRow("a", "a.x", "020000000001", "localhost:1:bank1:relay1")]
        settings = FailureSettings.original()
        pool = FakePool(reactor, rows, api_url="http://x", tftp_address=("127.0.0.1", 69), http=object(),
                        failures=settings)
        self.assertIs(pool.device("a").failures, settings)
