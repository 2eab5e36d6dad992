"""The endpoints that act through the broker, LifeGuard or BMM: validation up to the
collaborator call, the call itself (recording fakes), and 501 while a collaborator is missing."""

from __future__ import annotations

from twisted.internet import defer
from zope.interface.verify import verifyObject

from mozpool.web.interfaces import IBMM, IBroker, DeviceHeld, ILifeGuard, RequestSpec, StateMismatch
from tests.support.dbtest import on_both_backends
from tests.web.fakes import FakeBMM, FakeBroker, FakeLifeGuard
from tests.web.support import APITest

GOOD = {"assignee": "tester@example.com", "duration": 3600, "image": "android"}
REQUEST = {"id": 1, "requested_device": "any", "assignee": "tester@example.com", "expires": "2013-04-02T18:05:11",
           "environment": "any", "image": "android", "boot_config": "{}", "assigned_device": "",
           "url": "http://a.example.com/api/request/1/"}


class Missing(APITest):
    """No collaborators: everything is validated, then 501."""

    async def test_501_after_validation(self) -> None:
        rid = await self.add_request()
        calls = [
            ("POST", "/api/device/any/request/", GOOD),
            ("POST", f"/api/request/{rid}/renew/", {"duration": 5}),
            ("POST", f"/api/request/{rid}/return/", None),
            ("GET", f"/api/request/{rid}/event/close/", None),
            ("POST", "/api/device/panda-0001/event/please_image/", {"image": "b2g"}),
            ("POST", "/api/device/panda-0001/state-change/new/to/ready/", None),
            ("POST", "/api/device/panda-0001/power-cycle/", None),
            ("GET", "/api/device/panda-0001/power-off/", None),
            ("POST", "/api/device/panda-0001/clear-pxe/", None),
            ("GET", "/api/device/panda-0001/ping/", None),
            ("GET", "/api/relay/localhost-20001/test/", None),
        ]
        for method, path, body in calls:
            answer = await self.error(501, method, path, body)
            self.assertIn("not available in this version", answer.json()["error"])
        await self.error(400, "POST", "/api/device/any/request/", {"image": "android"})
        await self.error(404, "POST", "/api/device/any/request/", {**GOOD, "image": "nope"})
        await self.error(400, "POST", f"/api/request/{rid}/renew/", {"duration": 0})
        await self.error(400, "POST", "/api/device/panda-0001/event/please_image/", {})
        await self.error(400, "POST", "/api/device/panda-0001/state-change/new/to/bogus/")
        await self.error(404, "POST", "/api/device/panda-0001/power-cycle/", {"pxe_config": "nope"})


MissingSQLite, MissingMariaDB = on_both_backends(Missing)


class Actions(APITest):
    def setUp(self):  # type: ignore[no-untyped-def]
        d = super().setUp()
        d.addCallback(lambda _: self._collaborators())
        return d

    def _collaborators(self) -> None:
        self.broker, self.lifeguard, self.bmm = FakeBroker(), FakeLifeGuard(), FakeBMM()
        verifyObject(IBroker, self.broker)
        verifyObject(ILifeGuard, self.lifeguard)
        verifyObject(IBMM, self.bmm)
        self.api = self.makeAPI(broker=self.broker, lifeguard=self.lifeguard, bmm=self.bmm)

    # --- request creation -----------------------------------------------------------------

    async def test_request_creation(self) -> None:
        self.broker.result = REQUEST
        got = await self.ok("POST", "/api/device/any/request/", {**GOOD, "b2gbase": None, "extra": 1})
        self.assertEqual(got, {"request": REQUEST})
        variants = [
            ({**GOOD, "duration": "60"}, ("any", "tester@example.com", 60, "android", "any", "{}")),
            ({**GOOD, "duration": 60.0, "environment": None}, ("any", "tester@example.com", 60, "android", "any", "{}")),
            ({**GOOD, "environment": ""}, ("any", "tester@example.com", 3600, "android", "any", "{}")),
            ({**GOOD, "environment": "prod"}, ("any", "tester@example.com", 3600, "android", "prod", "{}")),
            ({"requester": "r@x", "duration": "0060", "image": "android"}, ("any", "r@x", 60, "android", "any", "{}")),
            ({**GOOD, "requester": 5}, ("any", "tester@example.com", 3600, "android", "any", "{}")),
            ({**GOOD, "image": "maintenance"}, ("any", "tester@example.com", 3600, "maintenance", "any", "{}")),
            ({**GOOD, "image": "b2g", "b2gbase": "http://b/", "other": "x"},
             ("any", "tester@example.com", 3600, "b2g", "any", '{"b2gbase": "http://b/"}')),
            ({**GOOD, "duration": 2147483647, "assignee": "a" * 256},
             ("any", "a" * 256, 2147483647, "android", "any", "{}")),
        ]
        self.broker.calls.clear()
        for body, expected in variants:
            await self.ok("POST", "/api/device/any/request/", body)
            device, *fields = expected
            self.assertEqual(self.broker.calls[-1], ("create_request", device, RequestSpec(*fields)))
        await self.ok("POST", "/api/device/bpanda-0001/request/", GOOD)  # never redirected
        self.assertEqual(self.broker.calls[-1][1], "bpanda-0001")

    async def test_a_burst_of_creations_looks_its_images_up_together(self) -> None:
        """The image look-ups of creations arriving together go in one SELECT (after the first,
        which goes alone), each answered with exactly its own image's row."""
        from tests.support.dbtest import statements_sent

        sent = statements_sent(self)
        names = ["android", "android", "nope", "b2g", "ANDROID", "android"]
        found = await defer.gatherResults([self.api.images.submit(name) for name in names])
        self.assertEqual([None if f is None else f["name"] for f in found],
                         ["android", "android", None, "b2g", None, "android"])
        self.assertEqual(found[3]["boot_config_keys"], ["b2gbase"])
        looked = [sql for sql in sent if "FROM images WHERE name" in sql]
        self.assertEqual(len(looked), 2, looked)

    async def test_request_creation_bad_bodies(self) -> None:
        bad = [
            {"duration": 60, "image": "android"},
            {**GOOD, "assignee": None}, {**GOOD, "assignee": 5}, {**GOOD, "assignee": "a" * 257},
            {"requester": 5, "duration": 60, "image": "android"},
            {"assignee": "x", "image": "android"},
            {**GOOD, "duration": True}, {**GOOD, "duration": 60.5}, {**GOOD, "duration": -1},
            {**GOOD, "duration": 0}, {**GOOD, "duration": "abc"}, {**GOOD, "duration": "60.0"},
            {**GOOD, "duration": "-5"}, {**GOOD, "duration": 2147483648}, {**GOOD, "duration": None},
            {**GOOD, "duration": "9" * 5000}, {**GOOD, "duration": 1e300}, {**GOOD, "duration": [60]},
            {"assignee": "x", "duration": 60}, {**GOOD, "image": 5}, {**GOOD, "image": None},
            {**GOOD, "environment": 5}, {**GOOD, "environment": "e" * 33},
            {**GOOD, "image": "b2g"}, {**GOOD, "image": "b2g", "b2gbase": 5},
            {**GOOD, "image": "b2g", "b2gbase": None}, {**GOOD, "image": "b2g", "b2gbase": "x" * 65536},
        ]
        for body in bad:
            await self.error(400, "POST", "/api/device/any/request/", body)
        for body in (b"", b"[]", b"{", b"null"):
            await self.error(400, "POST", "/api/device/panda-0001/request/", body)
        for raw in (b'{"assignee": "x", "duration": NaN, "image": "android"}',
                    b'{"assignee": "x", "duration": Infinity, "image": "android"}',
                    b'{"assignee": "\\udc00", "duration": 5, "image": "android"}'):
            await self.error(400, "POST", "/api/device/any/request/", raw)
        self.assertEqual(self.broker.calls, [])

    async def test_request_creation_order_of_checks(self) -> None:
        await self.error(404, "POST", "/api/device/nope/request/", b"[]")  # device before body
        await self.error(400, "POST", "/api/device/any/request/", {"image": "nope"})  # body before image
        await self.error(404, "POST", "/api/device/any/request/", {**GOOD, "image": "nope"})
        await self.error(404, "POST", "/api/device/any/request/", {**GOOD, "image": "ANDROID"})
        # image before its boot_config_keys
        await self.error(404, "POST", "/api/device/any/request/", {**GOOD, "image": "b2g2"})
        self.assertEqual(self.broker.calls, [])

    async def test_request_creation_conflict(self) -> None:
        closed = {**REQUEST, "requested_device": "panda-0001"}
        self.broker.failure = DeviceHeld("device panda-0001 is held by request 35", closed)
        answer = await self.error(409, "POST", "/api/device/panda-0001/request/", GOOD)
        self.assertEqual(answer.json(), {"error": "device panda-0001 is held by request 35", "request": closed})

    # --- request actions ------------------------------------------------------------------

    async def test_renew_return_and_request_events(self) -> None:
        rid = await self.add_request()
        answer = await self.call("POST", f"/api/request/{rid}/renew/", {"duration": "120"})
        self.assertEqual((answer.code, answer.body), (204, b""))
        self.assertIsNone(answer.header("content-type"))
        answer = await self.call("POST", f"/api/request/{rid}/return")
        self.assertEqual((answer.code, answer.body), (204, b""))
        await self.ok("GET", f"/api/request/{rid}/event/expire/")
        got = await self.ok("POST", f"/api/request/{rid}/event/lifeguard_finished/", {"imaging_result": "complete"})
        self.assertEqual(got, {})
        await self.ok("POST", f"/api/request/{rid}/event/lifeguard_finished/", b"")
        await self.ok("POST", f"/api/request/{rid}/event/close/", {"anything": [1]})
        self.assertEqual(self.broker.calls, [
            ("renew", rid, 120), ("return_request", rid), ("request_event", rid, "expire", {}),
            ("request_event", rid, "lifeguard_finished", {"imaging_result": "complete"}),
            ("request_event", rid, "lifeguard_finished", {}),
            ("request_event", rid, "close", {}),  # request events take no arguments from outside
        ])
        self.broker.calls.clear()
        for body in ({}, {"duration": 0}, {"duration": "x"}, {"duration": 1.5}, {"duration": False}, b"[]"):
            await self.error(400, "POST", f"/api/request/{rid}/renew/", body)
        for body in ({"imaging_result": 5}, b"[]", b"{"):
            await self.error(400, "POST", f"/api/request/{rid}/event/lifeguard_finished/", body)
        await self.error(400, "POST", f"/api/request/{rid}/event/close/", b"[]")
        self.assertEqual(self.broker.calls, [])

    # --- LifeGuard --------------------------------------------------------------------------

    async def test_device_events(self) -> None:
        await self.ok("POST", "/api/device/panda-0001/event/please_image/", {"image": "b2g", "boot_config": '{"b2gbase": "u"}'})
        await self.ok("POST", "/api/device/panda-0001/event/please_image/", {"image": "nope"})
        await self.ok("POST", "/api/device/panda-0001/event/please_image/", {"image": "android", "boot_config": ""})
        await self.ok("GET", "/api/device/panda-0001/event/mobile_init_started/")
        await self.ok("POST", "/api/device/panda-0001/event/please_self_test", b"")
        self.assertEqual(self.lifeguard.calls, [
            ("device_event", "panda-0001", "please_image", {"image": "b2g", "boot_config": '{"b2gbase": "u"}'}),
            ("device_event", "panda-0001", "please_image", {"image": "nope", "boot_config": "{}"}),
            ("device_event", "panda-0001", "please_image", {"image": "android", "boot_config": ""}),
            ("device_event", "panda-0001", "mobile_init_started", {}),
            ("device_event", "panda-0001", "please_self_test", {}),
        ])
        self.lifeguard.calls.clear()
        for body in ({}, {"image": 5}, {"image": None}, {"image": "b2g", "boot_config": 5},
                     {"image": "b2g", "boot_config": "{not json"}, {"image": "b2g", "boot_config": "  "},
                     {"image": "b2g", "boot_config": "x" * 65536}, b"[]"):
            await self.error(400, "POST", "/api/device/panda-0001/event/please_image/", body)
        await self.error(400, "GET", "/api/device/panda-0001/event/please_image/")
        await self.error(400, "POST", "/api/device/panda-0001/event/please_power_cycle/", b"1")
        self.assertEqual(self.lifeguard.calls, [])

    async def test_state_change(self) -> None:
        await self.ok("POST", "/api/device/panda-0001/state-change/new/to/ready/", {"pxe_config": 5})
        await self.ok("POST", "/api/device/panda-0001/state-change/anything/to/failed_pxe_booting")
        await self.ok("POST", "/api/device/panda-0001/state-change/x/to/self_test_running/")
        self.assertEqual(self.lifeguard.calls, [
            ("state_change", "panda-0001", "new", "ready"),
            ("state_change", "panda-0001", "anything", "failed_pxe_booting"),
            ("state_change", "panda-0001", "x", "self_test_running"),
        ])
        for new in ("bogus", "READY", "failed_", "failed_whatever", "closed", "%20ready"):
            await self.error(400, "POST", f"/api/device/panda-0001/state-change/new/to/{new}/")
        await self.error(404, "POST", "/api/device/nope/state-change/new/to/bogus/")
        self.lifeguard.failure = StateMismatch("panda-0001", "ready", "maintenance_mode")
        answer = await self.error(409, "POST", "/api/device/panda-0001/state-change/maintenance_mode/to/ready/")
        self.assertEqual(answer.json(), {"error": "panda-0001 is in state ready, not maintenance_mode"})

    # --- BMM --------------------------------------------------------------------------------

    async def test_power_cycle(self) -> None:
        cfg = '{"b2gbase": "u"}'
        await self.ok("POST", "/api/device/panda-0001/power-cycle/", {"pxe_config": "b2g-install", "boot_config": cfg})
        await self.ok("POST", "/api/device/panda-0001/power-cycle/", {"pxe_config": "b2g-install"})
        await self.ok("POST", "/api/device/panda-0001/power-cycle/", {"assignee": "x", "duration": 5,
                                                                      "pxe_config": None, "boot_config": ""})
        self.assertEqual(self.bmm.calls, [
            ("power_cycle", "panda-0001", "b2g-install", cfg),
            ("power_cycle", "panda-0001", "b2g-install", None),
            ("power_cycle", "panda-0001", None, ""),
        ])
        self.bmm.calls.clear()
        for body in ({"pxe_config": 5}, {"pxe_config": ["x"]}, {"boot_config": 5}, {"boot_config": "{"},
                     {"pxe_config": "b2g-install", "boot_config": "not json"}, b"[]", b"{"):
            await self.error(400, "POST", "/api/device/panda-0001/power-cycle/", body)
        await self.error(404, "POST", "/api/device/panda-0001/power-cycle/", {"pxe_config": "nope"})
        await self.error(404, "POST", "/api/device/panda-0001/power-cycle/", {"pxe_config": "B2G-INSTALL"})
        self.assertEqual(self.bmm.calls, [])

    async def test_power_off_clear_pxe_ping_relay(self) -> None:
        await self.ok("GET", "/api/device/panda-0001/power-off/")
        await self.ok("POST", "/api/device/panda-0002/power-off")
        await self.ok("POST", "/api/device/panda-0003/clear-pxe/")
        self.bmm.result = True
        self.assertEqual(await self.ok("GET", "/api/device/panda-0001/ping/"), {"success": True})
        self.assertEqual(await self.ok("GET", "/api/relay/localhost-20001/test"), {"success": True})
        self.bmm.result = False
        self.assertEqual(await self.ok("GET", "/api/device/panda-0001/ping"), {"success": False})
        self.assertEqual(await self.ok("GET", "/api/relay/localhost-20001/test/"), {"success": False})
        self.assertEqual(self.bmm.calls, [
            ("power_off", "panda-0001"), ("power_off", "panda-0002"), ("clear_pxe", "panda-0003"),
            ("ping", "panda-0001"), ("relay_test", "localhost-20001"),
            ("ping", "panda-0001"), ("relay_test", "localhost-20001"),
        ])
        await self.error(404, "GET", "/api/relay/nope/test/")
        await self.error(405, "POST", "/api/device/panda-0001/ping/")
        await self.error(405, "GET", "/api/device/panda-0001/clear-pxe/")

    async def test_head_never_acts(self) -> None:
        """A HEAD of a GET kept for the original's clients answers 405 and touches nothing."""
        acting = [
            ("/api/device/panda-0001/power-off/", "GET, OPTIONS, POST"),
            ("/api/device/panda-0001/ping/", "GET, OPTIONS"),
            ("/api/relay/localhost-20001/test/", "GET, OPTIONS"),
            ("/api/device/panda-0001/event/please_self_test/", "GET, OPTIONS, POST"),
        ]
        rid = await self.add_request()
        acting.append((f"/api/request/{rid}/event/close/", "GET, OPTIONS, POST"))
        for path, allow in acting:
            answer = await self.call("HEAD", path)
            self.assertEqual((answer.code, answer.header("allow")), (405, allow), path)
        self.assertEqual((self.bmm.calls, self.lifeguard.calls, self.broker.calls), ([], [], []))
        self.assertEqual((await self.call("HEAD", "/api/device/list/")).code, 200, "reads still answer HEAD")


ActionsSQLite, ActionsMariaDB = on_both_backends(Actions)
