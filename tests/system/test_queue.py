"""The request queue on a real daemon (issue 14): 30 requests on 6 devices are all served, as
devices are returned, in priority-then-fairness order; a priority-90 request overtakes waiting
priority-50 ones; a waiting request's status says where it stands and when it should be ready;
``queue_timeout`` fails a request with ``failed_device_busy``; an impossible request fails at
once."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tests.system.daemon import Daemon
from tests.system.test_two_servers import daemon_errors


class Queue(TestCase):
    timeout = 600

    async def start(self) -> Daemon:
        d = Daemon(self, fakes=6, time_scale=0.01)
        await d.start()
        await d.wait_ready()
        return d

    async def make(self, d: Daemon, assignee: str, priority: int = 50, **body: Any) -> dict[str, Any]:
        code, answer = await d.request("any", assignee=assignee, priority=priority, **body)
        self.assertEqual(code, 200, answer)
        return answer["request"]

    async def requests(self, d: Daemon) -> dict[int, dict[str, Any]]:
        return {r["id"]: r for r in (await d.get("/api/request/list/?include_closed"))["requests"]}

    async def test_served_in_priority_then_fairness_order(self) -> None:
        d = await self.start()
        holders = [await self.make(d, "holder") for _ in range(6)]
        for h in holders:
            self.assertEqual(await d.wait_request(h["id"], timeout=120), "ready")
        # 25 at priority 50 from three people, interleaved, then 5 at priority 90.
        waiting: dict[int, tuple[str, int]] = {}
        for i in range(25):
            who = ("alice", "alice", "bob", "carol", "alice")[i % 5]
            waiting[(await self.make(d, who))["id"]] = (who, 50)
        for _ in range(5):
            waiting[(await self.make(d, "dave", priority=90))["id"]] = ("dave", 90)
        # Every waiting request knows its place: dave's first, the newest priority-50 last.
        newest = max(i for i, (_, p) in waiting.items() if p == 50)
        places = {}
        for rid in waiting:
            status = await d.get(f"/api/request/{rid}/status/")
            self.assertEqual(status["state"], "finding_device")
            places[rid] = status["queue"]
        self.assertEqual(sorted(places[i]["position"] for i, (_, p) in waiting.items() if p == 90), [1, 2, 3, 4, 5])
        self.assertEqual(places[newest]["position"], 30)
        self.assertEqual(places[newest]["ahead"], 29)
        self.assertTrue(all(p["eta"] for p in places.values()), places)

        holding: list[tuple[int, str]] = [(h["id"], "holder") for h in holders]
        served: list[tuple[int, str, int]] = []
        while waiting:
            rid, _ = holding.pop(0)
            self.assertEqual(await d.wait_request(rid, timeout=120), "ready")
            code, _ = await d.call("POST", f"/api/request/{rid}/return/")
            self.assertEqual(code, 204)
            # Exactly one waiting request takes the device.
            chosen = await d.wait_for(lambda: self.newly_claimed(d, waiting), 60, "a waiting request claims it")
            self.assertEqual(len(chosen), 1, chosen)
            (pick,) = chosen
            who, priority = waiting[pick]
            top = max(p for _, p in waiting.values())
            self.assertEqual(priority, top, "the highest priority waiting is served first")
            held = Counter(a for _, a in holding)
            candidates = {a for a, p in waiting.values() if p == top}
            self.assertEqual(held[who], min(held[a] for a in candidates), (who, dict(held), candidates))
            self.assertEqual(pick, min(i for i, (a, p) in waiting.items() if a == who and p == top), "oldest first")
            served.append((pick, who, priority))
            del waiting[pick]
            holding.append((pick, who))
        self.assertEqual([p for _, _, p in served[:5]], [90] * 5)
        self.assertEqual(len(served), 30)
        self.assertEqual(daemon_errors(d), [], d.log_path)

    async def newly_claimed(self, d: Daemon, waiting: dict[int, Any]) -> list[int] | None:
        found = [rid for rid, r in (await self.requests(d)).items() if rid in waiting and r["assigned_device"]]
        return found or None

    async def test_queue_timeout_and_impossible_requests(self) -> None:
        d = await self.start()
        for _ in range(6):
            await self.make(d, "holder")
        started = reactor.seconds()
        # (5 s: long enough that the status read right after cannot come too late on a busy machine)
        waiter = await self.make(d, "late", queue_timeout=5)
        status = await d.get(f"/api/request/{waiter['id']}/status/")
        self.assertEqual(status["state"], "finding_device")
        self.assertEqual(await d.wait_request(waiter["id"], timeout=30), "failed_device_busy")
        self.assertGreaterEqual(reactor.seconds() - started, 5)
        log = [e["message"] for e in (await d.get(f"/api/request/{waiter['id']}/log/"))["log"]]
        self.assertIn("no device became free within the request's queue_timeout", log)

        nowhere = await self.make(d, "x", environment="nowhere")
        status = await d.get(f"/api/request/{nowhere['id']}/status/")
        self.assertEqual(status["state"], "failed_device_not_found", "at once, not after the timeout")
        self.assertIn("no device is in environment nowhere", [e["message"] for e in status["log"]])

        for bad in ({"priority": 101}, {"priority": -1}, {"queue_timeout": -5}, {"priority": "high"}):
            code, body = await d.request("any", assignee="x", **bad)
            self.assertEqual(code, 400, (bad, body))
        await task.deferLater(reactor, 0, lambda: None)
        self.assertEqual(daemon_errors(d), [], d.log_path)
