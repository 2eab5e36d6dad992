"""Many concurrent `any` requests against a pool shared by two real daemons on one MariaDB: no
device is ever held by two open requests, every request waits in the queue until it is served
(issue 14: 200 requests on 40 devices, all served; none fails), and the burst leaves no device
failed and nothing stuck (state-machines.md 2.3, 2.6).

Size: ``MOZPOOL_STRESS_REQUESTS`` requests against ``MOZPOOL_STRESS_DEVICES`` devices (half on
each server); the defaults keep the suite quick, e.g. ``MOZPOOL_STRESS_REQUESTS=1000
MOZPOOL_STRESS_DEVICES=200`` is the full run (``MOZPOOL_STRESS_TIME_SCALE``, default 0.02, scales
every state timeout and simulated delay).

Why 0.02: the POST to LifeGuard is bounded at 2/3 of contacting_lifeguard's scaled 30 s, i.e.
0.2 s at 0.01.  With timeouts taken on time, 50 creations at once on two cores make LifeGuard's
answer slower than that; the request then drops a device that is imaging for it (spec R2, by
design), and most of the run measures that rather than the races this test is about."""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.system.daemon import Daemon
from tests.system.test_two_servers import daemon_errors, two_servers

REQUESTS = int(os.environ.get("MOZPOOL_STRESS_REQUESTS", "200"))
DEVICES = int(os.environ.get("MOZPOOL_STRESS_DEVICES", "40"))
TIME_SCALE = float(os.environ.get("MOZPOOL_STRESS_TIME_SCALE", "0.02"))
#: Seconds a ready request is held: the client renews it to this, so the expiry poll frees it.
HOLD = (1, 3)
#: Requests being created at once (HTTP calls in flight).
CREATE_CONCURRENCY = 50
TERMINAL = ("closed", "failed_device_not_found", "failed_bad_image", "failed_bad_device", "failed_device_busy")
#: Seconds a request may wait for a device: long enough for every request of the burst.
QUEUE_TIMEOUT = 900


def connect(url: str) -> pymysql.connections.Connection:
    """A direct connection to the daemons' database, to look under the API."""
    parts = urlsplit(url)
    kw: dict[str, Any] = {}
    sockets = parse_qs(parts.query).get("unix_socket")
    if sockets:
        kw["unix_socket"] = sockets[0]
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1", port=parts.port or 3306, user=unquote(parts.username or ""),
        password=unquote(parts.password or ""), database=parts.path.lstrip("/"), autocommit=True,
        connect_timeout=5, read_timeout=30, **kw,
    )


def open_holders(requests: list[dict[str, Any]]) -> list[str]:
    """Devices named by requests that still hold them (neither closed nor failed)."""
    return [
        r["assigned_device"] for r in requests
        if r["assigned_device"] and r["state"] != "closed" and not r["state"].startswith("failed_")
    ]


class NoDoubleAssignment(TestCase):
    timeout = 900

    async def test_concurrent_any_requests_on_two_servers(self) -> None:
        per_server = DEVICES // 2
        a, b = await two_servers(self, fakes=per_server, time_scale=TIME_SCALE)
        servers = {a.fqdn: a, b.fqdn: b}
        # Start-up self-tests: every device settles, ready or (under heavy CPU load, when a timed-out
        # power cycle still runs later and reboots a device mid-self-test) failed_self_test.
        startup = await settled(a, 300)
        pool = sorted(n for n, s in startup.items() if s == "ready")
        self.assertGreaterEqual(len(pool), 0.75 * DEVICES, f"start-up failures: {failed(startup)}")
        db = connect(a.db)
        self.addCleanup(db.close)
        rng = random.Random(11)

        started = reactor.seconds()
        owner: dict[int, Daemon] = {}
        seen_ready: set[int] = set()
        renewing: list[defer.Deferred[Any]] = []
        figures = Counter[str]()
        max_holders = 0
        created = defer.Deferred[None]()

        async def sample(d: Daemon) -> list[dict[str, Any]]:
            nonlocal max_holders
            requests = (await d.get("/api/request/list/?include_closed"))["requests"]
            holders = open_holders(requests)
            twice = [name for name, n in Counter(holders).items() if n > 1]
            self.assertEqual(twice, [], f"devices held by two open requests at once: {twice}")
            max_holders = max(max_holders, len(holders))
            with db.cursor() as c:
                c.execute("SELECT device_id FROM device_requests GROUP BY device_id HAVING COUNT(*) > 1")
                self.assertEqual(c.fetchall(), ())
                c.execute(
                    "SELECT dr.device_id FROM device_requests dr JOIN requests r ON r.id = dr.request_id"
                    " WHERE r.state <> 'closed' AND r.state NOT LIKE 'failed\\_%' GROUP BY dr.device_id"
                    " HAVING COUNT(*) > 1"
                )
                self.assertEqual(c.fetchall(), ())
            figures["samples"] += 1
            for r in requests:
                if r["state"] == "ready" and r["id"] not in seen_ready:
                    # Hold it a moment, then let the expiry poll of its server free the device.
                    seen_ready.add(r["id"])
                    renewing.append(defer.ensureDeferred(
                        servers[r["imaging_server"]].call(
                            "POST", f"/api/request/{r['id']}/renew/", {"duration": rng.randint(*HOLD)})
                    ))
            return requests

        async def create(i: int) -> None:
            d = (a, b)[i % 2]
            code, body = await d.request("any", image="android", duration=3600, assignee=f"stress-{i}",
                                         queue_timeout=QUEUE_TIMEOUT)
            self.assertEqual(code, 200, body)
            owner[body["request"]["id"]] = d

        async def create_all() -> None:
            sem = defer.DeferredSemaphore(CREATE_CONCURRENCY)
            await defer.gatherResults(
                [sem.run(lambda i=i: defer.ensureDeferred(create(i))) for i in range(REQUESTS)], consumeErrors=True
            )

        creating = defer.ensureDeferred(create_all())
        creating.chainDeferred(created)
        turn = 0
        while True:
            requests = await sample((a, b)[turn % 2])
            turn += 1
            if created.called and len(owner) < REQUESTS:
                await created  # raises why a creation failed
            if created.called and len(owner) == REQUESTS:
                mine = [r for r in requests if r["id"] in owner]
                if len(mine) == REQUESTS and all(r["state"] in TERMINAL for r in mine):
                    break
            self.assertLess(reactor.seconds() - started, self.timeout - 60, "requests still open: stuck?")
            await task.deferLater(reactor, 0.2, lambda: None)
        await created
        elapsed = reactor.seconds() - started
        results = await defer.gatherResults(renewing, consumeErrors=True)
        self.assertEqual({code for code, _ in results} - {204}, set())

        # Every request ended ready (and then expired) or found no device in its budget.
        final = Counter(r["state"] for r in requests if r["id"] in owner)
        with db.cursor() as c:
            c.execute("SELECT DISTINCT request_id FROM request_logs WHERE message = 'entering state ready'")
            ever_ready = {int(row[0]) for row in c.fetchall()} & set(owner)
            c.execute("SELECT COUNT(*) FROM device_requests")
            (claims,) = c.fetchone()
        closed = {r["id"] for r in requests if r["id"] in owner and r["state"] == "closed"}
        print(
            f"\nno-double-assignment: {REQUESTS} requests, {DEVICES} devices: {len(ever_ready)} ready, "
            f"{final['failed_device_not_found']} failed_device_not_found, final states {dict(final)}, "
            f"wall {elapsed:.1f} s, max concurrent holders {max_holders}, {figures['samples']} samples"
        )
        self.assertEqual(set(final) - {"closed"}, set(), f"every request served, none failed: {final}")
        self.assertEqual(closed, ever_ready, "closed exactly when it had been ready")
        self.assertEqual(len(ever_ready), REQUESTS)
        self.assertEqual(seen_ready, ever_ready, "every ready request was seen ready (and renewed) by the test")
        self.assertEqual(claims, 0, "no claim left behind")
        self.assertGreater(len(ever_ready), 0)

        # Nothing stuck: every device ends ready or in a failed_ state LifeGuard chose, none in
        # the middle of an operation.
        try:
            end = await settled(a, 120)
        except AssertionError:
            states = await a.device_states()
            self.fail(f"devices stuck after the run: { {n: s for n, s in states.items() if not done(s)} }")
        print(f"no-double-assignment: devices failed at start-up {failed(startup)}, after the run {failed(end)}")
        self.assertEqual(set(failed(end)) - set(failed(startup)), set(), "the burst failed devices")
        for d in (a, b):
            self.assertEqual(daemon_errors(d), [], d.log_path)


def done(state: str) -> bool:
    return state == "ready" or state.startswith("failed_")


def failed(states: dict[str, str]) -> dict[str, str]:
    return {n: s for n, s in states.items() if s != "ready"}


async def settled(d: Daemon, timeout: float) -> dict[str, str]:
    """Device states once none is part-way through an operation."""

    async def check() -> dict[str, str] | None:
        states = await d.device_states()
        return states if all(done(s) for s in states.values()) else None

    return await d.wait_for(check, timeout, "every device ready or failed")
