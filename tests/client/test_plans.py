"""The client's rules, shared by both clients, run against a pretend lab: which servers are
tried in what order, what is skipped, redirects, bounds, waiting for a request, and returning
it when the wait fails."""

from __future__ import annotations

import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mozpool.client import api, errors, plans
from mozpool.client.sync import drive
from tests.client.fakes import DEAD, SILENT, FakePool, Lab, config

A, B, C = "http://a:8010", "http://b:8010", "http://c:8010"


def version_server(name: str) -> Any:
    return lambda method, path, body: (200, {"version": name})


class Plans(SynchronousTestCase):
    def setUp(self) -> None:
        self.lab = Lab()
        self.emitted: list[Any] = []

    def context(self, *servers: str, seed: int = 1, **kw: Any) -> plans.Context:
        return plans.Context(config(*servers, **kw), self.lab.clock.now, random.Random(seed))

    def play(self, plan: plans.Plan[Any]) -> Any:
        steps = drive(plan, self.lab.perform, self.lab.clock.sleep)
        while True:
            try:
                self.emitted.append(next(steps))
            except StopIteration as stop:
                return stop.value

    def tried(self) -> list[str]:
        return [plans.server_of(s.url) for s in self.lab.sent]


class Rotation(Plans):
    def test_random_order(self) -> None:
        """The order is the injected Random's shuffle, a new one per call; all servers are tried."""
        ctx = self.context(A, B, C, seed=4)
        expected = random.Random(4)
        orders = []
        for _ in range(5):
            names = [A, B, C]
            expected.shuffle(names)
            orders.append(names)
        self.assertEqual([ctx.order() for _ in range(5)], orders)
        self.assertGreater(len({tuple(o) for o in orders}), 1)
        self.assertEqual(ctx.order(prefer=C)[0], C)
        self.assertEqual(sorted(ctx.order(prefer=C)), [A, B, C])
        self.assertEqual(ctx.order(prefer="http://owner:1")[0], "http://owner:1")

    def test_dead_and_unavailable_skipped(self) -> None:
        """Refused connections, silence and 503 move on to the next server; the answer of the
        first that answers is the result."""
        self.lab.servers = {A: DEAD, B: SILENT, C: lambda m, p, b: (503, {"error": "database unavailable"})}
        self.lab.servers["http://d:8010"] = version_server("d")
        ctx = self.context(A, B, C, "http://d:8010", attempt_timeout=2)
        for seed in range(6):
            ctx.random.seed(seed)
            self.assertEqual(self.play(plans.exchange(ctx, api.version())), "d")

    def test_first_answer_wins(self) -> None:
        """A server that answers, even with an error, ends the call: no other is asked."""
        self.lab.servers = {A: lambda m, p, b: (404, {"error": "unknown device p9"}), B: version_server("b")}
        ctx = self.context(A, B)
        ctx.order = lambda prefer=None: [A, B]  # type: ignore[method-assign]
        self.assertRaises(errors.NotFound, self.play, plans.exchange(ctx, api.device_state("p9")))
        self.assertEqual(self.tried(), [A])

    def test_none_answers(self) -> None:
        """Every server gone: NoServerReachable saying what happened with each."""
        self.lab.servers = {A: DEAD, B: SILENT, C: lambda m, p, b: (503, {"error": "database down"})}
        with self.assertRaises(errors.NoServerReachable) as caught:
            self.play(plans.exchange(self.context(A, B, C, attempt_timeout=3), api.version()))
        text = str(caught.exception)
        self.assertTrue(text.startswith("no MozPool server answered version: "), text)
        for part in (f"{A}: connection refused", f"{B}: no answer within 3 s", f"{C}: 503 database down"):
            self.assertIn(part, text)
        self.assertNotIn("\n", text)

    def test_whole_call_bounded(self) -> None:
        """Silent servers cost the attempt bound each, and the call stops at its own bound."""
        D = "http://d:8010"
        self.lab.servers = {s: SILENT for s in (A, B, C, D)}
        started = self.lab.clock.now()
        with self.assertRaises(errors.NoServerReachable) as caught:
            self.play(plans.exchange(self.context(A, B, C, D, timeout=25, attempt_timeout=10), api.version()))
        self.assertEqual(self.lab.clock.now() - started, 25)
        self.assertEqual(len(self.lab.sent), 3)
        self.assertIn("not tried", str(caught.exception))
        # The last attempt got only what was left of the call's time.
        self.assertIn("no answer within 5 s", str(caught.exception))

    def test_request_creation_not_repeated(self) -> None:
        """A silence after the creation call was sent may mean it was made: no second server
        is asked (it would hold a second device).  A refused connection is safe to retry."""
        pool = FakePool(B)
        self.lab.servers = {A: SILENT, B: pool}
        call = api.request_device("any", "android", 60, "ci")
        ctx = self.context(A, B)
        ctx.order = lambda prefer=None: [A, B]  # type: ignore[method-assign]
        with self.assertRaises(errors.MaybeSent) as caught:
            self.play(plans.exchange(ctx, call))
        self.assertIn("not repeated", str(caught.exception))
        self.assertEqual(pool.requests, {})
        self.lab.servers[A] = DEAD
        self.assertEqual(self.play(plans.exchange(ctx, call)).id, 1)

    def test_token(self) -> None:
        self.lab.servers = {A: version_server("a")}
        self.play(plans.exchange(self.context(A, token="mpt_x"), api.version()))
        self.play(plans.exchange(self.context(A), api.version()))
        self.assertEqual([s.headers.get("Authorization") for s in self.lab.sent], ["Bearer mpt_x", None])


class Redirects(Plans):
    def test_same_method_body_and_token(self) -> None:
        """A 302 (or 307) to the owner is repeated there with the same method, body and token."""
        self.lab.servers = {
            A: lambda m, p, b: (302, {"redirect": B + p}, {"location": B + p}),
            B: lambda m, p, b: (307, {}, {"location": C + p}),
            C: lambda m, p, b: (204, None),
        }
        ctx = self.context(A, token="mpt_t")
        self.assertIsNone(self.play(plans.exchange(ctx, api.renew(4, 600))))
        self.assertEqual([(s.method, s.url, s.body, s.headers["Authorization"]) for s in self.lab.sent], [
            ("POST", A + "/api/request/4/renew/", {"duration": 600}, "Bearer mpt_t"),
            ("POST", B + "/api/request/4/renew/", {"duration": 600}, "Bearer mpt_t"),
            ("POST", C + "/api/request/4/renew/", {"duration": 600}, "Bearer mpt_t"),
        ])

    def test_relative_location(self) -> None:
        self.lab.servers = {A: lambda m, p, b: (302, {}, {"location": "/api/version/?x"}) if "x" not in p
                            else (200, {"version": "moved"})}
        self.assertEqual(self.play(plans.exchange(self.context(A), api.version())), "moved")
        self.assertEqual(self.lab.sent[-1].url, A + "/api/version/?x")

    def test_loop_bounded(self) -> None:
        """A redirect loop ends after MAX_REDIRECTS; the next server is tried."""
        self.lab.servers = {A: lambda m, p, b: (302, {}, {"location": A + p}), B: version_server("b")}
        ctx = self.context(A, B)
        ctx.order = lambda prefer=None: [A, B]  # type: ignore[method-assign]
        self.assertEqual(self.play(plans.exchange(ctx, api.version())), "b")
        self.assertEqual(self.tried(), [A] * (plans.MAX_REDIRECTS + 1) + [B])

    def test_dead_owner(self) -> None:
        """The owner a redirect names is down: that server's attempt failed, the next is tried."""
        self.lab.servers = {A: lambda m, p, b: (302, {}, {"location": C + p}), B: lambda m, p, b: (204, None)}
        ctx = self.context(A, B)
        ctx.order = lambda prefer=None: [A, B]  # type: ignore[method-assign]
        self.assertIsNone(self.play(plans.exchange(ctx, api.return_request(3))))
        self.assertEqual(self.tried(), [A, B])


class Waiting(Plans):
    def test_progress_until_ready(self) -> None:
        """Polls from the owner, emits each change of the request's or the device's state, pauses
        between polls, and returns the ready request."""
        pool = FakePool(B, script=("finding_device", "pending", "pending", "ready"))
        self.lab.servers = {A: DEAD, B: pool}
        ctx = self.context(A)
        created = self.play(plans.exchange(self.context(B), api.request_device("any", "android", 60, "ci")))
        pool.devices["panda-0001"]["state"] = "android_downloading"
        ready = self.play(plans.wait_ready(ctx, created, timeout=60, interval=2))
        self.assertEqual((ready.state, ready.assigned_device, ready.id), ("ready", "panda-0001", 1))
        self.assertEqual([p.state for p in self.emitted], ["finding_device", "pending", "ready"])
        self.assertEqual(self.emitted[1], plans.Progress(1, "pending", "panda-0001", "android_downloading"))
        self.assertEqual(self.emitted[1].line(), "request 1: pending, device panda-0001 android_downloading")
        self.assertEqual(set(self.tried()), {B}, "the owner is asked, never the dead configured server")
        self.assertEqual(self.lab.clock.now(), 1000 + 3 * 2)

    def test_queue_place_in_progress(self) -> None:
        """While the request waits for a device its progress carries its place and the line says
        it; a new line when the place changes, none when only the ETA's seconds move."""
        pool = FakePool(A, devices=(), script=("finding_device",) * 4 + ("pending", "ready"))
        self.lab.servers = {A: pool}
        ctx = self.context(A)
        created = self.play(plans.exchange(ctx, api.request_device("any", "android", 60, "ci")))

        def place(position: int, ahead: int, eta: str) -> dict[str, Any]:
            return {"position": position, "ahead": ahead, "eta": eta, "why": f"{ahead} ahead"}

        pool.queue[1] = [place(3, 2, "2030-01-01T12:04:10"), place(3, 2, "2030-01-01T12:04:50"),
                         place(2, 1, "2030-01-01T12:04:20"), place(1, 0, "2030-01-01T12:03:00"), None]
        ready = self.play(plans.wait_ready(ctx, created, timeout=60, interval=1))
        self.assertEqual([p.line() for p in self.emitted], [
            "request 1: finding_device, no device yet — 3rd in queue (2 ahead), ready by ~12:04 UTC",
            "request 1: finding_device, no device yet — 2nd in queue (1 ahead), ready by ~12:04 UTC",
            "request 1: finding_device, no device yet — 1st in queue (0 ahead), ready by ~12:03 UTC",
            "request 1: pending, no device yet",
            "request 1: ready, no device yet",
        ])
        self.assertEqual(self.emitted[0].queue, api.QueuePlace(3, 2, "2030-01-01T12:04:10", "2 ahead"))
        self.assertIsNone(ready.queue)
        self.assertEqual(self.lab.clock.now(), 1000 + 5, "six polls, five pauses")

    def test_status_carries_the_queue_place(self) -> None:
        pool = FakePool(A, devices=(), script=("finding_device",))
        pool_place = {"position": 4, "ahead": 1, "eta": None, "why": "no device that could serve it now"}
        self.lab.servers = {A: pool}
        ctx = self.context(A)
        self.play(plans.exchange(ctx, api.request_device("any", "android", 60, "ci")))
        pool.queue[1] = [pool_place]
        seen = self.play(plans.request_view(ctx, 1))
        self.assertEqual((seen.state, seen.queue), ("finding_device", api.QueuePlace(4, 1, None, pool_place["why"])))

    def test_failed(self) -> None:
        pool = FakePool(A, script=("finding_device", "failed_bad_image"))
        self.lab.servers = {A: pool}
        ctx = self.context(A)
        created = self.play(plans.exchange(ctx, api.request_device("any", "android", 60, "ci")))
        with self.assertRaises(errors.RequestFailed) as caught:
            self.play(plans.wait_ready(ctx, created.id, timeout=60))
        self.assertEqual(caught.exception.state, "failed_bad_image")

    def test_timeout(self) -> None:
        pool = FakePool(A, script=("pending",))
        self.lab.servers = {A: pool}
        ctx = self.context(A)
        created = self.play(plans.exchange(ctx, api.request_device("any", "android", 60, "ci")))
        with self.assertRaises(errors.WaitTimeout) as caught:
            self.play(plans.wait_ready(ctx, created, timeout=10, interval=3))
        self.assertEqual(str(caught.exception), "request 1 not ready after 10 s (state pending with device panda-0001)")
        self.assertEqual(self.lab.clock.now(), 1010)

    def test_timeout_in_the_queue(self) -> None:
        """A wait that ends while the request waits for a device says where it stood."""
        pool = FakePool(A, devices=(), script=("finding_device",))
        self.lab.servers = {A: pool}
        ctx = self.context(A)
        created = self.play(plans.exchange(ctx, api.request_device("any", "android", 60, "ci")))
        pool.queue[1] = [{"position": 3, "ahead": 2, "eta": "2030-01-01T12:04:10", "why": "2 ahead"}]
        with self.assertRaises(errors.WaitTimeout) as caught:
            self.play(plans.wait_ready(ctx, created, timeout=10, interval=3))
        self.assertEqual(str(caught.exception), "request 1 not ready after 10 s (state finding_device; 3rd in queue "
                                                "(2 ahead), ready by ~12:04 UTC)")
        self.assertEqual(caught.exception.queue, api.QueuePlace(3, 2, "2030-01-01T12:04:10", "2 ahead"))


class Acquire(Plans):
    def test_handover(self) -> None:
        pool = FakePool(A)
        self.lab.servers = {A: pool}
        handover = self.play(plans.acquire(self.context(A), "any", "android", 600))
        self.assertEqual((handover.request.state, handover.device["fqdn"]), ("ready", "panda-0001.lab.example.com"))
        self.assertEqual(pool.requests[1]["assignee"], "tester@example.com")
        self.assertNotIn("priority", self.lab.sent[0].body, "the server's default unless asked")

    def test_priority_and_queue_timeout_sent(self) -> None:
        pool = FakePool(A)
        self.lab.servers = {A: pool}
        self.play(plans.acquire(self.context(A), "any", "android", 600, priority=90, queue_timeout=120))
        self.assertEqual((self.lab.sent[0].body["priority"], self.lab.sent[0].body["queue_timeout"]), (90, 120))

    def test_returned_when_the_wait_fails(self) -> None:
        """A request that fails, times out or is interrupted is returned, and the error says so."""
        for script, kind in [(("pending",), errors.WaitTimeout), (("failed_bad_device",), errors.RequestFailed)]:
            pool = FakePool(A, script=script)
            self.lab.servers = {A: pool}
            with self.assertRaises(kind) as caught:
                self.play(plans.acquire(self.context(A), "any", "android", 600, timeout=5))
            self.assertEqual(pool.requests[1]["state"], "closed")
            self.assertEqual(caught.exception.__notes__, ["request 1 was returned"])

    def test_interrupted(self) -> None:
        """^C during a pause is thrown into the plan: the request is returned, then ^C goes on."""
        pool = FakePool(A, script=("pending",))
        self.lab.servers = {A: pool}

        def interrupt(seconds: float) -> None:
            raise KeyboardInterrupt()

        with self.assertRaises(KeyboardInterrupt):
            list(drive(plans.acquire(self.context(A), "any", "android", 600), self.lab.perform, interrupt))
        self.assertEqual(pool.requests[1]["state"], "closed")

    def test_return_fails_too(self) -> None:
        pool = FakePool(A, script=("pending",))
        self.lab.servers = {A: pool}

        def interrupt(seconds: float) -> None:
            self.lab.servers[A] = DEAD
            raise KeyboardInterrupt()

        with self.assertRaises(KeyboardInterrupt) as caught:
            list(drive(plans.acquire(self.context(A), "any", "android", 600), self.lab.perform, interrupt))
        self.assertIn("returning request 1 failed too: no MozPool server answered", caught.exception.__notes__[0])


class Servers(Plans):
    def test_server_list(self) -> None:
        listed = [{"fqdn": "a:8010", "alive": True, "last_seen": "2030-01-01T00:00:00", "devices": 3}]
        self.lab.servers = {A: lambda m, p, b: (200, {"servers": listed})}
        self.assertEqual(self.play(plans.servers(self.context(A))), listed)

    def test_derived_from_devices(self) -> None:
        """A server without /api/server/list/: the servers named in the device list."""
        self.lab.servers = {A: FakePool(A), B: FakePool(B, devices=("x-1",))}
        ctx = self.context(A)
        self.assertEqual(self.play(plans.servers(ctx)),
                         [{"fqdn": "a:8010", "alive": None, "last_seen": None, "devices": 2}])


class PollLog(Plans):
    def test_new_entries_only(self) -> None:
        log: list[dict[str, Any]] = [{"id": i, "timestamp": "t", "source": "s", "message": f"m{i}"} for i in (1, 2)]

        def server(method: str, path: str, body: Any) -> Any:
            if len(log) < 5:
                log.append({"id": len(log) + 1, "timestamp": "t", "source": "s", "message": f"m{len(log) + 1}"})
            return 200, {"log": log}

        self.lab.servers = {A: server}
        self.play(plans.poll_log(self.context(A), "p1", 2, 1.0, self.lab.clock.now() + 5))
        self.assertEqual([e["id"] for e in self.emitted], [3, 4, 5])
        self.assertEqual(self.lab.sent[0].url, A + "/api/device/p1/log/?limit=100")

    def test_log_entry(self) -> None:
        from mozpool.client.sse import Event

        event = Event(9, "device_log", {"device": "p1", "id": 5, "timestamp": "t", "source": "bmm", "message": "m",
                                         "ts": "t"})
        self.assertEqual(plans.log_entry(event), {"id": 5, "timestamp": "t", "source": "bmm", "message": "m"})
        self.assertIsNone(plans.log_entry(Event(9, "device_state", {"device": "p1"})))
