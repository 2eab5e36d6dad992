"""Success shapes of the read endpoints (exact keys), on SQLite and MariaDB."""

from __future__ import annotations

from typing import Any

from mozpool import __version__
from mozpool.db.pool import Cursor
from mozpool.web import openapi
from tests.support.dbtest import on_both_backends
from tests.web.support import APITest, B, A

LOG_KEYS = {"id", "timestamp", "source", "message"}
DEVICE_KEYS = {
    "id", "name", "fqdn", "inventory_id", "mac_address", "imaging_server", "relay_info", "state",
    "comments", "environment", "image", "boot_config", "request_id", "unreachable_since", "failure",
}
REQUEST_KEYS = {
    "id", "requested_device", "assignee", "expires", "environment", "image", "boot_config",
    "assigned_device", "url", "priority", "queue_timeout",
}
LIST_KEYS = {
    "id", "imaging_server", "assignee", "boot_config", "state", "expires", "requested_device",
    "environment", "assigned_device", "device_state", "device_status", "priority",
}


class Reads(APITest):
    async def test_version(self) -> None:
        got = await self.ok("GET", "/api/version/")
        self.assertEqual(got, {"version": __version__})

    async def test_device_list_names(self) -> None:
        got = await self.ok("GET", "/api/device/list/")
        self.assertEqual(
            got, {"devices": ["bpanda-0001", "bpanda-0002", "panda-0001", "panda-0002", "panda-0003"]}
        )

    async def test_device_list_details(self) -> None:
        rid = await self.add_request(device="panda-0002")
        for query in ("?details", "?details=1", "?details=true", "?details=0"):
            got = await self.ok("GET", "/api/device/list/" + query)
            self.assertEqual([d["name"] for d in got["devices"]][:3], ["bpanda-0001", "bpanda-0002", "panda-0001"])
            for d in got["devices"]:
                self.assertEqual(set(d), DEVICE_KEYS)
            byname = {d["name"]: d for d in got["devices"]}
            self.assertEqual(byname["panda-0002"]["request_id"], rid)
            self.assertIsNone(byname["panda-0001"]["request_id"])
            self.assertEqual(byname["bpanda-0001"]["imaging_server"], B)
            self.assertEqual(byname["panda-0001"]["imaging_server"], A)
            self.assertIsInstance(byname["panda-0001"]["id"], int)
            self.assertRegex(byname["panda-0001"]["mac_address"], "^[0-9a-f]{12}$")

    async def test_image_list(self) -> None:
        got = await self.ok("GET", "/api/image/list/")
        self.assertEqual([i["name"] for i in got["images"]], ["android", "b2g"])
        for image in got["images"]:
            self.assertEqual(set(image), {"id", "name", "boot_config_keys", "can_reuse", "hidden", "has_sut_agent"})
            self.assertIs(image["hidden"], False)
        self.assertEqual(got["images"][1]["boot_config_keys"], ["b2gbase"])

    async def test_environment_list(self) -> None:
        got = await self.ok("GET", "/api/environment/list/")
        self.assertEqual(got, {"environments": ["prod", "staging"]})

    async def test_pxe_configs(self) -> None:
        got = await self.ok("GET", "/api/bmm/pxe_config/list/")
        self.assertEqual(got["pxe_configs"], sorted(got["pxe_configs"]))
        self.assertIn("b2g-install", got["pxe_configs"])
        await self.db.runInteraction(lambda c: c.execute("UPDATE pxe_configs SET active = 0 WHERE name = 'maintenance'"))
        active = await self.ok("GET", "/api/bmm/pxe_config/list/?active_only")
        self.assertEqual(set(got["pxe_configs"]) - set(active["pxe_configs"]), {"maintenance"})
        details = await self.ok("GET", "/api/bmm/pxe_config/b2g-install/details/")
        self.assertEqual(set(details), {"details"})
        self.assertEqual(set(details["details"]), {"name", "description", "contents", "active"})
        self.assertEqual(details["details"]["name"], "b2g-install")
        self.assertIn("%IPADDRESS%", details["details"]["contents"])
        self.assertIs(details["details"]["active"], True)
        await self.error(404, "GET", "/api/bmm/pxe_config/nope/details/")

    async def test_device_status_and_log(self) -> None:
        for i in range(105):
            await self.add_log("device", "panda-0001", f"2013-04-02 17:0{i // 60}:{i % 60:02d}", f"line {i}")
        got = await self.ok("GET", "/api/device/panda-0001/status/")
        self.assertEqual(set(got), {"state", "log"})
        self.assertEqual(got["state"], "new")
        self.assertEqual(len(got["log"]), 100)
        self.assertEqual(got["log"][-1]["message"], "line 104")
        self.assertEqual(got["log"][0]["message"], "line 5")
        for entry in got["log"]:
            self.assertEqual(set(entry), LOG_KEYS)
        self.assertEqual(got["log"][-1]["timestamp"], "2013-04-02T17:01:44")
        full = await self.ok("GET", "/api/device/panda-0001/log/")
        self.assertEqual(len(full["log"]), 105)
        self.assertEqual(set(full), {"log"})
        limited = await self.ok("GET", "/api/device/panda-0001/log/?limit=3")
        self.assertEqual([e["message"] for e in limited["log"]], ["line 102", "line 103", "line 104"])
        zero = await self.ok("GET", "/api/device/panda-0001/log/?limit=0&timeperiod=0")
        self.assertEqual(len(zero["log"]), 105)

    async def test_log_timeperiod_uses_the_clock(self) -> None:
        # The API clock says 17:05:11.
        await self.add_log("device", "panda-0002", "2013-04-02 17:00:00", "old")
        await self.add_log("device", "panda-0002", "2013-04-02 17:05:00", "recent")
        got = await self.ok("GET", "/api/device/panda-0002/log/?timeperiod=60")
        self.assertEqual([e["message"] for e in got["log"]], ["recent"])
        self.clock.advance(3600)
        got = await self.ok("GET", "/api/device/panda-0002/log/?timeperiod=60")
        self.assertEqual(got["log"], [])
        got = await self.ok("GET", "/api/device/panda-0002/log/?timeperiod=7200&limit=1")
        self.assertEqual([e["message"] for e in got["log"]], ["recent"])

    async def test_device_state(self) -> None:
        got = await self.ok("GET", "/api/device/bpanda-0002/state/")
        self.assertEqual(got, {"state": "new"})

    async def test_state_cache(self) -> None:
        answer = await self.call("GET", "/api/device/panda-0001/state/?cache=1")
        self.assertEqual(answer.json(), {"state": "new"})
        self.assertEqual(answer.header("cache-control"), "public, max-age=6")
        self.assertEqual(answer.header("expires"), "Tue, 02 Apr 2013 17:05:16 GMT")
        await self.sql("UPDATE devices SET state = 'ready' WHERE name = 'panda-0001'")
        self.clock.advance(3)
        answer = await self.call("GET", "/api/device/panda-0001/state/?cache")
        self.assertEqual(answer.json(), {"state": "new"})  # still the snapshot
        self.assertEqual(answer.header("cache-control"), "public, max-age=3")
        fresh = await self.ok("GET", "/api/device/panda-0001/state/")
        self.assertEqual(fresh, {"state": "ready"})
        self.clock.advance(2)
        answer = await self.call("GET", "/api/device/panda-0001/state/?cache")
        self.assertEqual(answer.json(), {"state": "ready"})  # rebuilt after 5 s
        self.assertEqual(self.api.snapshot.builds, 2)
        self.assertIsNone((await self.call("GET", "/api/device/panda-0001/state/")).header("cache-control"))

    async def test_state_cache_answered_at_once_is_the_same_answer(self) -> None:
        """With a fresh snapshot the call skips the route (no coroutine, no Klein) and still
        answers byte for byte as the route does, counted under the route in /metrics."""
        path = "/api/device/panda-0001/state/?cache=1"
        routed = await self.call("GET", path)  # builds the snapshot
        calls: list[str] = []
        real_states = self.api.snapshot.states

        def states() -> Any:
            calls.append("routed")
            return real_states()

        self.patch(self.api.snapshot, "states", states)
        at_once = await self.call("GET", path)
        self.assertEqual(calls, [], "answered from memory")
        self.assertEqual((at_once.code, at_once.body), (routed.code, routed.body))
        for name in ("content-type", "cache-control", "expires"):
            self.assertEqual(at_once.header(name), routed.header(name), name)
        # Calls the fast path leaves to the route: an escaped name, a body, a name not in the
        # snapshot, another method.
        for method, target, body in [
            ("GET", "/api/device/panda%2D0001/state/?cache=1", None),
            ("GET", path, b"{}"),
            ("GET", "/api/device/panda-0404/state/?cache=1", None),
            ("POST", path, None),
        ]:
            calls.clear()
            await self.call(method, target, body)
            self.assertEqual(calls, [] if method == "POST" else ["routed"], (method, target, body))
        self.assertEqual((await self.call("GET", "/api/device/panda%2D0001/state/?cache=1")).body, routed.body)
        await self.error(413, "GET", path, b" " * (1024 * 1024 + 1))
        metrics = (await self.call("GET", "/metrics")).body.decode()
        self.assertIn('mozpool_http_requests_total{method="GET",route="/api/device/{device}/state/",status="200"} 5',
                      metrics)

    async def test_state_cache_misses_go_to_the_database(self) -> None:
        await self.ok("GET", "/api/device/panda-0001/state/?cache")

        def add(c: Cursor) -> None:
            c.execute(
                "INSERT INTO devices (name, fqdn, inventory_id, state, state_counters, mac_address,"
                " imaging_server_id, environment) SELECT 'panda-0099', 'x', 99, 'troubleshooting', '{}',"
                " '001122334455', imaging_server_id, 'prod' FROM devices WHERE name = 'panda-0001'"
            )

        await self.db.runInteraction(add)
        got = await self.ok("GET", "/api/device/panda-0099/state/?cache")
        self.assertEqual(got, {"state": "troubleshooting"})
        await self.error(404, "GET", "/api/device/panda-0100/state/?cache")
        self.assertEqual(self.api.snapshot.builds, 1)

    async def test_bootconfig(self) -> None:
        answer = await self.call("GET", "/api/device/panda-0001/bootconfig/")
        self.assertEqual((answer.code, answer.body), (200, b"{}"))
        self.assertEqual(answer.header("content-type"), "application/json; charset=utf-8")
        stored = '{"b2gbase":  "http://builds.example.com/b2g/"}'
        await self.sql("UPDATE devices SET next_boot_config = ? WHERE name = 'panda-0001'", (stored,))
        answer = await self.call("GET", "/api/device/panda-0001/bootconfig")
        self.assertEqual(answer.body, stored.encode())  # exactly as stored
        await self.sql("UPDATE devices SET next_boot_config = '' WHERE name = 'panda-0001'")
        self.assertEqual((await self.call("GET", "/api/device/panda-0001/bootconfig/")).body, b"{}")

    async def test_request_reads(self) -> None:
        open_id = await self.add_request(device="panda-0001", boot_config='{"b2gbase": "u"}', image="b2g")
        closed_id = await self.add_request(state="closed")
        failed_id = await self.add_request(server=B, state="failed_bad_image")
        got = await self.ok("GET", "/api/request/list/")
        self.assertEqual([r["id"] for r in got["requests"]], [open_id, failed_id])
        for r in got["requests"]:
            self.assertEqual(set(r), LIST_KEYS)
        first = got["requests"][0]
        self.assertEqual(first["assigned_device"], "panda-0001")
        self.assertEqual(first["device_state"], "new")
        self.assertEqual(first["device_status"], "new")
        self.assertEqual(first["expires"], "2013-04-02T18:05:11")
        self.assertEqual(got["requests"][1]["imaging_server"], B)
        self.assertEqual(got["requests"][1]["assigned_device"], "")
        every = await self.ok("GET", "/api/request/list/?include_closed=0")
        self.assertEqual([r["id"] for r in every["requests"]], [open_id, closed_id, failed_id])

        details = await self.ok("GET", f"/api/request/{open_id}/details/")
        self.assertEqual(set(details), REQUEST_KEYS)
        self.assertEqual(details["url"], f"http://{A}/api/request/{open_id}/")
        self.assertEqual(details["image"], "b2g")
        self.assertEqual(details["boot_config"], '{"b2gbase": "u"}')
        other = await self.ok("GET", f"/api/request/{failed_id}/details")
        self.assertEqual(other["url"], f"http://{B}/api/request/{failed_id}/")  # reads are local
        self.assertEqual(other["assigned_device"], "")

        await self.add_log("request", open_id, "2013-04-02 17:00:00", "old")
        await self.add_log("request", open_id, "2013-04-02 17:05:00", "entering state ready")
        status = await self.ok("GET", f"/api/request/{open_id}/status/")
        self.assertEqual(status["state"], "ready")
        self.assertEqual([e["message"] for e in status["log"]], ["old", "entering state ready"])
        log = await self.ok("GET", f"/api/request/{open_id}/log/?timeperiod=60")
        self.assertEqual([e["message"] for e in log["log"]], ["entering state ready"])
        log = await self.ok("GET", f"/api/request/{open_id}/log/?limit=1&limit=5")
        self.assertEqual([e["message"] for e in log["log"]], ["entering state ready"])
        empty = await self.ok("GET", f"/api/request/{closed_id}/log/")
        self.assertEqual(empty, {"log": []})
        leading = await self.ok("GET", f"/api/request/000{open_id}/details/")
        self.assertEqual(leading["id"], open_id)

    async def test_pool_summary(self) -> None:
        await self.sql("UPDATE devices SET state = 'ready' WHERE name IN ('panda-0001', 'panda-0002')")
        await self.sql("UPDATE devices SET state = 'failed_pxe_booting', comments = 'x' WHERE name = 'bpanda-0002'")
        await self.add_request(device="panda-0002")
        got = await self.ok("GET", "/api/pool/summary/")
        self.assertEqual(
            set(got), {"generated_at", "total", "by_category", "by_hardware_type", "failed_devices",
                       "failure_phases", "unreachable_servers"}
        )
        self.assertEqual(got["unreachable_servers"], [], "no server has sent a heartbeat yet: none is judged")
        self.assertEqual(got["generated_at"], "2013-04-02T17:05:11")
        self.assertEqual(got["total"], 5)
        self.assertEqual(got["by_category"], {"in_use": 1, "idle": 1, "processing": 2, "failed": 1})
        self.assertEqual(
            got["by_hardware_type"], {"panda": {"total": 5, "in_use": 1, "idle": 1, "processing": 2, "failed": 1}}
        )
        self.assertEqual(
            got["failed_devices"],
            [{"name": "bpanda-0002", "state": "failed_pxe_booting", "hardware_type": "panda",
              "imaging_server": B, "environment": "staging", "comments": "x", "failure": None}],
        )
        self.assertEqual(got["failure_phases"], {"unknown": 1}, "set behind the machines' back: no summary")

    async def test_openapi_served(self) -> None:
        got = await self.ok("GET", "/api/openapi.json")
        version = await self.ok("GET", "/api/version/")
        self.assertEqual(got["info"]["version"], version["version"])
        self.assertTrue(got["openapi"].startswith("3."))
        # one per route, and the events whose bodies differ spelled out (openapi.SPECIALISED)
        self.assertEqual(len(got["paths"]), 43 + len(openapi.SPECIALISED))

    async def test_metrics(self) -> None:
        await self.sql("UPDATE devices SET state = 'failed_pxe_booting' WHERE name = 'bpanda-0002'")
        await self.add_request(device="panda-0001", state="pending")
        await self.ok("GET", "/api/device/panda-0001/state/")
        await self.ok("GET", "/api/device/panda-0002/state/")
        await self.call("GET", "/api/nowhere/")
        answer = await self.call("GET", "/metrics")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("content-type"), "text/plain; version=0.0.4; charset=utf-8")
        lines = answer.body.decode().splitlines()
        self.assertIn(f'mozpool_build_info{{version="{__version__}"}} 1', lines)
        self.assertIn("mozpool_db_up 1", lines)
        self.assertIn('mozpool_devices{state="new"} 4', lines)
        self.assertIn('mozpool_devices_by_category{hardware_type="panda",category="failed"} 1', lines)
        self.assertIn('mozpool_devices_by_category{hardware_type="panda",category="in_use"} 1', lines)
        self.assertIn('mozpool_devices_by_category{hardware_type="panda",category="idle"} 0', lines)
        self.assertIn('mozpool_requests{state="pending"} 1', lines)
        self.assertIn(
            'mozpool_http_requests_total{method="GET",route="/api/device/{device}/state/",status="200"} 2', lines
        )
        self.assertIn("# TYPE mozpool_http_request_duration_seconds histogram", lines)
        self.assertFalse([ln for ln in lines if "panda-0001" in ln])
        slash = await self.call("GET", "/metrics/")
        self.assertEqual(slash.code, 200)


ReadsSQLite, ReadsMariaDB = on_both_backends(Reads)


