"""The blocking client over a pretend lab (fake ``http.client`` connections, a fake clock):
the device context manager, how one exchange is bounded and classified, event streams and
following a log."""

from __future__ import annotations

import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mozpool.client import errors
from mozpool.client.plans import Attempt, Progress, Reply, Unreachable
from mozpool.client.sync import Client
from tests.client.fakes import DEAD, SILENT, FakePool, Lab, config

A, B = "http://a:8010", "http://b:8010"


class SyncTest(SynchronousTestCase):
    def setUp(self) -> None:
        self.lab = Lab()

    def client(self, *servers: str, **kw: Any) -> Client:
        return Client(settings=config(*servers, **kw), connect=self.lab.connect, sleep=self.lab.clock.sleep,
                      clock=self.lab.clock.now, rng=random.Random(3))


class ContextManager(SyncTest):
    def test_handed_over_and_returned(self) -> None:
        pool = FakePool(A)
        self.lab.servers = {A: pool}
        progress: list[Progress] = []
        with self.client(A).device("any", image="android", duration=600, on_progress=progress.append) as dev:
            self.assertEqual((dev.name, dev.fqdn, dev.request_id), ("panda-0001", "panda-0001.lab.example.com", 1))
            self.assertEqual((dev.request.state, dev.imaging_server), ("ready", "a:8010"))
            self.assertEqual(pool.requests[1]["state"], "ready")
            dev.renew(1200)
            self.assertEqual(pool.requests[1]["renewed"], 1200)
        self.assertEqual(pool.requests[1]["state"], "closed")
        self.assertEqual(progress[-1].state, "ready")

    def test_priority_and_queue_timeout(self) -> None:
        """The context manager passes issue 14's fields through to the creation call."""
        pool = FakePool(A)
        self.lab.servers = {A: pool}
        with self.client(A).device("any", image="android", duration=600, priority=75, queue_timeout=0):
            pass
        self.assertEqual((pool.requests[1]["priority"], pool.requests[1]["queue_timeout"]), (75, 0))

    def test_returned_when_the_block_raises(self) -> None:
        pool = FakePool(A)
        self.lab.servers = {A: pool}
        with self.assertRaises(ZeroDivisionError) as caught:
            with self.client(A).device("any", image="android", duration=600):
                1 / 0
        self.assertEqual(pool.requests[1]["state"], "closed")
        self.assertEqual(caught.exception.__notes__, ["request 1 was returned"])

    def test_failed_return_does_not_mask(self) -> None:
        """The block's exception goes on, with a note that returning failed too."""
        self.lab.servers = {A: FakePool(A)}
        with self.assertRaises(ZeroDivisionError) as caught:
            with self.client(A).device("any", image="android", duration=600):
                self.lab.servers[A] = DEAD
                1 / 0
        self.assertIn("returning request 1 failed too", caught.exception.__notes__[0])
        # Without an exception in the block, a failed return is the error.
        self.lab.servers = {A: FakePool(A)}
        with self.assertRaises(errors.NoServerReachable):
            with self.client(A).device("any", image="android", duration=600):
                self.lab.servers[A] = DEAD

    def test_not_ready(self) -> None:
        """A request that fails is returned and never handed over."""
        pool = FakePool(A, script=("finding_device", "failed_device_not_found"))
        self.lab.servers = {A: pool}
        entered = []
        with self.assertRaises(errors.RequestFailed):
            with self.client(A).device("any", image="android", duration=600) as dev:
                entered.append(dev)
        self.assertEqual(entered, [])

    def test_busy_and_unknown_image(self) -> None:
        pool = FakePool(A)
        self.lab.servers = {A: pool}
        client = self.client(A)
        client.request("panda-0001", "android", 60)
        with self.assertRaises(errors.DeviceBusy) as busy:
            client.request("panda-0001", "android", 60)
        self.assertEqual(str(busy.exception), "device panda-0001 is busy: held by request 1")
        with self.assertRaises(errors.NotFound) as unknown:
            client.request("any", "nosuch", 60)
        self.assertEqual(str(unknown.exception), "unknown image nosuch")


class Exchanges(SyncTest):
    def test_dead_server(self) -> None:
        out = self.client(A)._perform(Attempt("GET", A + "/api/version/", None, {}, 5))
        self.assertEqual(out, Unreachable("connection refused", sent=False))

    def test_silent_server(self) -> None:
        self.lab.servers = {A: SILENT}
        out = self.client(A)._perform(Attempt("GET", A + "/api/version/", None, {}, 5))
        self.assertEqual(out, Unreachable("no answer within 5 s", sent=True))

    def test_answer(self) -> None:
        """Method, path with query, body and headers as given; every socket step bounded by what
        is left of the attempt; the connection closed."""
        made = []

        def connect(scheme: str, netloc: str, timeout: float) -> Any:
            made.append(self.lab.connect(scheme, netloc, timeout))
            return made[-1]

        self.lab.servers = {A: lambda m, p, b: (200, {"path": p, "body": b})}
        client = Client(settings=config(A), connect=connect, clock=self.lab.clock.now)
        out = client._perform(Attempt("POST", A + "/api/x/?q=1", b'{"k": 1}', {"X-Y": "z"}, 7))
        assert isinstance(out, Reply)
        self.assertEqual((out.status, out.headers["content-type"]), (200, "application/json"))
        self.assertEqual(out.body, b'{"path": "/api/x/?q=1", "body": {"k": 1}}')
        self.assertEqual(self.lab.sent[0].headers, {"X-Y": "z"})
        (conn,) = made
        self.assertTrue(conn.closed)
        self.assertEqual(conn.timeout, 7)
        self.assertTrue(conn.sock.timeouts and all(0 < t <= 7 for t in conn.sock.timeouts))

    def test_bad_scheme(self) -> None:
        client = Client(settings=config(A))
        out = client._perform(Attempt("GET", "ftp://a/api/version/", None, {}, 5))
        self.assertIsInstance(out, Unreachable)


def sse(*events: tuple[int, str, str]) -> bytes:
    return b"retry: 2000\n\n" + b"".join(f"id: {i}\nevent: {t}\ndata: {d}\n\n".encode() for i, t, d in events)


class Streams(SyncTest):
    def test_events_resume(self) -> None:
        """A stream the server ends is reopened after the last id seen."""
        queries = []

        def server(method: str, path: str, body: Any) -> Any:
            queries.append(path)
            if len(queries) == 1:
                return 200, sse((5, "device_state", '{"device": "p1", "state": "ready"}')), {}
            return 200, sse((6, "reset", "{}")), {}

        self.lab.servers = {A: server}
        stream = self.client(A).events(devices=["p1"], timeout=60)
        got = [next(stream), next(stream)]
        self.assertEqual([(e.id, e.type) for e in got], [(5, "device_state"), (6, "reset")])
        self.assertEqual(queries, ["/api/events?device=p1", "/api/events?device=p1&last_event_id=5"])
        self.assertEqual(self.lab.sent[0].headers["Accept"], "text/event-stream")

    def test_follow_log_stream(self) -> None:
        """The latest entries, then the stream's, without repeating one the log already gave."""
        log = [{"id": i, "timestamp": "t", "source": "bmm", "message": f"m{i}"} for i in (1, 2)]

        def server(method: str, path: str, body: Any) -> Any:
            if path.startswith("/api/events"):
                return 200, sse(
                    (10, "device_log", '{"device": "p1", "id": 2, "timestamp": "t", "source": "bmm", "message": "m2"}'),
                    (11, "device_log", '{"device": "p1", "id": 3, "timestamp": "t", "source": "bmm", "message": "m3"}'),
                )
            return 200, {"log": log}

        self.lab.servers = {A: server}
        entries = self.client(A).follow_log("p1", limit=10, timeout=0.5)
        self.assertEqual([e["message"] for e in entries], ["m1", "m2", "m3"])
        self.assertTrue(self.lab.sent[0].url.startswith(A + "/api/events?device=p1&type=device_log"))
        self.assertEqual(self.lab.sent[1].url, A + "/api/device/p1/log/?limit=10")

    def test_follow_log_polls_an_old_server(self) -> None:
        """No event stream (the original MozPool): the log is polled."""
        log: list[dict[str, Any]] = []

        def server(method: str, path: str, body: Any) -> Any:
            if path.startswith("/api/events"):
                return 404, {"error": "no such endpoint"}
            log.append({"id": len(log) + 1, "timestamp": "t", "source": "s", "message": f"m{len(log) + 1}"})
            return 200, {"log": log}

        self.lab.servers = {A: server}
        entries = list(self.client(A).follow_log("p1", timeout=3, interval=1))
        self.assertEqual([e["id"] for e in entries], [1, 2, 3, 4])
