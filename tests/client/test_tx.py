"""The Twisted client in memory: a pretend lab behind a fake treq and a ``Clock``, and one real
treq ``StubTreq`` over a small resource, for what treq itself does with our calls."""

from __future__ import annotations

import json
import random
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer, error, task
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from mozpool.client import errors
from mozpool.client.plans import Progress
from mozpool.client.tx import MozpoolClient
from tests.client.fakes import DEAD, SILENT, FakePool, Lab, config

A, B = "http://a:8010", "http://b:8010"


class TxTest(SynchronousTestCase):
    def setUp(self) -> None:
        self.lab = Lab()
        self.clock = task.Clock()
        self.http = self.lab.treq()

    def client(self, *servers: str, **kw: Any) -> MozpoolClient:
        client = MozpoolClient(reactor=self.clock, http=self.http, settings=config(*servers, **kw),
                               rng=random.Random(0))
        client.context.order = lambda prefer=None: ([prefer] if prefer else []) + [  # type: ignore[method-assign]
            s for s in servers if s != prefer]
        return client


class Calls(TxTest):
    def test_dead_server_skipped(self) -> None:
        self.lab.servers = {A: DEAD, B: FakePool(B)}
        self.assertEqual(self.successResultOf(self.client(A, B).version()), "test")

    def test_silent_server_times_out(self) -> None:
        """A server that never answers is cancelled after the attempt bound, on the clock given."""
        self.lab.servers = {A: SILENT, B: FakePool(B)}
        d = self.client(A, B, attempt_timeout=4).version()
        self.assertNoResult(d)
        self.clock.advance(3.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "test")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_all_gone(self) -> None:
        self.lab.servers = {A: SILENT, B: SILENT}
        d = self.client(A, B, timeout=6, attempt_timeout=4).devices()
        self.clock.advance(4)
        self.clock.advance(2)
        failure = self.failureResultOf(d, errors.NoServerReachable)
        self.assertIn("http://b:8010: no answer within 2 s", str(failure.value))

    def test_not_connected_is_not_sent(self) -> None:
        """A request creation cancelled while connecting was never sent: the next server may
        take it.  One cancelled after it was sent is not repeated."""
        pool = FakePool(B)
        self.lab.servers = {A: SILENT, B: pool}

        def connecting(method: str, url: str, **kw: Any) -> defer.Deferred[Any]:
            if url.startswith(A):
                return defer.Deferred(lambda d: d.errback(error.ConnectingCancelledError(None)))
            return self.lab.treq().request(method, url, **kw)

        self.http.request = connecting  # type: ignore[method-assign]
        d = self.client(A, B, attempt_timeout=2).request("any", "android", 60)
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(d).id, 1)

        self.http = self.lab.treq()
        d = self.client(A, B, attempt_timeout=2).request("any", "android", 60)
        self.clock.advance(2)
        self.failureResultOf(d, errors.MaybeSent)
        self.assertEqual(len(pool.requests), 1)

    def test_cancelled_by_the_caller(self) -> None:
        """Cancelling a call is a cancellation, not a server to skip."""
        self.lab.servers = {A: SILENT, B: FakePool(B)}
        d = self.client(A, B).version()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Waiting(TxTest):
    def test_wait_polls_on_the_clock(self) -> None:
        pool = FakePool(A, script=("finding_device", "pending", "ready"))
        self.lab.servers = {A: pool}
        client = self.client(A)
        created = self.successResultOf(client.request("any", "android", 60))
        progress: list[Progress] = []
        d = client.wait(created, timeout=60, on_progress=progress.append, interval=5)
        self.assertEqual([p.state for p in progress], ["finding_device"])
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(d).state, "ready")
        self.assertEqual([p.state for p in progress], ["finding_device", "pending", "ready"])

    def test_device_context_manager(self) -> None:
        """``async with client.device(...)``: returned on exit, also when the block raises."""
        pool = FakePool(A, script=("ready",))
        self.lab.servers = {A: pool}
        client = self.client(A)
        seen: list[str] = []

        async def job() -> None:
            async with client.device("any", image="android", duration=600) as dev:
                seen.append(dev.fqdn)
                await dev.renew(900)
                raise RuntimeError("tests failed")

        failure = self.failureResultOf(defer.Deferred.fromCoroutine(job()), RuntimeError)
        self.assertEqual(seen, ["panda-0001.lab.example.com"])
        self.assertEqual((pool.requests[1]["renewed"], pool.requests[1]["state"]), (900, "closed"))
        self.assertEqual(failure.value.__notes__, ["request 1 was returned"])

        async def quiet_job() -> None:
            async with client.device("panda-0002", image="android", duration=600) as dev:
                seen.append(dev.name)

        self.successResultOf(defer.Deferred.fromCoroutine(quiet_job()))
        self.assertEqual((seen[-1], pool.requests[2]["state"]), ("panda-0002", "closed"))

    def test_device_with_priority_and_queue_timeout(self) -> None:
        """The context manager passes issue 14's fields through to the creation call, and its
        progress carries the queue place while the request waits."""
        pool = FakePool(A, devices=("panda-0001",), script=("finding_device", "ready"))
        pool.devices["panda-0001"]["request_id"] = 99
        pool.queue[1] = [{"position": 2, "ahead": 1, "eta": None, "why": "1 ahead"}]
        self.lab.servers = {A: pool}
        progress: list[Progress] = []

        async def job() -> None:
            async with self.client(A).device("any", image="android", duration=600, priority=10, queue_timeout=30,
                                             on_progress=progress.append, interval=1):
                pass

        d = defer.Deferred.fromCoroutine(job())
        pool.devices["panda-0001"]["request_id"] = None
        self.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual((pool.requests[1]["priority"], pool.requests[1]["queue_timeout"]), (10, 30))
        self.assertEqual(progress[1].line(), "request 1: finding_device, no device yet — 2nd in queue (1 ahead), "
                                             "no estimate yet")

    def test_cancelled_wait_returns_the_request(self) -> None:
        pool = FakePool(A, script=("pending",))
        self.lab.servers = {A: pool}
        d = self.client(A).request_ready("any", "android", 600, interval=5)
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(pool.requests[1]["state"], "closed")


class Redirecting(Resource):
    """``/api/device/p1/set-comments/``-like calls: 302 from /old/ to /new/, which echoes."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        if request.path.startswith(b"/old/"):
            request.setResponseCode(302)
            request.setHeader(b"Location", b"http://b.example/new/" + request.path[len(b"/old/"):])
            return b'{"redirect": "elsewhere"}'
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"method": request.method.decode(), "path": request.path.decode(),
                           "body": json.loads(request.content.read() or b"null"),
                           "auth": (request.getHeader(b"authorization") or b"").decode()}).encode()


class RealTreq(SynchronousTestCase):
    def test_redirect_with_treq(self) -> None:
        """Through real treq: the redirect is followed by the client (same method, body and
        token), not by treq (which would turn the POST into a GET)."""
        from mozpool.client import api

        client = MozpoolClient(reactor=task.Clock(), http=StubTreq(Redirecting()),
                               settings=config("http://a.example", token="mpt_1"))
        call = api.Call("POST", "/old/api/x/", {"k": 1}, what="test")
        answer = self.successResultOf(client._call(call))
        self.assertEqual(answer, {"method": "POST", "path": "/new/api/x/", "body": {"k": 1}, "auth": "Bearer mpt_1"})
