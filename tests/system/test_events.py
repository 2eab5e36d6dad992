"""``/api/events`` on real daemons: two imaging servers on one MariaDB each stream the other's
changes (one shared journal), a request's life arrives in order, and a reconnect with
``Last-Event-ID`` misses nothing."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.system.daemon import Daemon
from tests.system.test_two_servers import daemon_errors, two_servers


class EventReader:
    """A streaming GET of ``/api/events`` that parses events as they arrive."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self._buffer = b""
        self.done: defer.Deferred[Any] | None = None
        self.response: Any = None

    async def open(self, d: Daemon, query: str = "", last_event_id: int | None = None) -> "EventReader":
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        self.response = await treq.get(d.url + "/api/events" + query, headers=headers, pool=d.pool)
        assert self.response.code == 200, self.response.code
        self.done = treq.collect(self.response, self._received)
        self.done.addErrback(lambda f: None)
        return self

    def _received(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if ": " in line and not line.startswith(":"))
            if "event" in fields:
                self.events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))

    def close(self) -> None:
        transport = getattr(self.response.original, "_transport", None) if self.response else None
        if transport is not None:
            transport.loseConnection()

    async def wait(self, match: Any, timeout: float = 30, what: str = "event") -> tuple[int, str, dict[str, Any]]:
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            for event in self.events:
                if match(event):
                    return event
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"no {what} in {len(self.events)} events: {self.events[-10:]}")


class TwoServerEvents(TestCase):
    timeout = 240

    async def test_each_server_streams_the_whole_pool(self) -> None:
        a, b = await two_servers(self, fakes=4, time_scale=0.02)
        on_a = await EventReader().open(a)
        on_b = await EventReader().open(b, "?type=request_state,request_device")
        self.addCleanup(on_a.close)
        self.addCleanup(on_b.close)

        # An operator's edit on B's device reaches A's stream.
        b_device = (await b.get("/api/device/list/?details"))["devices"]
        b_device = next(x["name"] for x in b_device if x["imaging_server"] == b.fqdn)
        code, _ = await b.call("POST", f"/api/device/{b_device}/set-comments/", {"comments": "seen on A?"})
        self.assertEqual(code, 200)
        _, _, comment = await on_a.wait(lambda e: e[1] == "device_comments" and e[2]["device"] == b_device,
                                        what="B's comment on A's stream")
        self.assertEqual((comment["comments"], comment["imaging_server"]), ("seen on A?", b.fqdn))

        # A request made on A, its whole life seen on B's stream, in order.
        await a.wait_ready()
        await b.wait_ready()
        code, body = await a.request("any")
        self.assertEqual(code, 200, body)
        rid = body["request"]["id"]
        self.assertEqual(await a.wait_request(rid), "ready")
        await on_b.wait(lambda e: e[1] == "request_state" and e[2]["request"] == rid and e[2]["state"] == "ready",
                        what="the request's ready on B's stream")
        mine = [e for e in on_b.events if e[2].get("request") == rid]
        states = [e[2]["state"] for e in mine if e[1] == "request_state"]
        self.assertEqual(states[0], "new")
        self.assertEqual(states[-1], "ready")
        for earlier, later in zip(mine, mine[1:]):
            self.assertLess(earlier[0], later[0], "ids grow")
        for (_, _, before), (_, _, after) in zip(
            [e for e in mine if e[1] == "request_state"], [e for e in mine if e[1] == "request_state"][1:]
        ):
            self.assertEqual(after["old_state"], before["state"], "no state change missed")
        (claimed,) = [e[2]["device"] for e in mine if e[1] == "request_device" and e[2]["device"]][-1:]
        details = await a.get(f"/api/request/{rid}/details/")
        self.assertEqual(claimed, details["assigned_device"])

        # The device's log lines on A's stream, and a resumed stream replays what it missed.
        await on_a.wait(lambda e: e[1] == "device_log" and e[2]["device"] == claimed, what="the device's log")
        cut = on_a.events[len(on_a.events) // 2][0]
        resumed = await EventReader().open(a, last_event_id=cut)
        self.addCleanup(resumed.close)
        expected = [e for e in on_a.events if e[0] > cut]
        await resumed.wait(lambda e: e[0] == expected[-1][0], what="the replay")
        self.assertEqual(resumed.events[: len(expected)], expected)

        self.assertEqual(daemon_errors(a) + daemon_errors(b), [])
