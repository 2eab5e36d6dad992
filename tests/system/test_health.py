"""Issue 15 with the simulated pool over real wires (``twistd -n mozpool --fakes``): one device that
always fails right after its live image starts is quarantined alone and says why; a request's
life is in its history; the PXE config reads of our own TFTP server and the live-boot events
make the boot times of /api/pool/boots/ and /metrics."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.system.daemon import Daemon

BROKEN = "panda-0002"


class Health(TestCase):
    timeout = 300

    async def test_a_device_failing_alone_and_a_request_s_life(self) -> None:
        d = Daemon(self, fakes=4, extra_args=("--fail", f"{BROKEN}:mobile_init_started"))
        await d.start()
        others = [f"panda-000{n}" for n in (1, 3, 4)]
        await d.wait_ready(others)

        async def quarantined() -> bool:
            return (await d.device_states())[BROKEN] == "failed_mobile_init_started"

        await d.wait_for(quarantined, 120, f"{BROKEN} quarantined")

        newest = (await d.get(f"/api/device/{BROKEN}/history/?limit=1"))["history"][0]
        self.assertEqual(
            {k: newest[k] for k in ("machine", "device", "request", "from", "to", "cause", "server", "reason")},
            {"machine": "device", "device": BROKEN, "request": None, "from": "mobile_init_started",
             "to": "failed_mobile_init_started", "cause": "timeout", "server": d.fqdn,
             "reason": {"counter": "mobile_init_started", "count": 11, "limit": 10}},
        )
        details = {x["name"]: x for x in (await d.get("/api/device/list/?details"))["devices"]}
        failure = details[BROKEN]["failure"]
        self.assertEqual(
            {k: failure[k] for k in ("state", "phase", "attempts", "reason")},
            {"state": "failed_mobile_init_started", "phase": "mobile_init_started", "attempts": 11,
             "reason": "mobile_init_started reached 11 (limit 10) (timeout in mobile_init_started)"},
        )
        self.assertEqual(failure["since"], newest["timestamp"])
        self.assertTrue(failure["evidence"], "the BMM's own lines about its last power cycle")
        self.assertTrue(all(details[n]["failure"] is None for n in others))
        summary = await d.get("/api/pool/summary/")
        self.assertEqual(summary["failure_phases"], {"mobile_init_started": 1})

        why = await d.get(f"/api/device/{BROKEN}/why/")
        self.assertEqual((why["state"], why["failure"], why["rule"]["history_id"]),
                         ("failed_mobile_init_started", failure, newest["id"]))
        self.assertEqual([(r["input"], r["to"]) for r in why["rule"]["rows"]],
                         [("timeout", "mobile_init_started"), ("over_limit", "failed_mobile_init_started")])
        self.assertEqual(why["counters"],
                         [{"name": "mobile_init_started", "value": 11, "limit": 10, "gives_up_at": 11}])
        self.assertEqual(sorted(e["id"] for e in why["evidence"]), failure["evidence"])
        self.assertIsNone(why["next"]["timeout_at"])

        code, body = await d.request("any", image="android")
        self.assertEqual(code, 200, body)
        request_id = body["request"]["id"]
        self.assertEqual(await d.wait_request(request_id, timeout=120), "ready")
        life = list(reversed((await d.get(f"/api/request/{request_id}/history/?limit=1000"))["history"]))
        mine = [(e["from"], e["to"]) for e in life if e["machine"] == "request"]
        self.assertEqual(mine[:2], [(None, "new"), ("new", "finding_device")])
        self.assertEqual(mine[-1], ("pending", "ready"))
        device = body["request"]["assigned_device"] or life[-1]["device"]
        theirs = [e for e in life if e["machine"] == "device"]
        self.assertIn("android_downloading", [e["to"] for e in theirs])
        self.assertEqual({e["device"] for e in theirs}, {device})
        self.assertEqual(theirs[-1]["to"], "ready")
        why = await d.get(f"/api/request/{request_id}/why/")
        self.assertEqual((why["state"], why["rule"]["cause"], why["device"]["name"]), ("ready", "imaging_complete", device))
        code, _ = await d.call("POST", f"/api/request/{request_id}/return/")
        self.assertEqual(code, 204)

        boots = await d.get("/api/pool/boots/")
        groups = {(g["image"], g["hardware_type"]): g for g in boots["groups"]}
        android = groups[("android", "panda")]
        self.assertEqual(android["outcomes"].get("complete"), 1)
        for phase in ("power_cycle", "pxe_fetch", "live_boot", "second_stage", "download", "extract", "reboot",
                      "sdcard_check", "total"):
            self.assertIn(phase, android["phases"], "each phase observed, the PXE fetch by our TFTP server")
        self.assertGreaterEqual(groups[("self-test", "panda")]["outcomes"].get("failed_mobile_init_started", 0), 1)
        code, text = await d.call("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertIn('mozpool_boot_phase_seconds_count{image="android",hardware_type="panda",phase="pxe_fetch"} 1',
                      text if isinstance(text, str) else text.decode())
        code, page = await d.call("GET", f"/ui/device/{BROKEN}")
        self.assertEqual(code, 200)
        self.assertIn(b"mobile_init_started reached 11 (limit 10)", page if isinstance(page, bytes) else page.encode())
