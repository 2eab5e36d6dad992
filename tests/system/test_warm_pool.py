"""The warm pool end to end (issue 14, item 3): a daemon with ``--fakes`` and ``[warm_pool]
android = 2`` images two idle devices ahead of demand, and a matching request is then handed one
of them as it is -- its log says so, and no please_* event is sent -- far faster than an
imaging."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.system.daemon import Daemon

WARMED = "warm pool: imaging with android ahead of demand"


class WarmPool(TestCase):
    timeout = 300

    async def messages(self, d: Daemon, kind: str, key: Any) -> list[dict[str, Any]]:
        return list((await d.get(f"/api/{kind}/{key}/log/"))["log"])

    async def test_warm_devices_serve_a_request_without_imaging(self) -> None:
        d = Daemon(self, fakes=4, time_scale=0.02, config="[warm_pool]\nandroid = 2\n")
        await d.start()

        async def warm() -> list[str] | None:
            devices = (await d.get("/api/device/list/?details"))["devices"]
            found = []
            for device in devices:
                if device["state"] != "ready" or device.get("image") != "android":
                    continue
                if any(WARMED in e["message"] for e in await self.messages(d, "device", device["name"])):
                    found.append(device["name"])
            return found if len(found) == 2 else None

        warmed = await d.wait_for(warm, 120, "two devices imaged with android ahead of demand")
        others = [n for n, s in (await d.device_states()).items() if n not in warmed]
        for name in others:
            self.assertFalse(any(WARMED in e["message"] for e in await self.messages(d, "device", name)),
                             "no more than the target was imaged")
        # How long an imaging took here: from the warm pool's please_image to ready (the mean of two).
        imaging = sum([_seconds(await self.messages(d, "device", n), WARMED, "entering state ready")
                       for n in warmed]) / 2

        started = reactor.seconds()
        code, body = await d.request("any", image="android")
        self.assertEqual(code, 200, body)
        rid = body["request"]["id"]
        self.assertEqual(await d.wait_request(rid, timeout=60), "ready")
        elapsed = reactor.seconds() - started

        device = (await d.get(f"/api/request/{rid}/details/"))["assigned_device"]
        self.assertIn(device, warmed)
        lines = [e["message"] for e in await self.messages(d, "request", rid)]
        self.assertIn(f"device {device} is pristine with image android: handed over without re-imaging", lines)
        self.assertFalse(any("please_" in m for m in lines), lines)
        self.assertLess(elapsed, imaging / 3, f"ready in {elapsed:.1f} s; an imaging took {imaging:.1f} s here")


def _seconds(log: list[dict[str, Any]], first: str, then: str) -> float:
    """Seconds between the first line containing ``first`` and the next containing ``then``."""
    from datetime import datetime

    def when(entry: dict[str, Any]) -> float:
        return datetime.fromisoformat(entry["timestamp"].rstrip("Z")).timestamp()

    start = next(i for i, e in enumerate(log) if first in e["message"])
    end = next(e for e in log[start:] if then in e["message"])
    return when(end) - when(log[start])
