"""The daemon's log to a real rsyslogd over UDP on loopback: RFC 5424 lines with the configured
facility and the device in structured data; syslog gone for 10 s costs the daemon nothing, and
lines flow again when it is back."""

from __future__ import annotations

import socket

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tests.support.rsyslog import PrivateRsyslog
from tests.system.daemon import Daemon, free_port


class Syslog(TestCase):
    timeout = 180

    async def test_lines_reach_rsyslog_and_survive_its_absence(self) -> None:
        port = free_port(socket.SOCK_DGRAM)
        rsyslog = PrivateRsyslog(self.mktemp(), port)
        await rsyslog.start()
        self.addCleanup(rsyslog.stop)
        d = Daemon(self, fakes=2, config=f"[logging]\nsyslog = udp:127.0.0.1:{port}\nfacility = local4\n")
        await d.start()
        await d.wait_ready()

        async def seen(predicate, what):  # type: ignore[no-untyped-def]
            for _ in range(200):
                found = [line for line in rsyslog.lines() if predicate(line)]
                if found:
                    return found
                await task.deferLater(reactor, 0.1, lambda: None)
            self.fail(f"no {what} in {rsyslog.lines()[-20:]}")

        device_lines = await seen(lambda l: 'device="panda-0001"' in l, "device line")
        facility, severity, app = device_lines[0].split(" ")[:3]
        self.assertEqual((facility, app), ("local4", "mozpool"))
        self.assertIn(severity, ("info", "warning", "notice"))
        self.assertTrue(all(line.startswith("local4 ") for line in rsyslog.lines()))

        # syslog goes away for 10 s: requests are still served
        await rsyslog.stop()
        before = len(rsyslog.lines())
        started = reactor.seconds()
        code, body = await d.request("any")
        self.assertEqual(code, 200, body)
        rid = body["request"]["id"]
        self.assertEqual(await d.wait_request(rid), "ready")
        await task.deferLater(reactor, max(0.0, 10 - (reactor.seconds() - started)), lambda: None)
        self.assertEqual(len(rsyslog.lines()), before)

        # back: new lines arrive
        await rsyslog.start()
        code, _ = await d.call("POST", f"/api/request/{rid}/return/")
        self.assertEqual(code, 204)
        await seen(lambda l: f'request="{rid}"' in l and "closed" in l, "the return")
        assert d.output is not None
        self.assertFalse(d.output.ended.called, "the daemon is still running")
