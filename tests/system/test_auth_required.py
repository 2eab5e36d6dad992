"""Auth required on real daemons: two servers on one MariaDB still prepare each other's requests
(signed with the cluster secret), simulated devices post their live-boot events with their
per-boot tokens and reach ready, a forged device event is refused, and changes are audited."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from mozpool.db import tokens
from mozpool.db.pool import Database
from tests.system.test_two_servers import daemon_errors, two_servers


class AuthRequired(TestCase):
    timeout = 300

    async def test_servers_and_devices_with_auth_required(self) -> None:
        a, b = await two_servers(self, fakes=3, time_scale=0.02, extra_args=("--auth", "required"))
        db = Database.fromURL(a.db, reactor)
        self.addCleanup(db.close)
        user = await db.runInteraction(tokens.create, "ci-bot", "user", "2026-01-01 00:00:00")
        operator = await db.runInteraction(tokens.create, "oncall", "operator", "2026-01-01 00:00:00")

        # Reads stay open; changes need a token.
        self.assertEqual((await a.call("GET", "/api/device/list/"))[0], 200)
        code, body = await a.request("any")
        self.assertEqual(code, 401, body)
        self.assertEqual((await a.call("GET", "/api/whoami/"))[1]["mode"], "required")

        # The pools self-test through PXE boots whose events carry per-boot tokens.
        await a.wait_ready()
        await b.wait_ready()
        b_device = next(x["name"] for x in (await b.get("/api/device/list/?details"))["devices"]
                        if x["imaging_server"] == b.fqdn)

        # A request on A for B's device: A asks B's LifeGuard, B reports back to A, both signed.
        a.token = user
        code, body = await a.request(b_device, image="android")
        self.assertEqual(code, 200, body)
        rid = body["request"]["id"]
        self.assertEqual(await a.wait_request(rid, timeout=90), "ready")
        device_log = [e["message"] for e in (await a.get(f"/api/device/{b_device}/log/"))["log"]]
        self.assertIn("entering state android_downloading", device_log, "the device's own events were taken")
        request_log = [(e["source"], e["message"]) for e in (await a.get(f"/api/request/{rid}/log/"))["log"]]
        self.assertIn(("audit", f"POST /api/device/{b_device}/request/ by ci-bot (user)"), request_log)

        # Forged device events: no token, a made-up boot token, another device's boot token.
        for headers in ({}, {"Authorization": "Bearer mpb_forged"}):
            code, _ = await _post(b, f"/api/device/{b_device}/event/android_extracting/", headers)
            self.assertIn(code, (401, 403), headers)
        # A user may not power devices off; an operator may, and is named in the device log.
        code, _ = await b.call("POST", f"/api/device/{b_device}/power-off/")
        self.assertEqual(code, 401)
        b.token = user
        self.assertEqual((await b.call("POST", f"/api/device/{b_device}/set-comments/", {"comments": "x"}))[0], 403)
        b.token = operator
        self.assertEqual((await b.call("POST", f"/api/device/{b_device}/set-comments/", {"comments": "seen"}))[0], 200)
        device_log = [(e["source"], e["message"]) for e in (await b.get(f"/api/device/{b_device}/log/"))["log"]]
        self.assertIn(("audit", f"POST /api/device/{b_device}/set-comments/ by oncall (operator)"), device_log)

        # The user returns its own request.
        a.token = user
        self.assertEqual((await a.call("POST", f"/api/request/{rid}/return/"))[0], 204)
        self.assertEqual(daemon_errors(a) + daemon_errors(b), [])
        for d in (a, b):
            self.assertNotIn("answered 401", d.log_text())
            self.assertNotIn("answered 403", d.log_text())


async def _post(d, path, headers):  # type: ignore[no-untyped-def]
    import treq

    response = await treq.post(d.url + path, headers=headers, pool=d.pool, timeout=20)
    return response.code, await response.content()


class TLSServer(TestCase):
    """One server serves its API over TLS (named https://...); the other asks it to image a
    device, verifying its certificate against the configured CA, and hears back."""

    timeout = 300

    async def test_request_across_a_tls_server(self) -> None:
        from mozpool.serverurl import base_url
        from labservers.mariadb import mariadbURL
        from tests.support.tls import make_ca
        from tests.system.daemon import Daemon
        from tests.system.test_two_servers import distinct_tcp_ports, owned_devices

        tls = make_ca(self.mktemp())
        url = mariadbURL(self)
        for _ in range(20):
            a = Daemon(self, fakes=2, db=url, time_scale=0.02, tls=tls)
            b = Daemon(self, fakes=2, db=url, time_scale=0.02, config=f"[server]\nca_certs = {tls[2]}\n")
            if distinct_tcp_ports(a, b, 2):
                break
        self.assertTrue(a.url.startswith("https://"))
        await a.start()
        await owned_devices(a, 2)
        await b.start()
        await owned_devices(b, 2)
        await a.wait_ready()
        target = next(x["name"] for x in (await b.get("/api/device/list/?details"))["devices"]
                      if x["imaging_server"] == a.fqdn)
        code, body = await b.request(target)
        self.assertEqual(code, 200, body)
        rid = body["request"]["id"]
        self.assertEqual(await b.wait_request(rid, timeout=90), "ready")
        # Calls on A's device through B are redirected to A's https:// name.
        code, headers = await _raw(b, "POST", f"/api/device/{target}/set-comments/", {"comments": "x"})
        self.assertEqual((code, headers), (302, [f"{base_url(a.fqdn)}/api/device/{target}/set-comments/"]))
        self.assertEqual(daemon_errors(a) + daemon_errors(b), [])


async def _raw(d, method, path, body):  # type: ignore[no-untyped-def]
    import json

    import treq

    response = await treq.request(method, d.url + path, data=json.dumps(body).encode(), pool=d.pool,
                                  allow_redirects=False, timeout=20)
    await response.content()
    return response.code, response.headers.getRawHeaders("location")
