"""The general rules of spec section 1 and the bad-input matrix, on SQLite and MariaDB."""

from __future__ import annotations

from mozpool.db.pool import Database
from mozpool.web.api import MozpoolAPI
from mozpool.web.validate import MAX_BODY
from tests.support.dbtest import on_both_backends
from tests.web.fakes import FakeBMM, FakeBroker, FakeLifeGuard
from tests.web.support import JSON_TYPE, APITest

BAD_IDS = ["abc", "-1", "1.5", "%201", "1%20", "0x1", "%EF%BC%91", "+1"]
REQUEST_PATHS = [
    ("GET", "/api/request/{}/details/"),
    ("GET", "/api/request/{}/status/"),
    ("GET", "/api/request/{}/log/"),
    ("POST", "/api/request/{}/renew/"),
    ("POST", "/api/request/{}/return/"),
    ("GET", "/api/request/{}/event/close/"),
    ("POST", "/api/request/{}/event/close/"),
]
BAD_JSON = [b"{", b"\xff\xfe{}", b"[]", b'"x"', b"1", b"null", b"true", b"{}{}", b"{'a': 1}",
            b"[" * 100000, b"{\"comments\": " + b"1" * 5000 + b"}", b"\xef\xbb\xbf{}"]


class Rules(APITest):
    async def test_trailing_slash_optional_no_redirect(self) -> None:
        for path in ("/api/version", "/api/version/", "/api/device/list", "/api/openapi.json/",
                     "/api/device/panda-0001/state", "/api/bmm/pxe_config/self-test/details"):
            answer = await self.call("GET", path)
            self.assertEqual(answer.code, 200, path)
            self.assertEqual(answer.header("content-type"), JSON_TYPE)

    async def test_unknown_paths_are_json_404(self) -> None:
        for path in ("/api/", "/api", "/api/nope/", "/api/device/", "/api/device/panda-0001/",
                     "/api/device/panda-0001/nope/", "/api/device//status/", "/api//version/",
                     "/api/version//", "/nope", "/", "/api/device/panda-0001/status/extra/",
                     "/api/device/a%2Fb/status/"):
            await self.error(404, "GET", path)

    async def test_wrong_method_is_405_with_allow(self) -> None:
        cases = [
            ("POST", "/api/version/", {"GET", "HEAD"}),
            ("DELETE", "/api/version", {"GET", "HEAD"}),
            ("PUT", "/api/device/list/", {"GET", "HEAD"}),
            ("GET", "/api/device/panda-0001/set-comments/", {"POST", "OPTIONS"}),
            ("GET", "/api/device/panda-0001/set-comments", {"POST", "OPTIONS"}),
            ("GET", "/api/request/1/renew/", {"POST", "OPTIONS"}),
            ("PUT", "/api/device/panda-0001/event/x/", {"GET", "HEAD", "POST", "OPTIONS"}),
            ("GET", "/api/device/any/request/", {"POST"}),
            ("POST", "/metrics", {"GET", "HEAD"}),
        ]
        for method, path, allowed in cases:
            answer = await self.error(405, method, path)
            self.assertEqual({m.strip() for m in answer.header("allow").split(",")}, allowed, path)

    async def test_malformed_request_ids(self) -> None:
        api = self.makeAPI(broker=FakeBroker())
        for method, template in REQUEST_PATHS:
            for bad in BAD_IDS:
                await self.error(400, method, template.format(bad), body=b"{}" if method == "POST" else None)
        self.assertEqual(api.broker.calls, [])

    async def test_huge_and_unknown_ids_are_404(self) -> None:
        self.makeAPI(broker=FakeBroker())
        for method, template in REQUEST_PATHS:
            for big in ("9" * 19, "9" * 40, "9223372036854775808", "12345"):
                await self.error(404, method, template.format(big), body={"duration": 5} if method == "POST" else None)

    async def test_flags_by_presence(self) -> None:
        rid = await self.add_request(state="closed")
        for query in ("?include_closed", "?include_closed=", "?include_closed=0", "?x=1&include_closed=false"):
            got = await self.ok("GET", "/api/request/list/" + query)
            self.assertEqual([r["id"] for r in got["requests"]], [rid], query)
        got = await self.ok("GET", "/api/request/list/?include_closedx=1&unknown=2")
        self.assertEqual(got["requests"], [])

    async def test_bad_integer_query_parameters(self) -> None:
        rid = await self.add_request()
        for name in ("timeperiod", "limit"):
            for value in ("abc", "-1", "1.5", "", "%201", "2147483648", "99999999999999999999", "%EF%BC%91", "1e3"):
                for path in ("/api/device/panda-0001/log/", f"/api/request/{rid}/log/"):
                    await self.error(400, "GET", f"{path}?{name}={value}")
            await self.ok("GET", f"/api/device/panda-0001/log/?{name}=2147483647")
            await self.ok("GET", f"/api/device/panda-0001/log/?{name}=5&{name}=abc")  # first counts
            await self.error(400, "GET", f"/api/device/panda-0001/log/?{name}=abc&{name}=5")
        # existence comes before query parameters
        await self.error(404, "GET", "/api/device/nope/log/?limit=abc")
        await self.error(404, "GET", "/api/request/999/log/?limit=abc")
        await self.error(400, "GET", "/api/request/x/log/?limit=abc")

    async def test_bad_json_bodies(self) -> None:
        for body in BAD_JSON:
            await self.error(400, "POST", "/api/device/panda-0001/set-comments/", body)
            await self.error(400, "POST", "/api/device/panda-0001/set-environment/", body)
        rows = await self.sql("SELECT comments FROM devices WHERE name = 'panda-0001'")
        self.assertEqual(rows, [(None,)])

    async def test_body_read_whatever_the_content_type(self) -> None:
        for ctype in ("application/x-www-form-urlencoded; charset=UTF-8", "text/plain", "application/json"):
            got = await self.ok("POST", "/api/device/panda-0001/set-comments/", {"comments": ctype},
                                headers={"Content-Type": ctype})
            self.assertEqual(got, {})
            rows = await self.sql("SELECT comments FROM devices WHERE name = 'panda-0001'")
            self.assertEqual(rows, [(ctype,)])

    async def test_empty_body_is_an_empty_object(self) -> None:
        bmm = FakeBMM()
        self.makeAPI(bmm=bmm)
        for body in (b"", b"  \r\n\t "):
            await self.ok("POST", "/api/device/panda-0001/power-cycle/", body)
        await self.ok("POST", "/api/device/panda-0001/power-cycle/")
        self.assertEqual(bmm.calls, [("power_cycle", "panda-0001", None, None)] * 3)
        answer = await self.error(400, "POST", "/api/device/panda-0001/set-comments/", b"")
        self.assertIn("comments", answer.json()["error"])

    async def test_body_ignored_endpoints_accept_anything(self) -> None:
        broker, lifeguard, bmm = FakeBroker(), FakeLifeGuard(), FakeBMM()
        self.makeAPI(broker=broker, lifeguard=lifeguard, bmm=bmm)
        rid = await self.add_request()
        for body in (b"{", b"\xff", b"[1]"):
            self.assertEqual((await self.call("POST", f"/api/request/{rid}/return/", body)).code, 204)
            await self.ok("POST", "/api/device/panda-0001/state-change/new/to/ready/", body)
            await self.ok("POST", "/api/device/panda-0001/clear-pxe/", body)
            await self.ok("POST", "/api/device/panda-0001/power-off/", body)
        self.assertEqual(len(broker.calls) + len(lifeguard.calls) + len(bmm.calls), 12)

    async def test_body_size_limit(self) -> None:
        big = b" " * (MAX_BODY + 1)
        await self.error(413, "POST", "/api/device/panda-0001/set-comments/", big)
        await self.error(413, "POST", "/api/device/nope/set-comments/", big)  # before 404
        await self.error(413, "POST", "/api/device/bpanda-0001/set-comments/", big)  # before 302
        await self.error(413, "POST", "/api/request/abc/renew/", big)  # before the id check
        await self.error(413, "GET", "/api/version/", big)
        await self.error(413, "POST", "/api/device/any/request/", big)
        await self.error(405, "POST", "/api/version/", big)  # routing first
        await self.error(404, "POST", "/api/nope/", big)
        # exactly 1 MiB is read: here a too-long comment, so 400
        filler = b'{"comments": "' + b"a" * (MAX_BODY - 16) + b'"}'
        self.assertEqual(len(filler), MAX_BODY)
        answer = await self.error(400, "POST", "/api/device/panda-0001/set-comments/", filler)
        self.assertIn("comments", answer.json()["error"])

    async def test_non_utf8_path_segments(self) -> None:
        await self.error(404, "GET", "/api/device/%ff/status/")
        await self.error(404, "GET", "/api/device/%ff%fe/state/")
        await self.error(400, "GET", "/api/request/%ff/details/")
        await self.error(404, "GET", "/api/%ff/")
        await self.error(405, "GET", "/api/device/%ff/set-comments/")
        await self.error(404, "POST", "/api/device/%ff/set-comments/", {"comments": "x"})

    async def test_odd_names_are_just_unknown(self) -> None:
        for name in ("panda-0001%20", "%20panda-0001", "PANDA-0001x", "%00", "panda-0001%00", "'%3B--", "%F0%9F%90%BC",
                     "x" * 300):
            await self.error(404, "GET", f"/api/device/{name}/status/")
            await self.error(404, "GET", f"/api/device/{name}/state/?cache")
            await self.error(404, "POST", f"/api/device/{name}/set-comments/", {"comments": "x"})
            await self.error(404, "GET", f"/api/bmm/pxe_config/{name}/details/")
            await self.error(404, "GET", f"/api/relay/{name}/test/")

    async def test_head_is_answered(self) -> None:
        answer = await self.call("HEAD", "/api/version/")
        self.assertEqual((answer.code, answer.body), (200, b""))


RulesSQLite, RulesMariaDB = on_both_backends(Rules)


class Unavailable(APITest):
    """A database that cannot be opened: every database call is a quick 503 JSON."""

    async def test_503(self) -> None:
        broken = Database.fromURL("sqlite:///" + self.mktemp() + "/missing/dir/db.sqlite", self.db._reactor)
        self.addCleanup(broken.close)
        self.makeAPI(db=broken)
        for method, path in (
            ("GET", "/api/device/list/"),
            ("GET", "/api/device/panda-0001/state/?cache"),
            ("GET", "/api/device/panda-0001/status/"),
            ("GET", "/api/request/1/details/"),
            ("POST", "/api/device/panda-0001/set-comments/"),
            ("OPTIONS", "/api/device/panda-0001/ping/"),
            ("GET", "/api/pool/summary/"),
        ):
            headers = {"Origin": "http://a.example.com"} if method == "OPTIONS" else None
            answer = await self.error(503, method, path, headers=headers)
            self.assertIn("error", answer.json())
        # served from memory / degraded
        self.assertEqual((await self.call("GET", "/api/openapi.json")).code, 200)
        self.assertEqual((await self.call("GET", "/api/version/")).code, 200)
        self.assertEqual((await self.call("GET", "/api/request/x/details/")).code, 400)
        metrics = await self.call("GET", "/metrics")
        self.assertEqual(metrics.code, 200)
        self.assertIn(b"\nmozpool_db_up 0\n", metrics.body)
        self.assertNotIn(b"mozpool_devices{", metrics.body)


UnavailableSQLite = on_both_backends(Unavailable)[0]


class ConstructedAPI(APITest):
    async def test_resource_is_per_instance(self) -> None:
        other = MozpoolAPI(self.db, "b.example.com:8010", self.clock)
        self.assertIsNot(other.resource(), self.api.resource())
        self.assertEqual(other.fqdn, "b.example.com:8010")


ConstructedAPISQLite = on_both_backends(ConstructedAPI)[0]


class WithUI(APITest):
    async def test_ui_outside_api(self) -> None:
        from treq.testing import RequestTraversalAgent
        from twisted.web.resource import Resource
        from twisted.web.static import Data

        from tests.web.support import _FlushOnFinish

        ui = Resource()
        ui.putChild(b"index.html", Data(b"<html>ui</html>", "text/html"))
        self.front = _FlushOnFinish(self.api.resource(ui))
        self.agent = RequestTraversalAgent(self.front)
        self.front.flushers = [self.agent.flush]
        page = await self.call("GET", "/index.html")
        self.assertEqual((page.code, page.body), (200, b"<html>ui</html>"))
        self.assertEqual((await self.call("GET", "/api/version/")).json()["version"], self.api_version())
        await self.error(404, "GET", "/api/nope/")

    def api_version(self) -> str:
        from mozpool import __version__

        return __version__


WithUISQLite = on_both_backends(WithUI)[0]
