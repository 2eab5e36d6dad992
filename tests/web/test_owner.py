"""Ownership redirects, the Origin check and preflights (spec 2.2 - 2.4), with two servers
(A and B) in one database, plus set-comments and set-environment."""

from __future__ import annotations

from tests.support.dbtest import on_both_backends
from tests.web.fakes import FakeBMM, FakeBroker, FakeLifeGuard
from tests.web.support import APITest, B, JSON_TYPE

B_DEVICE_CALLS = [
    ("POST", "/api/device/bpanda-0001/event/please_power_cycle/"),
    ("GET", "/api/device/bpanda-0001/event/please_power_cycle/"),
    ("POST", "/api/device/bpanda-0001/state-change/new/to/ready/"),
    ("POST", "/api/device/bpanda-0001/power-cycle/"),
    ("GET", "/api/device/bpanda-0001/power-off/"),
    ("POST", "/api/device/bpanda-0001/power-off"),
    ("POST", "/api/device/bpanda-0001/clear-pxe/"),
    ("GET", "/api/device/bpanda-0001/ping/"),
    ("POST", "/api/device/bpanda-0001/set-comments/"),
    ("POST", "/api/device/bpanda-0001/set-environment"),
    ("GET", "/api/relay/localhost-50001/test/"),
]


class Owner(APITest):
    def setUp(self):  # type: ignore[no-untyped-def]
        d = super().setUp()
        d.addCallback(lambda _: self._collaborators())
        return d

    def _collaborators(self) -> None:
        self.broker, self.lifeguard, self.bmm = FakeBroker(), FakeLifeGuard(), FakeBMM()
        self.api = self.makeAPI(broker=self.broker, lifeguard=self.lifeguard, bmm=self.bmm)

    def no_calls(self) -> None:
        self.assertEqual(self.broker.calls + self.lifeguard.calls + self.bmm.calls, [])

    async def test_redirect_to_owner_with_exact_location(self) -> None:
        for method, path in B_DEVICE_CALLS:
            for suffix in ("", "?x=1&y=%20z"):
                answer = await self.error(302, method, path + suffix, body=b'{"comments": "x"}')
                location = f"http://{B}{path}{suffix}"
                self.assertEqual(answer.header("location"), location)
                self.assertEqual(answer.json(), {"redirect": location})
        self.no_calls()

    async def test_request_endpoints_redirect(self) -> None:
        rid = await self.add_request(server=B)
        for method, path in (("POST", f"/api/request/{rid}/renew/"), ("POST", f"/api/request/{rid}/return"),
                             ("GET", f"/api/request/{rid}/event/close/"),
                             ("POST", f"/api/request/{rid}/event/lifeguard_finished/")):
            answer = await self.error(302, method, path, body={"duration": "bad"})
            self.assertEqual(answer.header("location"), f"http://{B}{path}")
        self.no_calls()

    async def test_bad_body_to_another_server_is_302_not_400(self) -> None:
        for body in (b"{", b"[]", b'{"comments": 5}', b'{"environment": ""}'):
            await self.error(302, "POST", "/api/device/bpanda-0001/set-comments/", body)
            await self.error(302, "POST", "/api/device/bpanda-0001/set-environment/", body)
            await self.error(302, "POST", "/api/device/bpanda-0001/event/please_image/", body)
        await self.error(302, "POST", "/api/device/bpanda-0001/state-change/new/to/bogus/")
        await self.error(302, "POST", "/api/device/bpanda-0001/power-cycle/", {"pxe_config": "nope"})
        self.no_calls()

    async def test_unknown_objects_are_404_never_redirected(self) -> None:
        for method, path in B_DEVICE_CALLS:
            path = path.replace("bpanda-0001", "nope").replace("localhost-50001", "nope")
            await self.error(404, method, path, body=b"{")
        await self.error(404, "POST", "/api/request/99/renew/", b"{")

    async def test_reads_are_local(self) -> None:
        for path in ("/api/device/bpanda-0001/status/", "/api/device/bpanda-0001/state/",
                     "/api/device/bpanda-0001/log/", "/api/device/bpanda-0001/bootconfig/"):
            self.assertEqual((await self.call("GET", path)).code, 200)

    async def test_origin_of_known_server_is_allowed(self) -> None:
        for origin in ("http://b.example.com:8010", "http://a.example.com"):
            answer = await self.call("POST", "/api/device/panda-0001/set-comments/", {"comments": origin},
                                     headers={"Origin": origin})
            self.assertEqual(answer.code, 200)
            self.assertEqual(answer.header("access-control-allow-origin"), origin)
        # errors after the check carry the header too
        answer = await self.error(400, "POST", "/api/device/panda-0001/set-comments/", b"[]",
                                  headers={"Origin": "http://b.example.com:8010"})
        self.assertEqual(answer.header("access-control-allow-origin"), "http://b.example.com:8010")
        rid = await self.add_request()
        answer = await self.call("POST", f"/api/request/{rid}/return/", headers={"Origin": "http://b.example.com:8010"})
        self.assertEqual(answer.code, 204)
        self.assertEqual(answer.body, b"")
        self.assertEqual(answer.header("access-control-allow-origin"), "http://b.example.com:8010")

    async def test_foreign_origin_is_403_and_nothing_is_done(self) -> None:
        for origin in ("http://evil.example.com", "http://b.example.com", "http://a.example.com:80",
                       "http://A.EXAMPLE.COM"):
            answer = await self.error(403, "POST", "/api/device/panda-0001/set-comments/", {"comments": "evil"},
                                      headers={"Origin": origin})
            self.assertIsNone(answer.header("access-control-allow-origin"))
            await self.error(403, "GET", "/api/device/panda-0001/ping/", headers={"Origin": origin})
            await self.error(403, "GET", "/api/relay/localhost-20001/test/", headers={"Origin": origin})
        rows = await self.sql("SELECT comments FROM devices WHERE name = 'panda-0001'")
        self.assertEqual(rows, [(None,)])
        self.no_calls()
        # ownership comes first: another server's device is redirected whatever the origin
        await self.error(302, "POST", "/api/device/bpanda-0001/set-comments/", headers={"Origin": "http://evil"})
        # reads need no Origin check
        self.assertEqual((await self.call("GET", "/api/device/panda-0001/status/",
                                          headers={"Origin": "http://evil"})).code, 200)

    async def test_every_origin_is_checked(self) -> None:
        """null, https:// and malformed origins are checked like http:// ones (issue 10)."""
        for origin in ("https://evil.example.com", "null", "file://", "", "http://", "evil.example.com",
                       "https://b.example.com:8010"):  # (B serves plain HTTP)
            answer = await self.call("POST", "/api/device/panda-0001/set-comments/", {"comments": "no"},
                                     headers={"Origin": origin})
            self.assertEqual(answer.code, 403, origin)
            self.assertIsNone(answer.header("access-control-allow-origin"))
            await self.error(403, "OPTIONS", "/api/device/panda-0001/ping/", headers={"Origin": origin})
        rows = await self.sql("SELECT comments FROM devices WHERE name = 'panda-0001'")
        self.assertEqual(rows, [(None,)])
        # a server that serves TLS is named with its scheme
        await self.sql("INSERT INTO imaging_servers (fqdn) VALUES ('https://c.example.com:8443')")
        answer = await self.call("POST", "/api/device/panda-0001/set-comments/", {"comments": "ok"},
                                 headers={"Origin": "https://c.example.com:8443"})
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("access-control-allow-origin"), "https://c.example.com:8443")

    async def test_same_origin_is_allowed(self) -> None:
        """The UI served by this server, reached under any host name, calls its own API."""
        answer = await self.call("POST", "/api/device/panda-0001/set-comments/", {"comments": "ui"},
                                 headers={"Origin": "http://localhost:8010", "Host": "localhost:8010"})
        self.assertEqual(answer.code, 200)

    async def test_request_creation_checks_the_origin(self) -> None:
        body = {"assignee": "x", "duration": 60, "image": "android"}
        answer = await self.call("POST", "/api/device/any/request/", body, headers={"Origin": "http://evil"})
        self.assertEqual(answer.code, 403)
        self.assertEqual(await self.sql("SELECT COUNT(*) FROM requests"), [(0,)])

    async def test_preflight_answered_locally(self) -> None:
        for path in ("/api/device/bpanda-0001/set-comments/", "/api/device/panda-0001/power-off",
                     "/api/device/nope/ping/", "/api/request/5/renew/", "/api/relay/localhost-50001/test/",
                     "/api/device/bpanda-0001/state-change/a/to/b/", "/api/request/7/event/close/"):
            answer = await self.call("OPTIONS", path, headers={"Origin": "http://b.example.com:8010"})
            self.assertEqual(answer.code, 204, path)
            self.assertEqual(answer.body, b"")
            self.assertEqual(answer.header("access-control-allow-origin"), "http://b.example.com:8010")
            self.assertEqual(answer.header("access-control-allow-methods"), "GET, POST, OPTIONS")
            self.assertEqual(answer.header("access-control-allow-headers"), "Authorization, Content-Type, X-CSRF-Token")
            await self.error(403, "OPTIONS", path, headers={"Origin": "http://evil"})
        plain = await self.call("OPTIONS", "/api/device/panda-0001/ping/")
        self.assertEqual(plain.code, 204)
        self.assertIsNone(plain.header("access-control-allow-origin"))
        await self.error(400, "OPTIONS", "/api/request/x/renew/")
        await self.error(405, "OPTIONS", "/api/device/list/")

    async def test_set_comments(self) -> None:
        for value in ("SD card replaced", "", "é" * 32767, None, "a" * 65535):
            got = await self.ok("POST", "/api/device/panda-0001/set-comments/", {"comments": value})
            self.assertEqual(got, {})
            rows = await self.sql("SELECT comments FROM devices WHERE name = 'panda-0001'")
            self.assertEqual(rows, [(value,)])
        for body in ({}, {"comment": "x"}, {"comments": 5}, {"comments": ["x"]}, {"comments": "a" * 65536},
                     {"comments": "é" * 32768}, b'{"comments": "\\ud800"}'):
            await self.error(400, "POST", "/api/device/panda-0001/set-comments/", body)
        rows = await self.sql("SELECT comments FROM devices WHERE name = 'panda-0001'")
        self.assertEqual(rows, [("a" * 65535,)])
        details = await self.ok("GET", "/api/device/list/?details")
        self.assertEqual({d["name"]: d["comments"] for d in details["devices"]}["panda-0001"], "a" * 65535)

    async def test_set_environment(self) -> None:
        got = await self.ok("POST", "/api/device/panda-0001/set-environment/", {"environment": "e" * 32,
                                                                                "extra": [1]})
        self.assertEqual(got, {})
        envs = await self.ok("GET", "/api/environment/list/")
        self.assertEqual(envs["environments"], ["e" * 32, "prod", "staging"])
        for body in ({}, {"environment": ""}, {"environment": None}, {"environment": 3},
                     {"environment": "e" * 33}, {"environment": True}):
            await self.error(400, "POST", "/api/device/panda-0001/set-environment/", body)
        rows = await self.sql("SELECT environment FROM devices WHERE name = 'panda-0001'")
        self.assertEqual(rows, [("e" * 32,)])
        answer = await self.call("POST", "/api/device/panda-0001/set-environment/", {"environment": "staging"})
        self.assertEqual(answer.header("content-type"), JSON_TYPE)


OwnerSQLite, OwnerMariaDB = on_both_backends(Owner)
