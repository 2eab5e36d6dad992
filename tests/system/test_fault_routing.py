"""An operator's fault injection: a fifth of the simulated pool always fails while downloading
Android.  Sequential `any` requests all end `ready` on healthy devices; the failing devices go
through `failed_android_downloading` (and its automatic self-test) instead of serving anyone."""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from tests.system.daemon import Daemon

#: The issue asks for 50 (about 4 minutes here); the suite runs 20 unless told otherwise.
REQUESTS = int(os.environ.get("MOZPOOL_SEQUENTIAL_REQUESTS", "20"))


class FaultRouting(TestCase):
    timeout = 600

    async def test_requests_route_around_failing_devices(self) -> None:
        failing = ["panda-0002", "panda-0007"]
        d = Daemon(self, fakes=10, extra_args=tuple(a for n in failing for a in ("--fail", f"{n}:android_downloading")))
        await d.start()
        await d.wait_ready()
        served: set[str] = set()
        for _ in range(REQUESTS):
            code, body = await d.request("any", duration=600)
            self.assertEqual(code, 200, body)
            rid = body["request"]["id"]
            self.assertEqual(await d.wait_request(rid, timeout=120), "ready")
            device = (await d.get(f"/api/request/{rid}/details/"))["assigned_device"]
            served.add(device)
            self.assertNotIn(device, failing)
            code, _ = await d.call("POST", f"/api/request/{rid}/return/")
            self.assertEqual(code, 204)
        self.assertGreater(len(served), 3, "requests spread over the healthy devices")
        tried = []
        for name in failing:
            log = (await d.get(f"/api/device/{name}/log/"))["log"]
            messages = [e["message"] for e in log]
            if any("please_image" in m or "android_downloading" in m for m in messages):
                tried.append(name)
                self.assertIn("entering state failed_android_downloading", messages)
        self.assertTrue(tried, "the failing devices were picked and failed at least once")
