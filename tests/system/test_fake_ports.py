"""Several `--fakes` daemons on one machine with no port configuration (issue 12): each seeds
devices under names of its own on boards whose ports nobody else uses, a board port found
busy at start-up is moved, never shared, and a busy smart-plug port (which cannot move) stops
the daemon with a clear error."""

from __future__ import annotations

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from mozpool.fakes.pool import loopback_location, loopback_plug
from labservers.mariadb import mariadbURL
from tests.system.daemon import Daemon
from tests.system.test_two_servers import daemon_errors, owned_devices


class NoClashes(TestCase):
    timeout = 240

    async def test_three_daemons_on_one_host(self) -> None:
        url = mariadbURL(self)
        daemons = [Daemon(self, fakes=3, db=url, time_scale=0.02, board_ports=False) for _ in range(3)]
        for d in daemons:
            await d.start()
            await owned_devices(d, 3)
        for d in daemons:
            await d.wait_ready()
        details = (await daemons[0].get("/api/device/list/?details"))["devices"]
        self.assertEqual(len(details), 9)
        self.assertEqual(len({x["name"] for x in details}), 9)
        ports_by_server: dict[str, set[int]] = {}
        for x in details:
            location = loopback_location(x["relay_info"])
            assert location is not None, x
            ports_by_server.setdefault(x["imaging_server"], set()).add(location[1])
        boards = [p for ports in ports_by_server.values() for p in ports]
        self.assertEqual(len(boards), len(set(boards)), f"no board port shared: {ports_by_server}")
        # every server's devices work: a request on each reaches ready
        for d in daemons:
            mine = next(x["name"] for x in details if x["imaging_server"] == d.fqdn)
            code, body = await d.request(mine)
            self.assertEqual(code, 200, body)
            self.assertEqual(await d.wait_request(body["request"]["id"]), "ready")
        for d in daemons:
            self.assertEqual(daemon_errors(d), [])

    async def test_a_busy_board_port_is_moved(self) -> None:
        d = Daemon(self, fakes=2, time_scale=0.02, board_ports=False)
        await d.start()
        await owned_devices(d, 2)
        await d.wait_ready()
        before = {loopback_location(x["relay_info"])[1] for x in (await d.get("/api/device/list/?details"))["devices"]}
        (port,) = before
        await d.stop()
        squatter = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(squatter.stopListening)
        await d.start()
        await owned_devices(d, 2)

        async def moved() -> set[int] | None:
            listed = (await d.get("/api/device/list/?details"))["devices"]
            now = {loopback_location(x["relay_info"])[1] for x in listed}
            return now if port not in now else None

        after = await d.wait_for(moved, 30, "the board to move")
        self.assertEqual(len(after), 1)
        self.assertIn(f"simulated relay board port {port} is in use by another process", d.log_text())
        code, body = await d.request("any")
        self.assertEqual(code, 200, body)
        self.assertEqual(await d.wait_request(body["request"]["id"]), "ready", "its devices still power-cycle")

    async def test_a_busy_plug_port_stops_the_daemon(self) -> None:
        """pdudaemon's configuration names a plug by its address, so a plug port another process
        holds is not moved: the daemon refuses to run, saying which port and why."""
        d = Daemon(self, fakes=2, time_scale=0.02, board_ports=False, config="pdudaemon = 1\n")
        await d.start()
        await owned_devices(d, 2)
        listed = (await d.get("/api/device/list/?details"))["devices"]
        plugs = [loopback_plug(x["relay_info"]) for x in listed]
        (plug,) = [p[2] for p in plugs if p is not None]
        await d.stop()
        squatter = await TCP4ServerEndpoint(reactor, plug, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(squatter.stopListening)
        try:
            await d.start()  # it may answer for a moment before the pool fails
        except AssertionError as e:
            self.assertIn("daemon exited", str(e))
        assert d.output is not None
        await d.output.ended.addTimeout(60, reactor)
        log = d.log_text()
        self.assertIn(f"simulated smart plug port {plug} is in use by another process", log)
        self.assertIn("the simulated pool cannot start", log)
