"""The event stream: the hub (ids, replay, filters, slow and vanished clients, keep-alive) with
``task.Clock``; the feed against the change journal on both back-ends; ``/api/events`` through a
real HTTP connection on loopback."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server

from mozpool.broker import selection
from mozpool.db import changes, logs
from mozpool.db.pool import Cursor
from mozpool.statemachine.core import MachineRunner
from mozpool.web import queries
from mozpool.web.events import (
    HOLE_SECONDS,
    RESET,
    ChangeFeed,
    EventFilter,
    EventHub,
    encode,
)
from tests.support.dbtest import on_both_backends
from tests.web.support import APITest


class FakeStreamRequest:
    """What the hub uses of a twisted.web request: headers, write, producer, finish."""

    def __init__(self, last_event_id: bytes | None = None) -> None:
        self.written: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.request_headers = {b"last-event-id": last_event_id} if last_event_id is not None else {}
        self.producer: Any = None
        self.finished = False
        self._finish: defer.Deferred[None] = defer.Deferred()

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value

    def getHeader(self, name: bytes) -> bytes | None:
        return self.request_headers.get(name)

    def write(self, data: bytes) -> None:
        assert not self.finished
        self.written.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def notifyFinish(self) -> defer.Deferred[None]:
        return self._finish

    def finish(self) -> None:
        self.finished = True
        self._finish.callback(None)

    def lose(self) -> None:
        """The client went away."""
        self._finish.errback(Failure(ConnectionError("gone")))

    def events(self) -> list[tuple[str | None, str, Any]]:
        """(id, type, data) of every event written, in order."""
        found = []
        for block in b"".join(self.written).decode("utf-8").split("\n\n"):
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                if line and not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value
            if "event" in fields:
                found.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
        return found


def state(device: str, new: str) -> dict[str, Any]:
    return {"device": device, "state": new, "old_state": "x"}


class HubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.hub = EventHub(self.clock, window=5, keepalive=15.0, max_backlog=1000)

    def subscribe(self, wanted: EventFilter = EventFilter(), last: int | None = None) -> FakeStreamRequest:
        request = FakeStreamRequest()
        self.hub.subscribe(request, wanted, last)  # type: ignore[arg-type]
        return request

    def test_headers_and_retry(self) -> None:
        request = self.subscribe()
        self.assertEqual(request.headers[b"Content-Type"], b"text/event-stream; charset=utf-8")
        self.assertEqual(request.headers[b"Cache-Control"], b"no-cache")
        self.assertEqual(request.written[0], b"retry: 3000\n\n")

    def test_ids_grow_in_publish_order(self) -> None:
        request = self.subscribe()
        for i in range(3):
            self.hub.publish("device_state", state(f"d{i}", "ready"))
        got = request.events()
        self.assertEqual([data["device"] for _, _, data in got], ["d0", "d1", "d2"])
        ids = [int(i) for i, _, _ in got]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), 3)

    def test_ids_start_past_an_earlier_run(self) -> None:
        earlier = self.hub.publish("device_state", state("d", "a")).id
        self.clock.advance(1)
        later = EventHub(self.clock)
        self.assertGreater(later.publish("device_state", state("d", "b")).id, earlier)

    def test_resume_replays_what_was_missed(self) -> None:
        first = self.hub.publish("device_state", state("a", "1"))
        self.hub.publish("device_state", state("b", "2"))
        self.hub.publish("device_state", state("c", "3"))
        request = self.subscribe(last=first.id)
        self.assertEqual([d["device"] for _, _, d in request.events()], ["b", "c"])
        self.hub.publish("device_state", state("d", "4"))
        self.assertEqual([d["device"] for _, _, d in request.events()], ["b", "c", "d"])

    def test_resume_at_the_newest_replays_nothing(self) -> None:
        last = self.hub.publish("device_state", state("a", "1"))
        self.assertEqual(self.subscribe(last=last.id).events(), [])

    def test_resume_outside_the_window_says_reset(self) -> None:
        first = self.hub.publish("device_state", state("a", "1"))
        for i in range(6):  # the window holds 5
            self.hub.publish("device_state", state(f"x{i}", "1"))
        got = self.subscribe(last=first.id).events()
        self.assertEqual([t for _, t, _ in got], [RESET])

    def test_resume_from_an_unknown_id_says_reset(self) -> None:
        self.hub.publish("device_state", state("a", "1"))
        for bogus in (-1, 5, self.hub.last_id + 100):
            self.assertEqual([t for _, t, _ in self.subscribe(last=bogus).events()], [RESET], bogus)

    def test_filters(self) -> None:
        by_device = self.subscribe(EventFilter(devices=frozenset({"a"})))
        by_request = self.subscribe(EventFilter(requests=frozenset({7})))
        by_type = self.subscribe(EventFilter(types=frozenset({"device_log"})))
        self.hub.publish("device_state", state("a", "1"))
        self.hub.publish("device_state", state("b", "1"))
        self.hub.publish("request_state", {"request": 7, "state": "ready", "old_state": "x"})
        self.hub.publish("device_log", {"device": "b", "message": "hi"})
        self.assertEqual([(t, d.get("device")) for _, t, d in by_device.events()], [("device_state", "a")])
        self.assertEqual([t for _, t, _ in by_request.events()], ["request_state"])
        self.assertEqual([(t, d["device"]) for _, t, d in by_type.events()], [("device_log", "b")])

    def test_filters_apply_to_replays(self) -> None:
        first = self.hub.publish("device_state", state("a", "1"))
        self.hub.publish("device_state", state("b", "2"))
        self.hub.publish("device_state", state("a", "3"))
        got = self.subscribe(EventFilter(devices=frozenset({"a"})), last=first.id).events()
        self.assertEqual([d["state"] for _, _, d in got], ["3"])

    def test_vanished_client_is_forgotten(self) -> None:
        request = self.subscribe()
        self.assertEqual(len(self.hub.subscribers), 1)
        request.lose()
        self.assertEqual(len(self.hub.subscribers), 0)
        self.hub.publish("device_state", state("a", "1"))
        self.assertEqual(request.events(), [])

    def test_slow_client_is_dropped_past_its_backlog(self) -> None:
        slow = self.subscribe()
        fast = self.subscribe()
        slow.producer.pauseProducing()
        big = {"device": "a", "message": "x" * 400}
        self.hub.publish("device_log", big)
        self.hub.publish("device_log", big)
        self.assertIn(slow.producer, self.hub.subscribers, "within its backlog")
        self.hub.publish("device_log", big)  # past 1000 bytes unread
        self.assertNotIn(slow.producer, self.hub.subscribers)
        self.assertTrue(slow.finished)
        self.assertEqual(len(slow.events()), 2, "nothing written after the drop")
        self.assertEqual(len(fast.events()), 3)
        self.assertEqual(self.hub.subscribers, {fast.producer})
        self.assertEqual((self.hub.dropped, self.hub.published), (1, 3))

    def test_a_client_that_reads_again_starts_a_new_backlog(self) -> None:
        request = self.subscribe()
        big = {"device": "a", "message": "x" * 400}
        for _ in range(10):
            request.producer.pauseProducing()
            self.hub.publish("device_log", big)
            request.producer.resumeProducing()
        self.assertIn(request.producer, self.hub.subscribers)

    def test_keepalive_comments(self) -> None:
        self.hub.start()
        self.addCleanup(self.hub.stop)
        request = self.subscribe()
        self.clock.advance(14)
        self.assertNotIn(b": keep-alive\n\n", request.written)
        self.clock.advance(1)
        self.assertIn(b": keep-alive\n\n", request.written)

    def test_stop_ends_every_stream(self) -> None:
        self.hub.start()
        request = self.subscribe()
        self.hub.stop()
        self.assertTrue(request.finished)
        self.assertEqual(self.hub.subscribers, set())

    def test_encoding_is_one_data_line(self) -> None:
        wire = encode(5, "device_log", {"message": "two\nlines\r\x00"})
        self.assertEqual(wire.count(b"\n"), 4)
        self.assertTrue(wire.startswith(b"id: 5\nevent: device_log\ndata: {"))


class LazyChangeData(SynchronousTestCase):
    """A journal row's event object is made when something reads it (a stream, a listener that
    looks at the state), not when the feed reads the journal."""

    def test_made_on_first_read_and_once(self) -> None:
        calls: list[str] = []
        real = json.loads
        self.patch(changes.json, "loads", lambda text: calls.append(text) or real(text))
        row = (7, changes.DEVICE_STATE, "2026-11-26 12:00:00", "panda-0001", "a.example.com", None,
               '{"state":"ready","old_state":"new"}', 3)
        ch = changes._change(row)
        self.assertEqual((ch.id, ch.kind, ch.device_id, ch.request_id), (7, "device_state", 3, None))
        self.assertEqual(calls, [], "not parsed by reading the journal")
        self.assertEqual(ch.data["state"], "ready")
        self.assertEqual(dict(ch.data), {"device": "panda-0001", "imaging_server": "a.example.com", "state": "ready",
                                         "old_state": "new", "ts": "2026-11-26T12:00:00"})
        self.assertEqual(ch.data, dict(ch.data), "equal to the plain dict")
        self.assertEqual(len(calls), 1, "parsed once")
        self.assertEqual(json.loads(encode(1, ch.kind, ch.data).split(b"data: ")[1]), dict(ch.data))

    def test_a_dropped_claim_and_bad_json(self) -> None:
        row = (8, changes.REQUEST_DEVICE, "2026-11-26 12:00:00", None, None, 12, "not json", None)
        self.assertEqual(dict(changes._change(row).data), {"device": None, "request": 12, "ts": "2026-11-26T12:00:00"})


class _CannedDB:
    """runInteraction answers from a list of canned journal reads."""

    def __init__(self, reads: list[list[changes.Change]], last: int = 0) -> None:
        self.reads = reads
        self.last = last
        self.asked: list[tuple[int, list[int]]] = []

    def runInteraction(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        if fn is changes.last_id:
            return defer.succeed(self.last)
        if fn is changes.start_at:
            return defer.succeed((self.last, []))
        self.asked.append((args[0], sorted(args[1])))
        return defer.succeed(self.reads.pop(0) if self.reads else [])


def change(i: int) -> changes.Change:
    return changes.Change(i, "device_state", {"device": f"d{i}", "state": "s"})


class FeedHoleTests(SynchronousTestCase):
    """Journal ids that appear out of order are published once each, in the order seen."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.hub = EventHub(self.clock)
        self.published: list[str] = []
        original = self.hub.publish
        self.hub.publish = lambda t, d: (self.published.append(d["device"]), original(t, d))[1]  # type: ignore[method-assign]

    def poll(self, feed: ChangeFeed) -> int:
        return self.successResultOf(defer.Deferred.fromCoroutine(feed.poll()))

    def test_starts_at_the_end_of_the_journal(self) -> None:
        db = _CannedDB([[change(11)]], last=10)
        feed = ChangeFeed(db, self.hub, self.clock)  # type: ignore[arg-type]
        self.assertEqual(self.poll(feed), 1)
        self.assertEqual(db.asked, [(10, [])])

    def test_late_commit_fills_its_hole(self) -> None:
        db = _CannedDB([[change(1), change(3)], [change(2), change(4)], []])
        feed = ChangeFeed(db, self.hub, self.clock)  # type: ignore[arg-type]
        self.poll(feed)
        self.assertEqual(feed.holes.keys(), {2})
        self.poll(feed)
        self.assertEqual(db.asked[1], (3, [2]))
        self.assertEqual(self.published, ["d1", "d3", "d2", "d4"])
        self.assertEqual(feed.holes, {})
        self.poll(feed)
        self.assertEqual(db.asked[2], (4, []))

    def test_a_hole_that_never_fills_is_given_up(self) -> None:
        db = _CannedDB([[change(1), change(3)]])
        feed = ChangeFeed(db, self.hub, self.clock)  # type: ignore[arg-type]
        self.poll(feed)
        self.clock.advance(HOLE_SECONDS + 1)
        self.poll(feed)
        self.assertEqual(feed.holes, {})
        self.poll(feed)
        self.assertEqual(db.asked[-1], (3, []))

    def test_nothing_is_published_twice(self) -> None:
        db = _CannedDB([[change(1), change(2)], [change(2)]])
        feed = ChangeFeed(db, self.hub, self.clock)  # type: ignore[arg-type]
        self.poll(feed)
        self.poll(feed)
        self.assertEqual(self.published, ["d1", "d2"])

    def test_a_failing_database_is_survived(self) -> None:
        class Failing(_CannedDB):
            def runInteraction(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
                return defer.fail(ConnectionError("down"))

        feed = ChangeFeed(Failing([]), self.hub, self.clock)  # type: ignore[arg-type]
        self.assertEqual(self.poll(feed), 0)
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class JournalFeed(APITest):
    """Every write path journals its change, and the feed turns it into the documented event."""

    async def _setUp(self) -> None:
        await super()._setUp()
        self.hub = EventHub(self.clock)
        self.feed = ChangeFeed(self.db, self.hub, self.clock)
        await self.feed.poll()  # positions the feed at the end of the seeding
        self.request = FakeStreamRequest()
        self.hub.subscribe(self.request, EventFilter(), None)  # type: ignore[arg-type]

    async def events(self) -> list[tuple[str, Any]]:
        await self.feed.poll()
        return [(t, d) for _, t, d in self.request.events()]

    async def device_id(self, name: str) -> int:
        (row,) = await self.sql("SELECT id FROM devices WHERE name = ?", (name,))
        return int(row[0])

    async def test_device_state_change(self) -> None:
        runner = MachineRunner(self.db, self.clock, _DeviceKind(), "a.example.com")
        row = await runner.load("panda-0002")
        assert row is not None
        row.state = "ready"
        await runner.write_state(row, ["entering state ready"], old_state="new")
        got = await self.events()
        self.assertEqual(got[0], ("device_state", {
            "device": "panda-0002", "imaging_server": "a.example.com", "state": "ready", "old_state": "new",
            "ts": "2013-04-02T17:05:11",
        }))
        kind, line = got[1]
        self.assertEqual(kind, "device_log")
        self.assertEqual(line["message"], "entering state ready")
        self.assertEqual(line["device"], "panda-0002")
        self.assertIsInstance(line["id"], int)

    async def test_a_write_without_a_state_change_is_no_event(self) -> None:
        runner = MachineRunner(self.db, self.clock, _DeviceKind(), "a.example.com")
        row = await runner.load("panda-0002")
        assert row is not None
        await runner.write_state(row, [], old_state=row.state)
        self.assertEqual(await self.events(), [])

    async def test_other_servers_devices(self) -> None:
        await self.add_log("device", "bpanda-0001", "2013-04-02 17:05:12", "on B")
        ((kind, data),) = await self.events()
        self.assertEqual(kind, "device_log")
        self.assertEqual((data["device"], data["imaging_server"], data["message"]), ("bpanda-0001", "b.example.com:8010", "on B"))
        self.assertEqual(data["timestamp"], "2013-04-02T17:05:12")

    async def test_request_log_and_claims(self) -> None:
        rid = await self.add_request()
        did = await self.device_id("panda-0003")

        def claim_then_release(c: Cursor) -> None:
            logs.add_log(c, "request", rid, "statemachine", "hello", "2013-04-02 17:05:11")
            selection.claim(c, rid, did, "2013-04-02 17:05:11")
            selection.clear_claim(c, rid, "2013-04-02 17:05:11")

        await self.db.runInteraction(claim_then_release)
        got = await self.events()
        self.assertEqual([k for k, _ in got], ["request_log", "request_device", "request_device"])
        self.assertEqual(got[0][1]["request"], rid)
        self.assertEqual((got[1][1]["request"], got[1][1]["device"]), (rid, "panda-0003"))
        self.assertEqual((got[2][1]["request"], got[2][1]["device"]), (rid, None))

    async def test_comments_and_environment(self) -> None:
        did = await self.device_id("panda-0001")
        await self.db.runInteraction(queries.set_comments, did, "flaky\nusb", "2013-04-02 17:05:11")
        await self.db.runInteraction(queries.set_environment, did, "staging", "2013-04-02 17:05:11")
        got = await self.events()
        self.assertEqual(got[0], ("device_comments", {
            "device": "panda-0001", "imaging_server": "a.example.com", "comments": "flaky\nusb", "ts": "2013-04-02T17:05:11",
        }))
        self.assertEqual(got[1][0], "device_environment")
        self.assertEqual(got[1][1]["environment"], "staging")

    async def test_through_the_api(self) -> None:
        await self.ok("POST", "/api/device/panda-0001/set-comments/", {"comments": "via the API"})
        (kind, data), (audit_kind, audit) = await self.events()
        self.assertEqual((kind, data["device"], data["comments"]), ("device_comments", "panda-0001", "via the API"))
        self.assertEqual((audit_kind, audit["source"]), ("device_log", "audit"))
        self.assertEqual(audit["message"], "POST /api/device/panda-0001/set-comments/ by anonymous (auth open)")


class _DeviceKind:
    table = "devices"
    log_kind = "device"
    key_column = "name"
    unknown_state = "unknown"
    timeouts: dict[str, float | None] = {"new": None, "ready": None}


JournalFeedSQLite, JournalFeedMariaDB = on_both_backends(JournalFeed)


class StreamOverHTTP(APITest, TestCase):
    """``/api/events`` through a real Site on loopback: a streaming GET that never finishes."""

    async def _setUp(self) -> None:
        await super()._setUp()
        self.hub = EventHub(self.clock)
        self.api = self.makeAPI(events=self.hub)
        self.port = reactor.listenTCP(0, server.Site(self.api.resource()), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.streams: list[defer.Deferred[Any]] = []
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(self.close_streams()))

    async def open(self, query: str = "", headers: dict[str, str] | None = None) -> tuple[Any, list[bytes]]:
        received: list[bytes] = []
        response = await treq.get(self.url + "/api/events" + query, headers=headers, persistent=False)
        if response.code == 200:
            done = treq.collect(response, received.append)
            done.addErrback(lambda f: None)
            self.streams.append(done)
        return response, received

    async def close_streams(self) -> None:
        """Drop every stream from the server's side and wait for the clients to see it."""
        for sub in list(self.hub.subscribers):
            sub.close()
        for done in self.streams:
            await done

    async def until(self, received: list[bytes], text: bytes) -> bytes:
        deadline = reactor.seconds() + 10
        while reactor.seconds() < deadline:
            if text in b"".join(received):
                return b"".join(received)
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"{text!r} never arrived; got {b''.join(received)!r}")

    async def test_stream_with_filter_and_resume(self) -> None:
        response, received = await self.open("?device=panda-0002&type=device_state,device_log")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream; charset=utf-8"])
        await self.until(received, b"retry: 3000")
        self.hub.publish("device_state", state("panda-0001", "ready"))
        second = self.hub.publish("device_state", state("panda-0002", "ready"))
        self.hub.publish("request_state", {"request": 1, "state": "ready", "old_state": "x"})
        body = await self.until(received, b'"panda-0002"')
        self.assertNotIn(b"panda-0001", body)
        self.assertIn(f"id: {second.id}\nevent: device_state\n".encode(), body)

        third = self.hub.publish("device_log", {"device": "panda-0002", "message": "later"})
        response, again = await self.open("?device=panda-0002", headers={"Last-Event-ID": str(second.id)})
        body = await self.until(again, b"later")
        self.assertIn(f"id: {third.id}".encode(), body)
        self.assertNotIn(b"request_state", body)
        self.assertEqual(len(self.hub.subscribers), 2)
        metrics = (await treq.content(await treq.get(self.url + "/metrics", persistent=False))).decode()
        self.assertIn("mozpool_event_subscribers 2\n", metrics)
        self.assertIn("mozpool_events_published_total 4\n", metrics)

    async def test_bad_filters_are_400(self) -> None:
        for query in ("?type=nonsense", "?request=abc", "?last_event_id=x"):
            response = await treq.get(self.url + "/api/events" + query, persistent=False)
            self.assertEqual(response.code, 400, query)
            self.assertIn("error", json.loads(await treq.content(response)))

    async def test_head_does_not_stream(self) -> None:
        response = await treq.head(self.url + "/api/events", persistent=False)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.hub.subscribers, set())

    async def test_without_a_hub_it_is_not_available(self) -> None:
        self.api.events = None
        response = await treq.get(self.url + "/api/events", persistent=False)
        self.assertNotEqual(response.code, 200)
        self.assertIn("error", json.loads(await treq.content(response)))
