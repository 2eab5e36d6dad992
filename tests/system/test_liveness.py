"""Server liveness on real daemons: two servers on one MariaDB; one is killed -9; the other
reports it down within three heartbeat intervals, `any` requests avoid its devices, and a
request naming one of them fails at once with the reason in its log."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from mozpool.liveness import DEAD_AFTER, HEARTBEAT_INTERVAL
from tests.system.test_two_servers import daemon_errors, two_servers

TIME_SCALE = 0.05


class ServerLiveness(TestCase):
    timeout = 240

    async def test_a_dead_server_is_seen_and_avoided(self) -> None:
        a, b = await two_servers(self, fakes=3, time_scale=TIME_SCALE)
        await a.wait_ready()
        await b.wait_ready()

        async def alive() -> dict[str, bool]:
            return {s["fqdn"]: s["alive"] for s in (await a.get("/api/server/list/"))["servers"]}

        self.assertEqual(await a.wait_for(lambda: _all_alive(alive), 10, "both alive"), True)
        b_devices = [x["name"] for x in (await a.get("/api/device/list/?details"))["devices"]
                     if x["imaging_server"] == b.fqdn]

        await b.kill9()
        killed = reactor.seconds()

        async def b_dead() -> bool:
            return (await alive()).get(b.fqdn) is False

        await a.wait_for(b_dead, 30, "B reported down")
        bound = DEAD_AFTER * HEARTBEAT_INTERVAL * TIME_SCALE
        self.assertLess(reactor.seconds() - killed, bound + 2.0, "within three intervals (and a poll)")
        details = {x["name"]: x for x in (await a.get("/api/device/list/?details"))["devices"]}
        self.assertTrue(all(details[n]["unreachable_since"] for n in b_devices))
        summary = await a.get("/api/pool/summary/")
        self.assertEqual([s["fqdn"] for s in summary["unreachable_servers"]], [b.fqdn])

        # `any` requests get A's devices only (A has 3: ask for 3)
        got = []
        for _ in range(3):
            code, body = await a.request("any")
            self.assertEqual(code, 200, body)
            got.append(body["request"]["id"])
        for rid in got:
            self.assertEqual(await a.wait_request(rid), "ready")
            device = (await a.get(f"/api/request/{rid}/details/"))["assigned_device"]
            self.assertNotIn(device, b_devices)

        # a request naming B's device fails at once, saying why
        code, body = await a.request(b_devices[0])
        self.assertEqual(code, 200, body)
        rid = body["request"]["id"]
        self.assertEqual(await a.wait_request(rid, timeout=10), "failed_device_not_found")
        log = " ".join(e["message"] for e in (await a.get(f"/api/request/{rid}/log/"))["log"])
        self.assertIn(f"belongs to imaging server {b.fqdn}, which has not been heard from since", log)
        self.assertEqual(daemon_errors(a), [])


async def _all_alive(alive):  # type: ignore[no-untyped-def]
    states = await alive()
    return len(states) == 2 and all(states.values())
