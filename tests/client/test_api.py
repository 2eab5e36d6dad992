"""The client's API table (what each call sends, how answers are read), its event-stream parser
and where its settings come from.  No I/O."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mozpool.client import api, config, errors
from mozpool.client.sse import Event, SSEParser


def answer(call: api.Call, status: int, body: Any) -> Any:
    return api.result(call, status, b"" if body is None else json.dumps(body).encode())


REQUEST = {"id": 7, "requested_device": "any", "assignee": "ci", "expires": "2030-01-01T00:00:00",
           "environment": "any", "image": "android", "boot_config": "{}", "assigned_device": "panda-0003",
           "url": "http://imaging2:8010/api/request/7/"}


class Building(SynchronousTestCase):
    def test_request_device(self) -> None:
        """The body the server reads (http-api.md 3.4): boot-config keys beside the others, no
        environment when any, never sent twice."""
        call = api.request_device("any", "b2g", 3600, "ci@example.com", None, {"b2gbase": "http://b/"})
        self.assertEqual((call.method, call.path), ("POST", "/api/device/any/request/"))
        self.assertEqual(call.body, {"b2gbase": "http://b/", "assignee": "ci@example.com", "duration": 3600,
                                     "image": "b2g"})
        self.assertFalse(call.idempotent)
        named = api.request_device("panda 1/2", "android", 60, "me", "staging")
        self.assertEqual(named.path, "/api/device/panda%201%2F2/request/")
        self.assertEqual(named.body["environment"], "staging")
        self.assertNotIn("environment", api.request_device("any", "android", 60, "me", "any").body or {})

    def test_request_priority_and_queue_timeout(self) -> None:
        """Issue 14's fields are sent when given (0 included: fail at once), and left out
        otherwise so the server's defaults apply and an older server sees its own body."""
        call = api.request_device("any", "android", 60, "ci", priority=90, queue_timeout=0)
        self.assertEqual((call.body["priority"], call.body["queue_timeout"]), (90, 0))
        plain = api.request_device("any", "android", 60, "ci").body or {}
        self.assertNotIn("priority", plain)
        self.assertNotIn("queue_timeout", plain)

    def test_paths(self) -> None:
        """Every call's method and path (spec section 9), with trailing slashes."""
        cases = [
            (api.version(), "GET", "/api/version/"),
            (api.devices(), "GET", "/api/device/list/?details=1"),
            (api.device_names(), "GET", "/api/device/list/"),
            (api.requests(), "GET", "/api/request/list/"),
            (api.requests(include_closed=True), "GET", "/api/request/list/?include_closed=1"),
            (api.request_details(3), "GET", "/api/request/3/details/"),
            (api.request_status(3), "GET", "/api/request/3/status/"),
            (api.request_log(3, limit=10), "GET", "/api/request/3/log/?limit=10"),
            (api.renew(3, 60), "POST", "/api/request/3/renew/"),
            (api.return_request(3), "POST", "/api/request/3/return/"),
            (api.request_event(3, "close"), "POST", "/api/request/3/event/close/"),
            (api.device_state("p1"), "GET", "/api/device/p1/state/"),
            (api.device_status("p1"), "GET", "/api/device/p1/status/"),
            (api.device_log("p1", timeperiod=300), "GET", "/api/device/p1/log/?timeperiod=300"),
            (api.power_cycle("p1"), "POST", "/api/device/p1/power-cycle/"),
            (api.power_off("p1"), "POST", "/api/device/p1/power-off/"),
            (api.ping("p1"), "GET", "/api/device/p1/ping/"),
            (api.state_change("p1", "ready", "locked_out"), "POST", "/api/device/p1/state-change/ready/to/locked_out/"),
            (api.please("p1", "self_test"), "POST", "/api/device/p1/event/please_self_test/"),
            (api.images(), "GET", "/api/image/list/"),
            (api.environments(), "GET", "/api/environment/list/"),
            (api.pool_summary(), "GET", "/api/pool/summary/"),
            (api.server_list(), "GET", "/api/server/list/"),
            (api.events(["p1", "p2"], [], ["device_log"], 42), "GET",
             "/api/events?device=p1%2Cp2&type=device_log&last_event_id=42"),
        ]
        for call, method, path in cases:
            self.assertEqual((call.method, call.path), (method, path))
        self.assertEqual(api.renew(3, 60).body, {"duration": 60})
        self.assertTrue(api.events().stream)

    def test_bodies(self) -> None:
        self.assertEqual(api.please("p1", "image", "b2g", {"b2gbase": "u"}).body,
                         {"image": "b2g", "boot_config": '{"b2gbase": "u"}'})
        self.assertEqual(api.power_cycle("p1", "b2g-install", {"b2gbase": "u"}).body,
                         {"pxe_config": "b2g-install", "boot_config": '{"b2gbase": "u"}'})
        self.assertEqual(api.power_cycle("p1").body, {})
        self.assertRaises(ValueError, api.please, "p1", "dance")
        self.assertRaises(ValueError, api.please, "p1", "image")


class Parsing(SynchronousTestCase):
    def test_request_object(self) -> None:
        created = answer(api.request_device("any", "android", 60, "ci"), 200, {"request": REQUEST})
        self.assertIsInstance(created, api.Request)
        self.assertEqual((created.id, created.state, created.assigned_device, created.server),
                         (7, "new", "panda-0003", "http://imaging2:8010"))
        self.assertEqual(created.to_json(), {**REQUEST, "state": "new"})
        details = answer(api.request_details(7), 200, REQUEST)
        self.assertEqual((details.id, details.state), (7, None))

    def test_priority_and_queue_timeout(self) -> None:
        """Read from the request object; None from a server without a queue."""
        created = answer(api.request_device("any", "android", 60, "ci"), 200,
                         {"request": {**REQUEST, "priority": 80, "queue_timeout": 1800}})
        self.assertEqual((created.priority, created.queue_timeout), (80, 1800))
        old = answer(api.request_device("any", "android", 60, "ci"), 200, {"request": REQUEST})
        self.assertEqual((old.priority, old.queue_timeout), (None, None))

    def test_queue_place(self) -> None:
        """A status's ``queue`` as a QueuePlace, in JSON output too; none when absent, null or
        malformed (a wait must not break on it)."""
        status = {"state": "finding_device", "log": [],
                  "queue": {"position": 3, "ahead": 2, "eta": "2030-01-01T12:04:59", "why": "2 ahead"}}
        place = api.QueuePlace.from_status(status)
        self.assertEqual(place, api.QueuePlace(3, 2, "2030-01-01T12:04:59", "2 ahead"))
        assert place is not None
        self.assertEqual(place.text(), "3rd in queue (2 ahead), ready by ~12:04 UTC")
        self.assertEqual(place.text("2030-01-01"), "3rd in queue (2 ahead), ready by ~12:04 UTC")
        self.assertEqual(place.text("2029-12-31"), "3rd in queue (2 ahead), ready by ~2030-01-01 12:04 UTC")
        self.assertEqual(api.QueuePlace(1, 0, None, "").text(), "1st in queue (0 ahead), no estimate yet")
        for bad in ({"state": "ready", "log": []}, {"state": "ready", "queue": None}, {"queue": {"position": "x"}},
                    {"queue": {"ahead": 1}}, {"queue": [1, 2]}, None):
            self.assertIsNone(api.QueuePlace.from_status(bad), bad)
        request = api.Request(REQUEST, "finding_device")
        request.queue = place
        self.assertEqual(request.to_json()["queue"], status["queue"])
        self.assertNotIn("queue", api.Request(REQUEST, "ready").to_json())

    def test_ordinal(self) -> None:
        self.assertEqual([api.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 100, 101, 111, 112)],
                         ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "100th",
                          "101st", "111th", "112th"])

    def test_busy(self) -> None:
        """409 on a named device: DeviceBusy naming the device and the holder, with the closed request."""
        call = api.request_device("panda-0003", "android", 60, "ci")
        closed = {**REQUEST, "requested_device": "panda-0003", "assigned_device": ""}
        with self.assertRaises(errors.DeviceBusy) as caught:
            answer(call, 409, {"error": "device panda-0003 is held by request 5", "request": closed})
        self.assertEqual(str(caught.exception), "device panda-0003 is busy: held by request 5")
        self.assertEqual(caught.exception.request, closed)

    def test_errors(self) -> None:
        """Each status as its exception, with the server's message as the one line."""
        call = api.state_change("p1", "ready", "locked_out")
        cases = [(404, errors.NotFound), (400, errors.BadRequest), (401, errors.NotAllowed),
                 (403, errors.NotAllowed), (409, errors.Conflict), (500, errors.ServerError), (418, errors.ApiError)]
        for status, kind in cases:
            with self.assertRaises(kind) as caught:
                answer(call, status, {"error": "unknown image nosuch"})
            self.assertEqual((str(caught.exception), caught.exception.status), ("unknown image nosuch", status))
        with self.assertRaises(errors.ServerError) as caught:
            api.result(api.version(), 502, b"<html>bad gateway</html>")
        self.assertEqual(str(caught.exception), "version: HTTP 502")
        with self.assertRaises(errors.NotFound) as caught:
            answer(api.server_list(), 404, {"error": "no such endpoint"})
        self.assertIn("this server has no /api/server/list/", str(caught.exception))

    def test_bad_answers(self) -> None:
        """A success that is not the API's JSON is the server's fault, said in one line."""
        self.assertRaises(errors.ServerError, api.result, api.version(), 200, b"not json")
        self.assertRaises(errors.ServerError, answer, api.version(), 200, {"versio": 1})
        self.assertIsNone(answer(api.renew(1, 60), 204, None))

    def test_devices_filter(self) -> None:
        rows = [{"name": "a", "state": "ready", "environment": "prod"},
                {"name": "b", "state": "failed_pxe_booting", "environment": "prod"},
                {"name": "c", "state": "failed_self_test", "environment": "staging"}]
        body = {"devices": rows}
        self.assertEqual([r["name"] for r in answer(api.devices("failed_*"), 200, body)], ["b", "c"])
        self.assertEqual([r["name"] for r in answer(api.devices(None, "prod"), 200, body)], ["a", "b"])
        self.assertEqual(answer(api.device("c"), 200, body), rows[2])
        with self.assertRaises(errors.NotFound) as caught:
            answer(api.device("z"), 200, body)
        self.assertEqual(str(caught.exception), "unknown device z")

    def test_servers_from_devices(self) -> None:
        rows = [{"imaging_server": "b:8010"}, {"imaging_server": "a:8010"}, {"imaging_server": "b:8010"}]
        self.assertEqual(api.servers_from_devices(rows), [
            {"fqdn": "a:8010", "alive": None, "last_seen": None, "devices": 1},
            {"fqdn": "b:8010", "alive": None, "last_seen": None, "devices": 2}])

    def test_final_states(self) -> None:
        for state in ("closed", "expired", "failed_bad_image", "failed_whatever"):
            self.assertTrue(api.is_final(state), state)
        for state in ("new", "finding_device", "pending", "ready", "contact_lifeguard"):
            self.assertFalse(api.is_final(state), state)

    def test_request_failed_message(self) -> None:
        self.assertEqual(str(errors.RequestFailed(3, "failed_bad_image")),
                         "request 3 failed: failed_bad_image (installing the image failed in a way that points at "
                         "the image)")
        self.assertEqual(str(errors.RequestFailed(3, "failed_device_busy")),
                         "request 3 failed: failed_device_busy (no fitting device became free within its "
                         "queue_timeout)")
        self.assertEqual(str(errors.RequestFailed(3, "closed")),
                         "request 3 closed before it was ready (expired or returned)")


class EventStream(SynchronousTestCase):
    def test_any_chunking(self) -> None:
        """The same events whether the bytes come at once or one at a time, any line ending."""
        wire = (b"retry: 2000\n\n: keep-alive\n\nid: 5\nevent: device_state\ndata: {\"device\": \"p1\"}\n\n"
                b"id: 6\r\nevent: reset\r\ndata: {}\r\n\r\ndata: line one\rdata: line two\r\r\n")
        expected = [Event(5, "device_state", {"device": "p1"}), Event(6, "reset", {}),
                    Event(None, "message", "line one\nline two")]
        self.assertEqual(SSEParser().feed(wire), expected)
        parser = SSEParser()
        one_by_one = [e for i in range(len(wire)) for e in parser.feed(wire[i:i + 1])]
        self.assertEqual(one_by_one, expected)
        self.assertEqual(parser.last_id, 6)


class Settings(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_precedence(self) -> None:
        """The call's servers, then $MOZPOOL_SERVERS, then the file; likewise the token."""
        path = self.write("[client]\nservers = file1:8010, http://file2:8010/\ntoken = t-file\ntimeout = 12\n")
        env = {"MOZPOOL_CLIENT_CONFIG": path}
        from_file = config.load(env=env)
        self.assertEqual(from_file.servers, ("http://file1:8010", "http://file2:8010"))
        self.assertEqual((from_file.token, from_file.timeout, from_file.attempt_timeout), ("t-file", 12.0, 10.0))
        env.update(MOZPOOL_SERVERS="https://env:8443/api/,env2:8010", MOZPOOL_TOKEN="t-env")
        from_env = config.load(env=env)
        self.assertEqual(from_env.servers, ("https://env:8443", "http://env2:8010"))
        self.assertEqual(from_env.token, "t-env")
        given = config.load(["a:1", "a:1", "http://b:2"], token="t-arg", timeout=5, env=env)
        self.assertEqual((given.servers, given.token, given.timeout, given.attempt_timeout),
                         (("http://a:1", "http://b:2"), "t-arg", 5.0, 5.0))

    def test_default_file(self) -> None:
        home = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(home, "mozpool"))
        with open(os.path.join(home, "mozpool", "client.ini"), "w") as f:
            f.write("[client]\nservers = xdg:8010\nassignee = ci-bot\n")
        loaded = config.load(env={"XDG_CONFIG_HOME": home})
        self.assertEqual((loaded.servers, loaded.assignee), (("http://xdg:8010",), "ci-bot"))

    def test_no_servers(self) -> None:
        with self.assertRaises(config.ConfigError) as caught:
            config.load(env={"XDG_CONFIG_HOME": self.mktemp()})
        self.assertIn("--servers", str(caught.exception))
        self.assertIn("$MOZPOOL_SERVERS", str(caught.exception))
        self.assertRaises(config.ConfigError, config.load, "a:1", timeout=0, env={})
        self.assertRaises(config.ConfigError, config.load, env={"MOZPOOL_CLIENT_CONFIG": self.write("[client\n")})
