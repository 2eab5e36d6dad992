"""The real daemon (`twistd -n mozpool --fakes N`) on free loopback ports, driven only through
HTTP: the pool comes up, requests reach `ready`, conflicts, return, expiry, failing devices,
crash safety, a database outage."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from labservers.mariadb import mariadbServer, mariadbURL
from tests.system.daemon import Daemon


class SimulatedPool(TestCase):
    timeout = 180

    async def test_pool_request_return(self) -> None:
        d = Daemon(self, fakes=4)
        await d.start()
        await d.wait_ready()
        start = reactor.seconds()
        code, body = await d.request("any", image="android")
        self.assertEqual(code, 200, body)
        rid = body["request"]["id"]
        self.assertEqual(await d.wait_request(rid), "ready")
        self.assertLess(reactor.seconds() - start, 30, "android at --time-scale 0.01 within 30 s")
        details = await d.get(f"/api/request/{rid}/details/")
        device = details["assigned_device"]
        self.assertTrue(device)
        listed = {x["name"]: x for x in (await d.get("/api/device/list/?details"))["devices"]}
        self.assertEqual((listed[device]["request_id"], listed[device]["image"]), (rid, "android"))

        # A named busy device: 409 with the (closed) request.
        code, body = await d.request(device)
        self.assertEqual(code, 409, body)
        self.assertEqual(await d.request_state(body["request"]["id"]), "closed")

        code, _ = await d.call("POST", f"/api/request/{rid}/return/")
        self.assertEqual(code, 204)
        self.assertEqual(await d.request_state(rid), "closed")
        listed = {x["name"]: x for x in (await d.get("/api/device/list/?details"))["devices"]}
        self.assertIsNone(listed[device]["request_id"])

    async def test_b2g_and_expiry(self) -> None:
        d = Daemon(self, fakes=3)
        await d.start()
        await d.wait_ready()
        code, body = await d.request("any", image="b2g")
        self.assertEqual(code, 400, "b2g needs b2gbase")
        code, body = await d.request("any", image="b2g", b2gbase="http://builds.example.com/b2g/")
        self.assertEqual(code, 200, body)
        rid = body["request"]["id"]
        self.assertEqual(await d.wait_request(rid), "ready")
        device = (await d.get(f"/api/request/{rid}/details/"))["assigned_device"]
        listed = {x["name"]: x for x in (await d.get("/api/device/list/?details"))["devices"]}
        self.assertEqual(listed[device]["image"], "b2g")
        self.assertEqual(json.loads(listed[device]["boot_config"]), {"b2gbase": "http://builds.example.com/b2g/"})

        code, body = await d.request("any", duration=1)
        short = body["request"]["id"]

        async def expired() -> str | None:
            # It may be ready first (a fast imaging) or not (expiry comes first): closed either way.
            state = await d.request_state(short)
            return state if state == "closed" or state.startswith("failed_") else None

        self.assertEqual(await d.wait_for(expired, 30, f"request {short} to expire"), "closed")

    async def test_failing_device_is_replaced_for_any_and_fails_a_named_request(self) -> None:
        d = Daemon(self, fakes=3, extra_args=("--fail", "panda-0001:android_downloading",
                                              "--fail", "panda-0002:android_downloading"))
        await d.start()
        await d.wait_ready()
        code, body = await d.request("panda-0001")
        named = body["request"]["id"]
        code, body = await d.request("any")
        anyreq = body["request"]["id"]
        self.assertEqual(await d.wait_request(named, timeout=120), "failed_bad_device")
        self.assertEqual(await d.wait_request(anyreq, timeout=120), "ready")
        self.assertEqual((await d.get(f"/api/request/{anyreq}/details/"))["assigned_device"], "panda-0003")


class CrashSafety(TestCase):
    timeout = 240

    async def test_kill9_mid_imaging_and_resume(self) -> None:
        d = Daemon(self, fakes=4, time_scale=0.02)
        await d.start()
        await d.wait_ready()
        ids = []
        for _ in range(3):
            code, body = await d.request("any")
            ids.append(body["request"]["id"])

        async def imaging() -> bool:
            states = await d.device_states()
            return any(s not in ("ready", "new") for s in states.values())

        await d.wait_for(imaging, 30, "imaging to start")
        await d.kill9()
        await d.start()
        for rid in ids:
            self.assertEqual(await d.wait_request(rid, timeout=120), "ready")
        for rid in ids:
            await d.call("POST", f"/api/request/{rid}/return/")
        await d.wait_ready(timeout=120)


class DatabaseOutage(TestCase):
    timeout = 300

    async def test_503_while_down_and_recovery(self) -> None:
        server = mariadbServer(self)
        url = mariadbURL(self)
        d = Daemon(self, fakes=2, db=url)
        await d.start()
        await d.wait_ready()
        server.stop()
        try:
            start = reactor.seconds()
            code, body = await d.call("GET", "/api/device/list/")
            self.assertEqual(code, 503, body)
            self.assertIn("error", body)
            self.assertLess(reactor.seconds() - start, 11)
            code, _ = await d.call("GET", "/api/version/")
            self.assertEqual(code, 200, "answers that need no database go on")
        finally:
            server.start()

        async def back() -> bool:
            code, _ = await d.call("GET", "/api/device/list/")
            return code == 200

        await d.wait_for(back, 60, "the daemon to use the database again")
        code, body = await d.request("any")
        self.assertEqual(code, 200, body)
        self.assertEqual(await d.wait_request(body["request"]["id"], timeout=90), "ready")

    async def test_30s_outage_mid_imaging(self) -> None:
        """Events that arrive while the database is away are answered 503 and logged by the
        device; the timeout path retries, and every request still ends ready."""
        from twisted.internet import task

        server = mariadbServer(self)
        d = Daemon(self, fakes=3, db=mariadbURL(self))
        await d.start()
        await d.wait_ready()
        ids = []
        for _ in range(2):
            code, body = await d.request("any")
            self.assertEqual(code, 200, body)
            ids.append(body["request"]["id"])

        async def imaging() -> bool:
            return any(s not in ("ready", "new") for s in (await d.device_states()).values())

        await d.wait_for(imaging, 30, "imaging to start")
        server.stop()
        try:
            await task.deferLater(reactor, 30, lambda: None)
            code, _ = await d.call("GET", "/api/request/list/")
            self.assertEqual(code, 503)
        finally:
            server.start()
        for rid in ids:
            self.assertEqual(await d.wait_request(rid, timeout=120), "ready")
        self.assertIn("database", d.log_text().lower())


class BMMEndpoints(TestCase):
    timeout = 120

    async def test_power_pxe_ping_and_relay_test(self) -> None:
        import os

        d = Daemon(self, fakes=2)
        await d.start()
        await d.wait_ready()
        self.assertEqual(await d.get(f"/api/relay/localhost-{d.relay_base}/test/"), {"success": True})
        code, body = await d.call("GET", "/api/relay/nonesuch/test/")
        self.assertEqual(code, 404, body)
        # After its self-test a device idles in the live image, which answers pings.
        self.assertEqual(await d.get("/api/device/panda-0001/ping/"), {"success": True})

        code, body = await d.call("POST", "/api/device/panda-0002/power-cycle/", {"pxe_config": "nonesuch"})
        self.assertEqual(code, 404, body)
        code, body = await d.call("POST", "/api/device/panda-0002/power-cycle/",
                                  {"pxe_config": "android-install", "boot_config": '{"x": "y"}'})
        self.assertEqual((code, body), (200, {}))
        self.assertEqual(await d.get("/api/device/panda-0002/bootconfig/"), {"x": "y"})
        pxe = os.path.join(d.dir, "tftproot", "pxelinux.cfg", "01-02-01-00-00-00-01")
        self.assertTrue(os.path.exists(pxe))
        with open(pxe) as f:
            self.assertIn("mobile-imaging-url=http://127.0.0.1/scripts/android-second-stage.sh", f.read())

        async def cycled() -> bool:
            log = [e["message"] for e in (await d.get("/api/device/panda-0002/log/"))["log"]]
            return "power-cycle succeeded" in log and "ignored event mobile_init_started in state ready" in log

        await d.wait_for(cycled, 30, "the power-cycle and the PXE boot it caused")
        self.assertEqual(await d.call("POST", "/api/device/panda-0002/clear-pxe/"), (200, {}))
        self.assertFalse(os.path.exists(pxe))
        self.assertEqual(await d.call("GET", "/api/device/panda-0002/power-off/"), (200, {}))

        async def off() -> bool:
            log = [e["message"] for e in (await d.get("/api/device/panda-0002/log/"))["log"]]
            return "power-off succeeded" in log

        await d.wait_for(off, 30, "power-off")
        self.assertEqual(await d.get("/api/device/panda-0002/ping/"), {"success": False}, "no power, no answer")
