"""The request queue (issue 14): its order, its plan, its estimate (pure functions), and the
matcher on a real database with two brokers sharing it."""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mozpool.broker import queue
from mozpool.broker.interfaces import RequestSpec
from mozpool.broker.queue import Free, Snapshot, Waiting
from mozpool.broker.service import Broker
from mozpool import liveness
from mozpool.db import catalog, fixtures
from mozpool.db.catalog import ensure_server
from mozpool.timeutil import dbnow
from tests.broker.support import OTHER, BrokerTest
from tests.support.dbtest import on_both_backends


def waiting(id: int, priority: int = 50, assignee: str = "a", created: str = "2026-11-26 12:00:00",
            environment: str = "any", device: str = "any", image: int = 1, server: str = "s") -> Waiting:
    return Waiting(id, server, priority, assignee, created, environment, device, image, "{}", False)


def free(id: int, environment: str = "prod", image: int | None = None, pristine: bool = False,
         hw: int | None = 1, name: str | None = None) -> Free:
    return Free(id, name or f"d{id}", environment, image, "{}", hw, "s", pristine)


class Order(SynchronousTestCase):
    def ids(self, ws: list[Waiting], held: dict[str, int] | None = None) -> list[int]:
        return [w.id for w in queue.order(ws, held or {})]

    def test_higher_priority_first_then_oldest(self) -> None:
        ws = [waiting(1, 50, created="2026-11-26 12:00:01"), waiting(2, 90, created="2026-11-26 12:00:09"),
              waiting(3, 50, created="2026-11-26 12:00:00"), waiting(4, 10)]
        self.assertEqual(self.ids(ws), [2, 3, 1, 4])

    def test_within_a_priority_the_assignee_holding_fewest_first(self) -> None:
        ws = [waiting(1, assignee="busy"), waiting(2, assignee="busy"), waiting(3, assignee="idle", created="2026-11-26 12:05:00")]
        self.assertEqual(self.ids(ws, {"busy": 3}), [3, 1, 2])

    def test_round_robin_between_assignees(self) -> None:
        """Each one served counts as held: two assignees with many requests alternate."""
        ws = [waiting(i, assignee="x") for i in range(1, 4)] + [waiting(i, assignee="y") for i in range(4, 7)]
        self.assertEqual(self.ids(ws), [1, 4, 2, 5, 3, 6])

    def test_ties_break_by_id(self) -> None:
        self.assertEqual(self.ids([waiting(9), waiting(3), waiting(5)]), [3, 5, 9])


class Plan(SynchronousTestCase):
    def plan(self, ws: list[Waiting], fs: list[Free], image_hardware: dict[int, frozenset[int]] | None = None,
             held: dict[str, int] | None = None) -> list[tuple[int, int]]:
        snap = Snapshot(ws, fs, held or {}, image_hardware or {})
        return [(r.id, d.id) for r, d in queue.plan(snap)]

    def test_the_head_of_the_queue_is_served_first(self) -> None:
        got = self.plan([waiting(1, 10), waiting(2, 90)], [free(7)])
        self.assertEqual(got, [(2, 7)])

    def test_a_request_nothing_can_serve_does_not_block_the_ones_behind(self) -> None:
        got = self.plan([waiting(1, 90, environment="staging"), waiting(2, 50)], [free(7, "prod")])
        self.assertEqual(got, [(2, 7)])

    def test_named_gets_its_device_only(self) -> None:
        got = self.plan([waiting(1, device="d8"), waiting(2)], [free(7), free(8)])
        self.assertEqual(sorted(got), [(1, 8), (2, 7)])

    def test_hardware_must_take_the_image(self) -> None:
        got = self.plan([waiting(1, image=5)], [free(7, hw=2), free(8, hw=3)], {5: frozenset({3})})
        self.assertEqual(got, [(1, 8)])

    def test_a_pristine_device_holding_the_image_is_preferred(self) -> None:
        fs = [free(i) for i in range(1, 20)] + [free(20, image=1, pristine=True)]
        self.assertEqual(self.plan([waiting(1, image=1)], fs), [(1, 20)])

    def test_warm_devices_of_other_images_are_kept_for_them(self) -> None:
        got = self.plan([waiting(1, image=1)], [free(5, image=2, pristine=True), free(6)])
        self.assertEqual(got, [(1, 6)])
        # ... but used when nothing else is free.
        self.assertEqual(self.plan([waiting(1, image=1)], [free(5, image=2, pristine=True)]), [(1, 5)])

    def test_deterministic_and_never_one_device_twice(self) -> None:
        rng = random.Random(4)
        ws = [waiting(i, rng.choice([10, 50, 90]), rng.choice("abc"), environment=rng.choice(["any", "prod", "qa"]))
              for i in range(1, 60)]
        fs = [free(i, rng.choice(["prod", "qa"]), pristine=rng.random() < 0.2, image=rng.choice([None, 1, 2]))
              for i in range(100, 140)]
        first = self.plan(ws, fs)
        self.assertEqual(first, self.plan(list(reversed(ws)), list(reversed(fs))), "same snapshot, same plan")
        self.assertEqual(len({d for _, d in first}), len(first))
        self.assertEqual(len(first), 40)


class Places(SynchronousTestCase):
    def test_position_ahead_and_eta_from_expiries_and_imaging_time(self) -> None:
        now = "2026-11-26 12:00:00"
        ws = [waiting(1, 90), waiting(2, 50), waiting(3, 50, environment="qa")]
        busy = [queue.Busy(7, "d7", "prod", 1, "2026-11-26 12:10:00"), queue.Busy(8, "d8", "prod", 1, "2026-11-26 12:20:00")]
        snap = Snapshot(ws, [], {}, {}, busy, {(1, 1): 120.0})
        got = queue.places(snap, now)
        self.assertEqual((got[1].position, got[1].ahead, got[1].eta), (1, 0, "2026-11-26 12:12:00"))
        self.assertEqual((got[2].position, got[2].ahead, got[2].eta), (2, 1, "2026-11-26 12:22:00"))
        self.assertIn("1 ahead", got[2].why)
        self.assertEqual(got[3].ahead, 2, "requests for any environment could take qa devices too")
        self.assertIsNone(got[3].eta)
        self.assertIn("no device that could serve this request", got[3].why)
        self.assertEqual(got[2].public()["eta"], "2026-11-26T12:22:00")

    def test_a_free_device_means_only_the_imaging_time(self) -> None:
        snap = Snapshot([waiting(1)], [free(7)], {}, {}, [], {(1, 1): 60.0})
        got = queue.places(snap, "2026-11-26 12:00:00")
        self.assertEqual(got[1].eta, "2026-11-26 12:01:00")


    def test_a_pristine_device_holding_the_image_is_ready_at_once(self) -> None:
        """The warm pool: the first request takes the pristine device as it is, the second
        waits for the plain one's imaging."""
        snap = Snapshot([waiting(1), waiting(2)], [free(7), free(8, image=1, pristine=True)], {}, {}, [], {(1, 1): 60.0})
        got = queue.places(snap, "2026-11-26 12:00:00")
        self.assertEqual(got[1].eta, "2026-11-26 12:00:00")
        self.assertIn("pristine", got[1].why)
        self.assertEqual(got[2].eta, "2026-11-26 12:01:00")

    def test_a_pristine_device_with_another_image_or_boot_config_is_imaged(self) -> None:
        other_image = Snapshot([waiting(1)], [free(8, image=2, pristine=True)], {}, {}, [], {(1, 1): 60.0})
        self.assertEqual(queue.places(other_image, "2026-11-26 12:00:00")[1].eta, "2026-11-26 12:01:00")
        used = Snapshot([waiting(1)], [free(8, image=1, pristine=False)], {}, {}, [], {(1, 1): 60.0})
        self.assertEqual(queue.places(used, "2026-11-26 12:00:00")[1].eta, "2026-11-26 12:01:00")

    def test_a_warm_imaging_of_the_image_needs_no_second_imaging(self) -> None:
        """A device part-way through a warm imaging of this image comes back pristine: about one
        imaging from now, not two."""
        busy = [queue.Busy(7, "d7", "prod", 1, None, image_id=1, boot_config="{}")]
        snap = Snapshot([waiting(1)], [], {}, {}, busy, {(1, 1): 60.0})
        self.assertEqual(queue.places(snap, "2026-11-26 12:00:00")[1].eta, "2026-11-26 12:01:00")
        busy = [queue.Busy(7, "d7", "prod", 1, None, image_id=2, boot_config="{}")]
        snap = Snapshot([waiting(1)], [], {}, {}, busy, {(1, 1): 60.0})
        self.assertEqual(queue.places(snap, "2026-11-26 12:00:00")[1].eta, "2026-11-26 12:02:00")


class Matcher(BrokerTest):
    async def test_a_returned_device_goes_to_the_head_of_the_queue(self) -> None:
        holders = [await self.create() for _ in range(4)]
        low = await self.broker.create_request("any", RequestSpec("low", 600, "android", priority=10))
        high = await self.broker.create_request("any", RequestSpec("high", 600, "android", priority=90))
        await self.broker.idle()
        self.assertEqual((await self.state(low["id"]), await self.state(high["id"])), ("finding_device",) * 2)
        place = await self.broker.queue_place(high["id"])
        self.assertEqual((place["position"], place["ahead"]), (1, 0))
        self.assertEqual((await self.broker.queue_place(low["id"]))["ahead"], 1)
        device = await self.claimed(holders[2]["id"])
        await self.broker.return_request(holders[2]["id"])  # the claim is dropped: the queue wakes
        await self.broker.idle()
        self.assertEqual(await self.claimed(high["id"]), device)
        self.assertEqual(await self.state(high["id"]), "contact_lifeguard")
        self.assertIsNone(await self.claimed(low["id"]))
        self.assertIsNone(await self.broker.queue_place(high["id"]))

    async def test_two_servers_serve_one_queue_without_fighting(self) -> None:
        """Requests of both servers wait; devices freed one at a time go in queue order,
        whichever server's request is at the head, and never to two requests."""
        await ensure_server(self.db, OTHER)
        other = Broker(self.db, self.clock, OTHER, 1.0, self.http, random.Random(3))
        self.addCleanup(other.stop)
        self.broker.kind.wake_queue = lambda: (self.broker.matcher.wake(), other.matcher.wake())  # type: ignore[func-returns-value]
        other.kind.wake_queue = self.broker.kind.wake_queue
        holders = [await self.create() for _ in range(4)]
        order = []
        for i, (b, p) in enumerate([(other, 20), (self.broker, 80), (other, 60), (self.broker, 40)]):
            self.clock.advance(1)
            order.append((p, (await b.create_request("any", RequestSpec(f"u{i}", 600, "android", priority=p)))["id"]))
        await self.broker.idle()
        await other.idle()
        served = []
        for h in holders:
            await self.broker.return_request(h["id"])
            await self.broker.idle()
            await other.idle()
            now = [rid for _, rid in order if await self.claimed(rid) is not None]
            served += [rid for rid in now if rid not in served]
        self.assertEqual(served, [rid for _, rid in sorted(order, reverse=True)])
        claims = await self.claims()
        self.assertEqual(len({d for _, d in claims}), len(claims))


    async def test_a_dead_servers_devices_and_requests_are_left_out(self) -> None:
        """A server silent for three heartbeats: the queue plans neither with its free devices
        nor for its waiting requests, and hands its devices out again once it is back."""
        await fixtures.load_fixture(self.db, OTHER, 2, "2026-11-26 12:00:00", prefix="other")
        await self.db.query("UPDATE devices SET state = 'ready', state_timeout = NULL")
        await self.db.query("UPDATE imaging_servers SET last_seen = '2026-11-26 11:00:00' WHERE fqdn = ?", (OTHER,))
        holders = [await self.create() for _ in range(4)]
        self.assertEqual(sorted([await self.claimed(h["id"]) for h in holders]),
                         ["panda-0001", "panda-0002", "panda-0003", "panda-0004"])
        waiting = await self.create()
        other = Broker(self.db, self.clock, OTHER, 1.0, self.http, random.Random(3))
        self.addCleanup(other.stop)
        theirs = await other.create_request("any", RequestSpec("them", 600, "android"))
        await self.broker.idle()
        self.assertEqual((await self.state(waiting["id"]), await self.claimed(waiting["id"])), ("finding_device", None))
        snap = await self.db.runInteraction(queue.snapshot, liveness.dead_before(self.clock, 1.0), True)
        self.assertEqual([r.id for r in snap.waiting], [waiting["id"]], "not the dead server's request")
        self.assertEqual(snap.free, [])
        self.assertEqual(await self.broker.matcher.run_pass(), 0)
        self.assertIsNone(await self.claimed(waiting["id"]))
        # back: its next heartbeat makes its devices free for the queue again
        await self.db.runInteraction(catalog.heartbeat, OTHER, dbnow(self.clock))
        snap = await self.db.runInteraction(queue.snapshot, liveness.dead_before(self.clock, 1.0))
        self.assertEqual({r.id for r in snap.waiting}, {waiting["id"], theirs["id"]})
        self.broker.matcher.wake()
        await self.broker.idle()
        self.assertTrue((await self.claimed(waiting["id"]) or "").startswith("other-"))


MatcherSQLite, MatcherMariaDB = on_both_backends(Matcher)
del Matcher


class Wakes(SynchronousTestCase):
    """Which journal changes wake the queue: asked of every change, parsed only when it may."""

    def change(self, kind: str, data: str, device: str | None = "panda-0001") -> Any:
        from mozpool.db.changes import ChangeData

        return ChangeData((1, kind, "2026-11-30 12:00:00", device, "a.example.com", 7, data, 3))

    def test_the_changes_that_may_free_a_device(self) -> None:
        from mozpool.broker.queue import wakes_queue

        cases = [
            ("device_state", '{"state":"ready","old_state":"pending"}', True),
            ("device_state", '{"state":"pxe_booting","old_state":"ready"}', False),
            ("request_state", '{"state":"finding_device","old_state":"new"}', True),
            ("request_state", '{"state":"contact_lifeguard","old_state":"finding_device"}', False),
            ("device_environment", '{"environment":"prod"}', True),
            ("request_log", '{"id":1,"message":"state finding_device"}', False),
        ]
        for kind, data, wakes in cases:
            self.assertEqual(wakes_queue(kind, self.change(kind, data)), wakes, (kind, data))
            self.assertEqual(wakes_queue(kind, json.loads(data)), wakes, (kind, data))
        self.assertTrue(wakes_queue("request_device", self.change("request_device", "{}", device=None)))
        self.assertFalse(wakes_queue("request_device", self.change("request_device", "{}")))

    def test_a_change_whose_text_cannot_say_so_is_not_parsed(self) -> None:
        change = self.change("request_state", '{"state":"contact_lifeguard","old_state":"finding_device"}')
        self.assertFalse(change.says("state", "pending"))
        self.assertIsNone(change._made)
        self.assertFalse(change.says("state", "finding_device"), "in the text, but as the old state")
        self.assertTrue(change.says("old_state", "finding_device"))
