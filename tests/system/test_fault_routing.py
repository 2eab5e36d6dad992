"""An operator's fault injection, the issue's "20% failure rate in one phase" both ways: two of
ten simulated devices always fail their Android download (``--fail``), and every other device
fails a fifth of its downloads (``[fakes] android_downloading = 0.2``).

Fifty sequential `any` requests all end `ready`, never on the two broken devices, which end in
`failed_android_downloading` (and LifeGuard's automatic self-test) when picked; the occasional
failures on the others are retried by LifeGuard on the same device."""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from tests.system.daemon import Daemon

#: ``MOZPOOL_SEQUENTIAL_REQUESTS`` makes the run shorter (each request takes about 4 s).
REQUESTS = int(os.environ.get("MOZPOOL_SEQUENTIAL_REQUESTS", "50"))


class FaultRouting(TestCase):
    timeout = 900

    async def test_requests_route_around_failing_devices(self) -> None:
        broken = ["panda-0002", "panda-0007"]
        d = Daemon(self, fakes=10, config="android_downloading = 0.2",
                   extra_args=tuple(a for n in broken for a in ("--fail", f"{n}:android_downloading")))
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
            self.assertNotIn(device, broken)
            code, _ = await d.call("POST", f"/api/request/{rid}/return/")
            self.assertEqual(code, 204)
        self.assertGreater(len(served), 3, "requests spread over the healthy devices")
        logs = {}
        for n in range(1, 11):
            name = f"panda-{n:04d}"
            logs[name] = [e["message"] for e in (await d.get(f"/api/device/{name}/log/"))["log"]]
        tried = [n for n in broken if any("please_image" in m or "android_downloading" in m for m in logs[n])]
        self.assertTrue(tried, "the broken devices were picked")
        for name in tried:
            self.assertIn("entering state failed_android_downloading", logs[name])
        retried = [n for n in served if "handling timeout on android_downloading" in logs[n]]
        self.assertTrue(retried, "a served device failed a download and LifeGuard retried it")
