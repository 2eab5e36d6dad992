"""Three imaging servers on a private 3-node MariaDB Galera cluster, each daemon on its own node
(labservers/galera.py): started together on an empty database (one creates the schema), two
rounds of concurrent ``any`` requests on all three with every request served and no device
ever held by two open requests, one daemon killed and reported down by the others within three
heartbeat intervals with new requests avoiding its devices, and a node cut off from the
cluster whose daemon answers 503 until the node rejoins.

Size: ``MOZPOOL_GALERA_FAKES`` simulated devices per daemon (default 20) and
``MOZPOOL_GALERA_REQUESTS`` requests per daemon per round (default 10), at time scale
``MOZPOOL_GALERA_TIME_SCALE`` (default 0.02)."""

from __future__ import annotations

import os
from collections import Counter

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from mozpool.liveness import DEAD_AFTER, HEARTBEAT_INTERVAL
from labservers.galera import describe, galeraCluster, galeraURLs
from tests.system.daemon import Daemon
from tests.system.test_no_double_assignment import connect, open_holders, settled
from tests.system.test_two_servers import daemon_errors, owned_devices, raw_call

FAKES = int(os.environ.get("MOZPOOL_GALERA_FAKES", "20"))
PER_ROUND = int(os.environ.get("MOZPOOL_GALERA_REQUESTS", "10"))
TIME_SCALE = float(os.environ.get("MOZPOOL_GALERA_TIME_SCALE", "0.02"))


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def three_daemons(test: TestCase, urls: list[str]) -> list[Daemon]:
    """One daemon per node, on distinct HTTP and TFTP ports; no relay-board port configured:
    each ``--fakes`` daemon picks its own."""
    for _ in range(20):
        ds = [Daemon(test, fakes=FAKES, db=url, time_scale=TIME_SCALE, board_ports=False) for url in urls]
        if len({d.port for d in ds}) == 3 and len({d.tftp_port for d in ds}) == 3:
            return ds
    raise AssertionError("no distinct ports for three daemons")


class GaleraServers(TestCase):
    timeout = 420

    async def test_three_servers_on_three_nodes(self) -> None:
        cluster = galeraCluster(self)
        urls = galeraURLs(self)
        daemons = three_daemons(self, urls)
        a, b, c = daemons
        began = reactor.seconds()
        # Started together on an empty database: whoever loses the race to create the schema
        # or to seed retries.
        await defer.gatherResults([defer.ensureDeferred(d.start(timeout=60)) for d in daemons])
        owned = await defer.gatherResults([defer.ensureDeferred(owned_devices(d, FAKES, 120)) for d in daemons])
        mine = {d.fqdn: set(names) for d, names in zip(daemons, owned)}
        self.assertEqual(len(set().union(*mine.values())), 3 * FAKES, "three pools, no name twice")
        startup = await settled(a, 240)
        ready = sorted(n for n, s in startup.items() if s == "ready")
        self.assertGreaterEqual(len(ready), 0.75 * 3 * FAKES, {n: s for n, s in startup.items() if s != "ready"})
        print(f"\ngalera: three pools of {FAKES} up in {reactor.seconds() - began:.0f} s; {len(ready)} ready")

        nodes = [connect(url) for url in urls]
        for conn in nodes:
            self.addCleanup(conn.close)
        with nodes[2].cursor() as cur:
            cur.execute("SELECT fqdn, COUNT(DISTINCT imaging_server_id) FROM relay_boards GROUP BY fqdn")
            boards = cur.fetchall()
        self.assertEqual([b for b in boards if b[1] != 1], [], "a relay board shared by two servers")
        self.assertEqual(len(boards), 3 * ((FAKES + 31) // 32))
        samples = Counter[int]()

        async def check(turn: int, servers: list[Daemon]) -> None:
            """Claims as one node sees them (each node in turn), and requests as one server's
            API lists them: never a device held by two open requests."""
            conn = nodes[turn % 3]
            with conn.cursor() as cur:
                cur.execute("SELECT device_id FROM device_requests GROUP BY device_id HAVING COUNT(*) > 1")
                self.assertEqual(cur.fetchall(), (), f"node {turn % 3 + 1}")
                cur.execute(
                    "SELECT dr.device_id FROM device_requests dr JOIN requests r ON r.id = dr.request_id"
                    " WHERE r.state <> 'closed' AND r.state NOT LIKE 'failed\\_%' GROUP BY dr.device_id"
                    " HAVING COUNT(*) > 1")
                self.assertEqual(cur.fetchall(), (), f"node {turn % 3 + 1}")
            requests = (await servers[turn % len(servers)].get("/api/request/list/"))["requests"]
            twice = [n for n, k in Counter(open_holders(requests)).items() if k > 1]
            self.assertEqual(twice, [])
            samples[turn % 3] += 1

        async def round_of_requests(servers: list[Daemon], avoid: frozenset[str] = frozenset()) -> dict[int, Daemon]:
            """PER_ROUND ``any`` requests on each server at once; every one ends ready."""
            async def create(d: Daemon, i: int) -> tuple[int, Daemon]:
                code, body = await d.request("any", duration=600, assignee=f"galera-{i}")
                self.assertEqual(code, 200, body)
                return body["request"]["id"], d

            made = await defer.gatherResults([
                defer.ensureDeferred(create(d, i)) for i in range(PER_ROUND) for d in servers])
            owner = dict(made)
            turn = 0
            deadline = reactor.seconds() + 150
            while True:
                await check(turn, servers)
                turn += 1
                states = {rid: await owner[rid].request_state(rid) for rid in owner}
                if all(s == "ready" or s.startswith("failed_") or s == "closed" for s in states.values()):
                    break
                self.assertLess(reactor.seconds(), deadline, f"requests not served: {states}")
                await sleep(0.2)
            self.assertEqual(Counter(states.values()), Counter(ready=len(owner)), "every request served")
            assigned = []
            for rid, d in owner.items():
                assigned.append((await d.get(f"/api/request/{rid}/details/"))["assigned_device"])
            self.assertEqual(len(set(assigned)), len(assigned), "distinct devices")
            self.assertEqual(set(assigned) & avoid, set(), "no device of a dead server")
            return owner

        for rnd in (1, 2):
            owner = await round_of_requests(daemons)
            for rid, d in owner.items():
                code, body = await d.call("POST", f"/api/request/{rid}/return/")
                self.assertEqual(code, 204, body)
            await check(rnd, daemons)
            await settled(a, 120)
        print(f"galera: two rounds of {3 * PER_ROUND} requests served; {sum(samples.values())} samples "
              f"{dict(samples)}")

        # One daemon dies: the others report it down within three heartbeat intervals, and new
        # requests keep off its devices.
        interval = HEARTBEAT_INTERVAL * TIME_SCALE
        await c.kill9()
        killed = reactor.seconds()

        async def reported_down(d: Daemon) -> bool:
            servers = {s["fqdn"]: s for s in (await d.get("/api/server/list/"))["servers"]}
            self.assertEqual(set(servers), {x.fqdn for x in daemons})
            self.assertEqual(servers[c.fqdn]["devices"], FAKES)
            return servers[c.fqdn]["alive"] is False and servers[a.fqdn]["alive"] and servers[b.fqdn]["alive"]

        seen: dict[str, float] = {}
        while len(seen) < 2 and reactor.seconds() - killed < 10 * interval + 5:
            for d in (a, b):
                if d.fqdn not in seen and await reported_down(d):
                    seen[d.fqdn] = reactor.seconds() - killed
            await sleep(0.02)
        print(f"galera: killed daemon reported down after {seen} s (heartbeat every {interval:.2f} s)")
        self.assertEqual(set(seen), {a.fqdn, b.fqdn})
        # Its last heartbeat came up to one interval before the kill; allow the polls' latency on a
        # busy machine (three daemons and three database nodes on two cores), as test_liveness does.
        self.assertLessEqual(max(seen.values()), DEAD_AFTER * interval + 2.0)
        await round_of_requests([a, b], avoid=frozenset(mine[c.fqdn]))

        # B's node leaves the primary component: B answers 503 (not stale rows) while A goes on;
        # once the node is back, B serves again and sees what A wrote meanwhile.
        node = cluster.nodes[1]
        node.isolate()
        start = reactor.seconds()
        code, headers, body = await raw_call(b, "GET", b.url + "/api/device/list/")
        self.assertEqual((code, headers.get("retry-after")), (503, ["5"]), (body, describe(cluster)))
        self.assertLess(reactor.seconds() - start, 11)
        code, _, _ = await raw_call(b, "GET", b.url + "/api/request/list/")
        self.assertEqual(code, 503)
        code, body = await a.request("any", duration=600, assignee="during-isolation")
        self.assertEqual(code, 200, body)
        rid = body["request"]["id"]
        node.rejoin()

        async def b_back() -> bool:
            code, _ = await b.call("GET", f"/api/request/{rid}/status/")
            return code == 200

        await b.wait_for(b_back, 30, "B to serve again")
        self.assertEqual((await b.get(f"/api/request/{rid}/details/"))["assignee"], "during-isolation")
        self.assertEqual(await a.wait_request(rid, timeout=120), "ready")
        log = b.log_text()
        self.assertIn("WSREP has not yet prepared node for application use", log)
        self.assertIn("database available again after", log)
        for d in (a, b):
            self.assertEqual(daemon_errors(d), [], d.log_path)
        print(f"galera: whole test {reactor.seconds() - began:.0f} s")
