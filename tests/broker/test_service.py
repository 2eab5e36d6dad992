"""The Broker as the API sees it (IBroker), the expiry poll, restarts, races for devices, a real
treq stack in memory, and the service wiring."""

from __future__ import annotations

import json
import random
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from mozpool.broker.interfaces import RequestSpec
from mozpool.broker.service import Broker, BrokerService
from mozpool.db.catalog import ensure_server
from mozpool.statemachine.core import TimeoutDriver
from mozpool.web.interfaces import DeviceHeld, IBroker
from tests.broker.support import HERE, OTHER, BrokerTest
from tests.support.dbtest import on_both_backends


class Service(BrokerTest):
    async def test_provides_IBroker(self) -> None:
        self.assertTrue(verifyObject(IBroker, self.broker))

    # --- creation: the 409 path (2.2a, http-api 3.4) ----------------------------------------

    async def test_named_device_held_by_another_request(self) -> None:
        first = await self.create("panda-0002")
        self.assertEqual(first["assigned_device"], "panda-0002")
        e = await self.assertFailure(
            self.broker.create_request("panda-0002", RequestSpec("someone@example.com", 600, "b2g", "any",
                                                                   '{"b2gbase": "http://b/"}')),
            DeviceHeld,
        )
        self.assertEqual(e.message, f"device panda-0002 is held by request {first['id']}")
        second = e.request
        self.assertEqual(
            set(second), {"id", "requested_device", "assignee", "expires", "environment", "image", "boot_config",
                          "assigned_device", "url", "priority", "queue_timeout"})
        self.assertEqual((second["requested_device"], second["assignee"], second["image"], second["boot_config"],
                          second["assigned_device"], second["environment"]),
                         ("panda-0002", "someone@example.com", "b2g", '{"b2gbase": "http://b/"}', "", "any"))
        self.assertEqual(await self.state(second["id"]), "closed")
        msgs = await self.messages(second["id"])
        self.assertIn(f"device panda-0002 is held by request {first['id']}; closing", msgs)
        self.assertEqual(await self.claimed(first["id"]), "panda-0002", "the holder keeps its device")
        self.assertEqual(self.broker.kind.held, {})

    async def test_held_by_an_any_request_too(self) -> None:
        await self.db.query("UPDATE devices SET state = 'self_test_running' WHERE name <> 'panda-0003'")
        first = await self.create()
        self.assertEqual(first["assigned_device"], "panda-0003")
        await self.assertFailure(self.broker.create_request("panda-0003", RequestSpec("x", 60, "android")),
                                 DeviceHeld)

    async def test_released_device_can_be_requested_again(self) -> None:
        first = await self.create("panda-0002")
        await self.broker.return_request(first["id"])
        second = await self.create("panda-0002")
        self.assertEqual(second["assigned_device"], "panda-0002")

    async def test_creation_fields(self) -> None:
        created = await self.create(environment="staging", duration=90)
        self.assertEqual(created["environment"], "staging")
        self.assertEqual(created["expires"], "2026-11-26T12:01:30")
        row = (await self.db.query(
            "SELECT s.fqdn, r.assignee, r.state_timeout FROM requests r"
            " JOIN imaging_servers s ON s.id = r.imaging_server_id WHERE r.id = ?", (created["id"],)))[0]
        self.assertEqual(row, (HERE, "tester@example.com", "2026-11-26 12:00:00"))
        self.assertIn("Request created by tester@example.com", (await self.messages(created["id"]))[0])

    async def test_creation_answers_what_the_database_holds(self) -> None:
        """Creation answers from what it wrote and what its look claimed, without reading the
        request back: the answer is what a read gives, claimed or queued, any or named, with or
        without an environment, priority and boot_config."""
        spec = RequestSpec("a@example.com", 120, "reusable", "prod", '{"b2gbase": "http://b/"}', None, 70, 30)
        answers = [
            await self.create(),
            await self.create("panda-0004", environment="staging"),
            await self.broker.create_request("any", spec),
        ]
        await self.db.query("UPDATE devices SET state = 'self_test_running'")
        answers.append(await self.create())  # nothing free: it waits in the queue
        read: list[Any] = []

        async def reading(request_id: int) -> dict[str, Any]:
            read.append(request_id)
            return await real_public(request_id)

        real_public = self.broker._public
        self.patch(self.broker, "_public", reading)
        answers.append(await self.create(duration=30))
        self.assertEqual(read, [], "no read back")
        self.patch(self.broker, "_public", real_public)
        self.assertEqual([a["assigned_device"] != "" for a in answers], [True, True, True, False, False])
        for answer in answers:
            self.assertEqual(answer, await self.broker._public(answer["id"]))
        self.assertEqual(self.broker.kind.assigned, {})

    # --- renew and return (3.9, 3.10) and events (3.11) -------------------------------------

    async def test_renew_sets_expires_from_now_only(self) -> None:
        created = await self.create(duration=60)
        rid = created["id"]
        before = await self.row(rid)
        self.clock.advance(30)
        await self.broker.renew(rid, 600)
        details = (await self.db.query("SELECT expires FROM requests WHERE id = ?", (rid,)))[0][0]
        self.assertEqual(details, "2026-11-26 12:10:30")
        self.assertEqual(await self.row(rid), before)

    async def test_renew_a_closed_request_changes_only_expires(self) -> None:
        rid = (await self.create())["id"]
        await self.broker.return_request(rid)
        await self.broker.renew(rid, 5)
        self.assertEqual((await self.db.query("SELECT expires FROM requests WHERE id = ?", (rid,)))[0][0],
                         "2026-11-26 12:00:05")
        self.assertEqual(await self.state(rid), "closed")

    async def test_return_closes_and_frees_the_device(self) -> None:
        rid = await self.to_pending()
        await self.broker.return_request(rid)
        self.assertEqual(await self.state(rid), "closed")
        self.assertIsNone(await self.claimed(rid))
        await self.broker.return_request(rid)  # harmless
        self.assertEqual(await self.state(rid), "closed")

    async def test_request_event_fires_none(self) -> None:
        rid = await self.to_pending()
        result = await self.broker.request_event(rid, "lifeguard_finished", {"imaging_result": "complete"})
        self.assertIsNone(result)
        self.assertEqual(await self.state(rid), "ready")

    # --- expiry (2.6) -----------------------------------------------------------------------

    async def test_expiry_poll(self) -> None:
        short = (await self.create(duration=100))["id"]
        ready = await self.to_pending(duration=100)
        await self.event(ready, "lifeguard_finished", {"imaging_result": "complete"})
        long = (await self.create(duration=1000))["id"]
        await self.tick(100)
        self.assertEqual(await self.state(short), "pending", "expires == now is not past")
        await self.tick(1)
        self.assertEqual(await self.state(short), "closed")
        self.assertEqual(await self.state(ready), "closed")
        self.assertIn("Request expired.", await self.messages(ready))
        self.assertIsNone(await self.claimed(ready))
        self.assertNotEqual(await self.state(long), "closed")

    async def test_renewal_postpones_expiry(self) -> None:
        rid = (await self.create(duration=100))["id"]
        await self.tick(90)
        await self.broker.renew(rid, 100)
        await self.tick(20)
        self.assertNotEqual(await self.state(rid), "closed")
        await self.tick(81)
        self.assertEqual(await self.state(rid), "closed")

    async def test_expiry_leaves_failed_closed_and_other_servers_alone(self) -> None:
        failed = (await self.create(duration=10))["id"]
        await self.db.query("UPDATE requests SET state = 'failed_bad_image', state_timeout = NULL WHERE id = ?",
                            (failed,))
        await ensure_server(self.db, OTHER)
        other_broker = Broker(self.db, self.clock, OTHER, 1.0, self.http, random.Random(1))
        theirs = (await other_broker.create_request("any", RequestSpec("x", 10, "android")))["id"]
        legacy = (await self.create(duration=10))["id"]
        await self.db.query("UPDATE requests SET state = 'expired', state_timeout = NULL WHERE id = ?", (legacy,))
        await self.tick(60)
        self.assertEqual(await self.state(failed), "failed_bad_image")
        self.assertNotIn("ignored event expire in state failed_bad_image", await self.messages(failed))
        self.assertEqual(await self.state(theirs), "contact_lifeguard", "not this server's request")
        self.assertEqual(await self.state(legacy), "closed", "the legacy state closes")

    async def test_a_refusal_arriving_as_the_broker_stops_is_still_handled(self) -> None:
        """Stopping cancels the POSTs to LifeGuard, not the machine's handling of a refusal that
        came back just before: it waits for the machine's lock and is handled, no error logged."""
        from twisted.internet import error

        rid = (await self.create())["id"]
        answer: defer.Deferred[Any] = defer.Deferred()
        self.http.answers.append(answer)
        await self.driver.tick()  # contact_lifeguard -> contacting_lifeguard: the POST is in flight
        self.assertEqual(await self.state(rid), "contacting_lifeguard")
        lock = self.broker.runner._locks.setdefault(str(rid), defer.DeferredLock())
        await lock.acquire()  # the machine is busy: the refusal's event has to wait
        answer.errback(error.ConnectionRefusedError())
        stopped = self.broker.stop()
        lock.release()
        await stopped
        self.assertTrue(any("LifeGuard did not accept" in line for line in await self.messages(rid)))

    async def test_a_transport_failure_reads_as_its_reasons(self) -> None:
        from twisted.internet import error
        from twisted.web._newclient import ResponseNeverReceived

        self.http.answers = [ResponseNeverReceived([Failure(error.ConnectionDone("closed by peer"))])]
        rid = (await self.create())["id"]
        await self.driver.tick()
        await self.broker.idle()
        [line] = [m for m in await self.messages(rid) if "LifeGuard did not accept" in m]
        self.assertIn("ResponseNeverReceived (Connection was closed cleanly: closed by peer.)", line)

    async def test_posts_cut_off_by_stop_are_not_refusals_however_the_cancel_reads(self) -> None:
        """treq's agent reports a cancelled POST as ResponseNeverReceived([CancelledError]): that
        is stop's own doing, not LifeGuard's answer. Nothing is handled; the state's timeout
        resumes the request after a restart."""
        from twisted.web._newclient import ResponseNeverReceived

        def cancel(d: defer.Deferred[Any]) -> None:
            d.errback(ResponseNeverReceived([Failure(defer.CancelledError())]))

        self.http.answers = [defer.Deferred(cancel)]
        rid = (await self.create())["id"]
        await self.driver.tick()
        self.assertEqual(await self.state(rid), "contacting_lifeguard")
        await self.broker.stop()
        self.assertEqual(await self.state(rid), "contacting_lifeguard")
        self.assertFalse(any("LifeGuard did not accept" in line for line in await self.messages(rid)))

    # --- restart (R-1) ----------------------------------------------------------------------

    async def fresh(self) -> None:
        """Forget the old Broker (as a crashed daemon would) and build a new one on the same DB."""
        await self.broker.stop()  # its POSTs are cut off; a dead daemon's never answer
        self.broker = self.makeBroker(seed=7)
        self.driver = TimeoutDriver(self.broker.runner, extra=self.broker.expire_due, interval=10)

    async def test_restart_resumes_every_stage(self) -> None:
        rid = (await self.create())["id"]
        await self.fresh()
        await self.tick(0)
        self.assertEqual(await self.state(rid), "pending")
        await self.fresh()
        await self.set_result(rid, "complete")
        await self.tick(60)
        self.assertEqual(await self.state(rid), "ready")
        await self.fresh()
        await self.broker.return_request(rid)
        self.assertEqual(await self.state(rid), "closed")

    async def test_restart_while_contacting_posts_again(self) -> None:
        self.http.answers = [defer.Deferred()]  # the daemon dies before the answer
        rid = (await self.create())["id"]
        await self.driver.tick()
        self.assertEqual(await self.state(rid), "contacting_lifeguard")
        await self.fresh()
        await self.tick(29)
        self.assertEqual(len(self.http.calls), 1)
        await self.tick(1)
        self.assertEqual(len(self.http.calls), 2)
        self.assertEqual(await self.state(rid), "pending")
        self.assertEqual((await self.counters(rid))["contacting_lifeguard"], 1)

    async def test_restart_keeps_the_queue_deadline(self) -> None:
        await self.db.query("UPDATE devices SET state = 'self_test_running'")
        created = await self.broker.create_request("panda-0001", RequestSpec("t", 3600, "android", queue_timeout=15))
        rid = created["id"]
        await self.fresh()
        await self.tick(10)
        self.assertEqual(await self.state(rid), "finding_device")
        await self.tick(5)  # the deadline is kept in the row: the new broker honours it
        self.assertEqual(await self.state(rid), "failed_device_busy")

    # --- races for devices ------------------------------------------------------------------

    async def test_no_double_assignment_under_competition(self) -> None:
        await self.set_device("panda-0004", state="self_test_running")
        await ensure_server(self.db, OTHER)
        other = Broker(self.db, self.clock, OTHER, 1.0, self.http, random.Random(3))
        self.addCleanup(other.stop)
        brokers = [self.broker, other]
        created = await defer.gatherResults([
            brokers[i % 2].create_request("any", RequestSpec(f"user{i}", 600, "android")) for i in range(20)
        ])
        await self.broker.idle()
        await other.idle()
        created = [await self.public(c["id"]) for c in created]
        claims = await self.claims()
        self.assertEqual(len(claims), 3)
        self.assertEqual(sorted(name for _, name in claims), ["panda-0001", "panda-0002", "panda-0003"])
        assigned = [c["assigned_device"] for c in created if c["assigned_device"]]
        self.assertEqual(sorted(assigned), ["panda-0001", "panda-0002", "panda-0003"])
        states = [await self.state(c["id"]) for c in created]
        self.assertEqual(states.count("contact_lifeguard"), 3)
        self.assertEqual(states.count("finding_device"), 17)
        # (A lost INSERT inside one selection is tested directly in test_selection: here the
        # selection and its claim share a transaction, so SQLite's one connection never races.)
        # Both drivers run; only the three holders contact LifeGuard, each for its own device.
        other_driver = TimeoutDriver(other.runner, extra=other.expire_due, interval=10)
        await self.tick(0)
        await other_driver.tick()
        await other.idle()
        urls = sorted(c["url"] for c in self.http.calls)
        self.assertEqual(urls, [f"http://{HERE}/api/device/panda-000{i}/event/please_image/" for i in (1, 2, 3)])
        # A returned device goes to exactly one waiting request.
        holder = next(c["id"] for c in created if c["assigned_device"] == "panda-0002")
        await self.broker.return_request(holder) if holder % 2 else await other.return_request(holder)
        self.clock.advance(10)
        await defer.gatherResults([defer.Deferred.fromCoroutine(self.driver.tick()),
                                   defer.Deferred.fromCoroutine(other_driver.tick())])
        await self.broker.idle()
        await other.idle()
        self.assertEqual(len(await self.claims()), 3)
        self.assertEqual([n for _, n in await self.claims()].count("panda-0002"), 1)


ServiceSQLite, ServiceMariaDB = on_both_backends(Service)


class LifeGuardStub(Resource):
    """Answers POSTs as the test says, recording path, method and body."""

    isLeaf = True

    def __init__(self, answers: list[tuple[int, str | None]]) -> None:
        super().__init__()
        self.answers = answers
        self.seen: list[tuple[bytes, bytes, Any]] = []

    def render(self, request: Request) -> bytes:
        self.seen.append((request.method, request.uri, json.loads(request.content.read())))
        code, location = self.answers.pop(0)
        request.setResponseCode(code)
        if location:
            request.setHeader(b"Location", location.encode())
        return b"{}"


class OverTreq(BrokerTest):
    """The same calls through real treq (StubTreq over an in-memory resource)."""

    async def use(self, answers: list[tuple[int, str | None]]) -> LifeGuardStub:
        stub = LifeGuardStub(answers)
        self.treq = StubTreq(stub)
        self.http = self.treq  # type: ignore[assignment]
        self.broker = self.makeBroker()
        self.driver = TimeoutDriver(self.broker.runner, extra=self.broker.expire_due, interval=10)
        return stub

    async def test_please_image_with_a_redirect(self) -> None:
        stub = await self.use([(302, "http://c.example.com:8010/api/device/panda-0001/event/please_image/"),
                               (200, None)])
        rid = (await self.create("panda-0001", image="b2g", boot_config='{"b2gbase": "http://b/"}'))["id"]
        await self.tick(0)
        self.treq.flush()
        await self.broker.idle()
        body = {"image": "b2g", "boot_config": '{"b2gbase": "http://b/"}'}
        self.assertEqual(stub.seen, [(b"POST", b"/api/device/panda-0001/event/please_image/", body)] * 2)
        self.assertEqual(await self.state(rid), "pending")

    async def test_refusal(self) -> None:
        stub = await self.use([(404, None)])
        rid = (await self.create())["id"]
        await self.tick(0)
        self.treq.flush()
        await self.broker.idle()
        self.assertEqual(len(stub.seen), 1)
        self.assertEqual(await self.state(rid), "contacting_lifeguard")
        self.assertIn("answered 404", "\n".join(await self.messages(rid)))


OverTreqSQLite, OverTreqMariaDB = on_both_backends(OverTreq)


class Wiring(BrokerTest):
    async def test_service_ticks_on_the_clock_and_stops_cleanly(self) -> None:
        rid = (await self.create())["id"]
        service = BrokerService(self.broker, interval=10)
        service.startService()
        tick = service.driver._tick  # type: ignore[attr-defined]
        self.assertIsNotNone(tick, "the first tick starts at once")
        await tick
        await self.broker.idle()
        self.assertEqual(await self.state(rid), "pending")
        self.http.default = defer.Deferred()
        await self.broker.request_event(rid, "lifeguard_finished", {"imaging_result": "failed-bad-device"})
        self.clock.advance(10)
        await service.driver._tick  # type: ignore[attr-defined]
        self.assertEqual(len(self.broker._contacts), 1, "a POST is in flight")
        await service.stopService()
        self.assertEqual(self.broker._contacts, set(), "stopping cancels it")
        self.assertFalse(service.driver.running)  # type: ignore[attr-defined]

    async def test_expiry_runs_in_the_service_tick(self) -> None:
        rid = (await self.create(duration=5))["id"]
        service = BrokerService(self.broker, interval=10)
        service.startService()
        await service.driver._tick  # type: ignore[attr-defined]
        self.clock.advance(10)
        await service.driver._tick  # type: ignore[attr-defined]
        await service.stopService()
        self.assertEqual(await self.state(rid), "closed")


WiringSQLite, WiringMariaDB = on_both_backends(Wiring)
