"""The health endpoints of issue 15 through the HTTP API: history paging, why, boot times, the
/metrics families, and their 400s and 404s."""

from __future__ import annotations

from typing import Any

from mozpool.db import boots, history
from mozpool.health.explain import Explainer
from tests.support.dbtest import on_both_backends
from tests.web.support import A, APITest

HISTORY_KEYS = {"id", "timestamp", "machine", "device", "request", "from", "to", "cause", "server", "reason"}


class HealthAPI(APITest):
    async def _setUp(self) -> None:
        await super()._setUp()
        self.api = self.makeAPI(health=Explainer(self.db, self.clock))
        rows = await self.sql("SELECT id, name FROM devices")
        self.ids = {name: int(i) for i, name in rows}

    async def record(self, kind: str, object_id: int, old: str | None, new: str, ts: str, cause: str,
                     **reason: Any) -> None:
        await self.db.runInteraction(history.record, history.Entry(kind, object_id, ts, old, new, cause, A, reason))

    async def test_device_history_pages_newest_first(self) -> None:
        for n in range(5):
            await self.record("device", self.ids["panda-0001"], "sut_verifying", "sut_verifying",
                              f"2013-04-02 17:0{n}:00.125", "timeout", counter="sut_verifying", count=n + 1, limit=30)
        seen: list[int] = []
        path = "/api/device/panda-0001/history/?limit=2"
        while True:
            got = await self.ok("GET", path)
            self.assertEqual(set(got), {"history", "next_before"})
            self.assertLessEqual(len(got["history"]), 2)
            seen += [e["reason"]["count"] for e in got["history"]]
            if got["next_before"] is None:
                break
            path = f"/api/device/panda-0001/history/?limit=2&before={got['next_before']}"
        self.assertEqual(seen, [5, 4, 3, 2, 1])
        whole = await self.ok("GET", "/api/device/panda-0001/history")
        self.assertEqual(len(whole["history"]), 5)
        first = whole["history"][0]
        self.assertEqual(set(first), HISTORY_KEYS)
        self.assertEqual(
            {k: first[k] for k in HISTORY_KEYS - {"id"}},
            {"timestamp": "2013-04-02T17:04:00.125", "machine": "device", "device": "panda-0001", "request": None,
             "from": "sut_verifying", "to": "sut_verifying", "cause": "timeout", "server": A,
             "reason": {"counter": "sut_verifying", "count": 5, "limit": 30}},
        )
        self.assertEqual(len((await self.ok("GET", "/api/device/panda-0001/history/?limit=5000"))["history"]), 5)
        self.assertEqual((await self.ok("GET", "/api/device/panda-0002/history/")),
                         {"history": [], "next_before": None})

    async def test_request_history_holds_its_device_s_transitions(self) -> None:
        request_id = await self.add_request(device="panda-0002", state="pending")
        await self.record("request", request_id, "contacting_lifeguard", "pending", "2013-04-02 17:00:00",
                          "lifeguard_contacted")
        await self.record("device", self.ids["panda-0002"], "ready", "start_pxe_boot", "2013-04-02 17:00:01",
                          "please_image")
        await self.record("device", self.ids["panda-0003"], "ready", "start_self_test", "2013-04-02 17:00:02",
                          "failed")
        got = await self.ok("GET", f"/api/request/{request_id}/history/")
        self.assertEqual([(e["machine"], e["device"], e["request"], e["to"]) for e in got["history"]], [
            ("device", "panda-0002", request_id, "start_pxe_boot"),
            ("request", "panda-0002", request_id, "pending"),
        ])

    async def test_404s_and_400s(self) -> None:
        await self.error(404, "GET", "/api/device/nope/history/")
        await self.error(404, "GET", "/api/device/nope/history/?limit=x")  # the object first
        await self.error(404, "GET", "/api/device/panda-0001%20/history/")
        await self.error(404, "GET", "/api/request/999/history/")
        await self.error(404, "GET", "/api/request/99999999999999999999/history/")
        await self.error(400, "GET", "/api/request/x1/history/")
        await self.error(400, "GET", "/api/device/panda-0001/history/?limit=x")
        await self.error(400, "GET", "/api/device/panda-0001/history/?before=")
        await self.error(400, "GET", "/api/device/panda-0001/history/?before=-1")
        await self.error(404, "GET", "/api/device/nope/why/")
        await self.error(404, "GET", "/api/request/999/why/")
        await self.error(400, "GET", "/api/request/x1/why/")
        await self.error(400, "GET", "/api/pool/boots/?hours=x")
        await self.error(405, "POST", "/api/device/panda-0001/why/")

    async def test_why_of_a_device_with_no_history_yet(self) -> None:
        got = await self.ok("GET", "/api/device/panda-0001/why/")
        self.assertEqual((got["device"], got["state"], got["rule"], got["since"], got["failure"]),
                         ("panda-0001", "new", None, None, None))
        self.assertEqual(got["next"]["timeout_at"], "2013-04-02T17:05:11")
        self.assertEqual(got["next"]["in_seconds"], 0.0)
        self.assertEqual((got["next"]["on_timeout"]["input"], got["next"]["on_timeout"]["to"]),
                         ("timeout", "start_self_test"))
        self.assertEqual(got["power"]["controller"], "localhost:20001")

    async def test_why_of_a_request(self) -> None:
        request_id = await self.add_request(device="panda-0002", state="pending")
        await self.sql("UPDATE requests SET state_counters = ?, state_timeout = ?, requested_device = 'any'"
                       " WHERE id = ?", ('{"pending": 3}', "2013-04-02 17:06:11", request_id))
        await self.record("request", request_id, "contacting_lifeguard", "pending", "2013-04-02 17:05:00",
                          "lifeguard_contacted")
        got = await self.ok("GET", f"/api/request/{request_id}/why/")
        self.assertEqual((got["state"], got["since"], got["device"]),
                         ("pending", "2013-04-02T17:05:00", {"name": "panda-0002", "state": "new", "imaging_result": None}))
        self.assertEqual(got["counters"], [{"name": "pending", "value": 3, "limit": 20, "gives_up_at": 20}])
        self.assertEqual((got["next"]["timeout_at"], got["next"]["in_seconds"]), ("2013-04-02T17:06:11", 60.0))
        self.assertIn("imaging_overdue", [o["input"] for o in got["next"]["on_timeout"]["outcomes"]])
        self.assertIn("lifeguard_finished", [w["input"] for w in got["next"]["waiting_for"]])
        self.assertEqual(got["rule"]["rows"], [{"input": "lifeguard_contacted", "to": "pending",
                                                "when": "LifeGuard answered 200 to our please_* event, or is busy"
                                                        " with it already.", "does": ""}])

    async def test_why_needs_the_health_layer(self) -> None:
        self.api = self.makeAPI()
        await self.error(501, "GET", "/api/device/panda-0001/why/")
        await self.error(501, "GET", "/api/pool/boots/")
        self.assertNotIn("mozpool_boot_phase_seconds", (await self.call("GET", "/metrics")).body.decode())
        self.assertEqual((await self.ok("GET", "/api/device/panda-0001/history/"))["history"], [])

    async def test_boot_times_and_metrics(self) -> None:
        device = self.ids["panda-0001"]
        await self.db.runInteraction(boots.start, device, A, "2013-04-02 17:00:00")
        await self.db.runInteraction(boots.mark, device, "power_on", "2013-04-02 17:00:01.500")
        got = await self.ok("GET", "/api/pool/boots/?hours=2")
        self.assertEqual((got["generated_at"], got["hours"], got["since"]), ("2013-04-02T17:05:11", 2, "2013-04-02T15:05:11"))
        self.assertEqual(got["groups"], [{
            "image": "unknown", "hardware_type": "panda", "boots": 1, "outcomes": {"running": 1},
            "phases": {"power_cycle": {"count": 1, "p50": 1.5, "p95": 1.5, "max": 1.5, "sum": 1.5}},
        }])
        text = (await self.call("GET", "/metrics")).body.decode()
        self.assertIn('mozpool_boot_phase_seconds{image="unknown",hardware_type="panda",phase="power_cycle",'
                      'quantile="0.5"} 1.5', text)
        self.assertIn('mozpool_boots{image="unknown",hardware_type="panda",outcome="running"} 1', text)


HealthAPISQLite, HealthAPIMariaDB = on_both_backends(HealthAPI)
