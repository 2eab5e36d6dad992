"""Device matching in the database (spec state-machines.md 2.4): what counts as available, the
uniform draw, the reuse preference, and a claim lost to another request."""

from __future__ import annotations

import random
from typing import Any

from mozpool.broker import selection
from mozpool.db.pool import Cursor
from tests.broker.support import BrokerTest
from tests.support.dbtest import on_both_backends, statements_sent

NOW = "2026-01-01 00:00:00"


class Selection(BrokerTest):
    """panda-0001..0004 ready, 0001/0003 in 'prod', 0002/0004 in 'staging'."""

    async def request(self, device: str = "any", image: str = "android", environment: str = "any",
                      boot_config: str = "{}") -> selection.RequestInfo:
        rid = await self.db.runInteraction(self._insert, device, image, environment, boot_config)
        info = await self.db.runInteraction(selection.request_info, rid)
        assert info is not None
        return info

    @staticmethod
    def _insert(c: Cursor, device: str, image: str, environment: str, boot_config: str) -> int:
        c.execute(
            "INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id, boot_config,"
            " state, state_counters, environment) SELECT 1, ?, 't', '2099-01-01 00:00:00', id, ?, 'new', '{}', ?"
            " FROM images WHERE name = ?",
            (device, boot_config, environment, image),
        )
        return c.lastrowid

    async def pick(self, info: selection.RequestInfo, draw: float, exclude: tuple[int, ...] = ()) -> str | None:
        found = await self.db.runInteraction(selection.pick, info, draw, exclude)
        return None if found is None else found.name

    async def picks(self, info: selection.RequestInfo, n: int = 8) -> list[str | None]:
        return [await self.pick(info, k / n) for k in range(n)]

    async def assertUniform(self, info: selection.RequestInfo, expected: set[str], draws: int = 400) -> None:
        """Every expected device, and only those, about equally often over ``draws`` draws.
        (Deterministic: the draws are fixed, and every choice follows from its draw.)"""
        counts: dict[str | None, int] = {}
        for name in await self.picks(info, draws):
            counts[name] = counts.get(name, 0) + 1
        self.assertEqual(set(counts), expected)  # type: ignore[arg-type]
        share = draws / len(expected)
        for n in counts.values():
            self.assertTrue(0.7 * share <= n <= 1.3 * share, counts)

    async def test_uniform_by_sampling_ids(self) -> None:
        await self.assertUniform(await self.request(), {"panda-0001", "panda-0002", "panda-0003", "panda-0004"})

    async def test_uniform_by_counting_when_sampling_misses(self) -> None:
        self.patch(selection, "SAMPLE_TRIES", 0)
        await self.assertUniform(await self.request(), {"panda-0001", "panda-0002", "panda-0003", "panda-0004"})

    async def test_a_small_set_is_found_by_counting(self) -> None:
        """One free device among many ids: sampling misses, counting finds it."""
        await self.db.query("UPDATE devices SET state = 'in_use'")
        await self.set_device("panda-0003", state="ready")
        outcomes: list[bool] = []
        real_sample = selection._sample

        def sample(*args: Any, **kw: Any) -> Any:
            found = real_sample(*args, **kw)
            outcomes.append(found is not None)
            return found

        self.patch(selection, "_sample", sample)
        self.patch(selection, "SAMPLE_TRIES", 1)
        info = await self.request()
        self.assertEqual({await self.pick(info, k / 16) for k in range(16)}, {"panda-0003"})
        self.assertIn(False, outcomes, "some samples missed")
        self.assertIn(True, outcomes, "some hit")

    async def test_only_ready_unclaimed_devices_of_the_environment_or_name(self) -> None:
        await self.set_device("panda-0001", state="self_test_running")
        holder = await self.request()
        await self.db.runInteraction(selection.claim, holder.id, 3, NOW)  # panda-0003
        info = await self.request(environment="prod")
        self.assertEqual(await self.picks(info), [None] * 8)
        info = await self.request(environment="staging")
        self.assertEqual(set(await self.picks(info, 32)), {"panda-0002", "panda-0004"})
        info = await self.request(device="panda-0004")
        self.assertEqual(set(await self.picks(info)), {"panda-0004"})
        info = await self.request(device="panda-0001")
        self.assertIsNone(await self.pick(info, 0.5))
        info = await self.request()
        self.assertEqual(set(await self.picks(info, 32)), {"panda-0002", "panda-0004"})
        self.assertEqual({await self.pick(info, k / 8, (2,)) for k in range(8)}, {"panda-0004"})

    async def test_reusable_image_prefers_devices_holding_it_with_an_equal_boot_config(self) -> None:
        await self.set_device("panda-0001", image="reusable", boot_config='{"b2gbase": "http://b/", "x": 1}')
        await self.set_device("panda-0003", image="android", boot_config='{"b2gbase": "http://b/"}')
        await self.set_device("panda-0004", image="reusable", boot_config='{ "x":1, "b2gbase" : "http://b/"}')
        info = await self.request(image="reusable", boot_config='{"x": 1, "b2gbase": "http://b/"}')
        for tries in (selection.SAMPLE_TRIES, 0):  # by sampling, and by counting
            self.patch(selection, "SAMPLE_TRIES", tries)
            await self.set_device("panda-0002", image="reusable", boot_config='{"b2gbase": "http://other/"}')
            await self.assertUniform(info, {"panda-0001", "panda-0004"}, draws=200)
            # Equal texts and equal parses alike.
            await self.set_device("panda-0002", boot_config='{"x": 1, "b2gbase": "http://b/"}')
            await self.assertUniform(info, {"panda-0001", "panda-0002", "panda-0004"}, draws=300)
        nothing_held = await self.request(image="reusable", boot_config='{"b2gbase": "http://new/"}')
        self.assertEqual(len(set(await self.picks(nothing_held, 64))), 4)
        not_reusable = await self.request(image="android", boot_config='{"b2gbase": "http://b/"}')
        self.assertEqual(len(set(await self.picks(not_reusable, 64))), 4)
        await self.set_device("panda-0001", boot_config=None)
        null_request = await self.request(image="reusable", boot_config="null")
        self.assertEqual(set(await self.picks(null_request)), {"panda-0001"})

    async def test_unparsable_boot_config_matches_nothing(self) -> None:
        await self.set_device("panda-0001", image="reusable", boot_config="{not json")
        info = await self.request(image="reusable", boot_config="{not json")
        self.assertEqual(len(set(await self.picks(info, 64))), 4)

    async def test_claim_replaces_the_requests_old_claim(self) -> None:
        info = await self.request(device="panda-0002")
        first = await self.db.runInteraction(selection.pick_and_claim, info, [0.0], NOW)
        self.assertEqual(first, selection.Claimed(selection.Candidate(2, "panda-0002")))
        await self.db.query("UPDATE requests SET requested_device = 'panda-0003' WHERE id = ?", (info.id,))
        info = await self.db.runInteraction(selection.request_info, info.id)
        again = await self.db.runInteraction(selection.pick_and_claim, info, [0.0], NOW)
        self.assertEqual(again.device, selection.Candidate(3, "panda-0003"))
        self.assertEqual(await self.claims(), [(info.id, "panda-0003")])

    async def test_a_claim_lost_on_the_unique_index_tries_another_device(self) -> None:
        """A selection that read before another request's claim committed: the INSERT loses,
        and the next try excludes the device it lost."""
        rival = await self.request()
        await self.db.runInteraction(selection.claim, rival.id, 1, NOW)
        info = await self.request()
        real_pick = selection.pick
        seen: list[Any] = []

        def stale_then_real(c: Cursor, request: Any, draw: float, exclude: Any = (), dead: Any = ()) -> Any:
            seen.append(tuple(exclude))
            if len(seen) == 1:
                return selection.Candidate(1, "panda-0001")  # what a stale read would offer
            return real_pick(c, request, draw, exclude, dead)

        self.patch(selection, "pick", stale_then_real)
        claimed = await self.db.runInteraction(selection.pick_and_claim, info, [0.0, 0.0, 0.0], NOW)
        assert claimed.device is not None
        self.assertEqual(claimed.lost, ("panda-0001",))
        self.assertIn(claimed.device.name, ("panda-0002", "panda-0003", "panda-0004"))
        self.assertEqual(seen, [(), (1,)])
        self.assertEqual(await self.claims(), [(rival.id, "panda-0001"), (info.id, claimed.device.name)])

    async def test_a_claim_is_read_once_per_transaction(self) -> None:
        """Within one interaction a request's claim is looked up once; what the interaction's own
        claim and clear wrote is known after them, and the history records it."""
        info = await self.request()
        def work(c: Cursor) -> list[int | None]:
            from mozpool.db import history
            from mozpool.db.requests import claim_of
            seen = [claim_of(c, info.id)]
            selection.clear_claim(c, info.id, NOW)  # nothing to clear: no statement
            selection.claim(c, info.id, 2, NOW)
            seen.append(claim_of(c, info.id))
            history.record(c, history.Entry(history.REQUEST, info.id, NOW, "a", "b", "test", "here"))
            selection.clear_claim(c, info.id, NOW)
            seen.append(claim_of(c, info.id))
            return seen

        statements = statements_sent(self)
        self.assertEqual(await self.db.runInteraction(work), [None, 2, None])
        self.assertEqual(sum(s.startswith("SELECT") and "device_requests" in s for s in statements), 1, statements)
        self.assertEqual(await self.claims(), [])
        rows = await self.db.query("SELECT device_id FROM state_history WHERE request_id = ? AND cause = 'test'",
                                   (info.id,))
        self.assertEqual([tuple(r) for r in rows], [(2,)])

    async def test_a_new_any_request_is_claimed_in_few_statements(self) -> None:
        """The statements of a request's creation and its first look, counted: the image and the
        server come with the INSERT, the image's hardware with the request's row, the claim is
        never read, and whether the request is possible at all is asked only when nothing was
        claimed."""
        statements = statements_sent(self)
        created = await self.create(environment="prod")
        self.assertIn(await self.claimed(created["id"]), ("panda-0001", "panda-0003"))
        self.assertFalse([s for s in statements if s.startswith("SELECT id FROM images")], statements)
        self.assertFalse([s for s in statements if "FROM image_pxe_configs WHERE" in s], statements)
        self.assertFalse([s for s in statements if s.startswith("SELECT 1 FROM devices d WHERE")], statements)
        self.assertEqual(sum(s.startswith("SELECT device_id FROM device_requests WHERE request_id") for s in statements),
                         0, statements)  # the history's claim is known from the insert and the claim
        # In bulk (mozpool.broker.intake): the image and the server, the INSERT, the look's
        # context, one sample, the claim, one UPDATE of the state with assigned_at, the log
        # lines in one INSERT (the journal and the history go by executemany) -- and the test's
        # own read of the claim.
        self.assertEqual(len(statements), 8, statements)
        self.assertEqual(sum(s.startswith("UPDATE requests") for s in statements), 1, statements)
        # The look's context (claim, dead servers, suspect controllers, id range) is one SELECT.
        for alone in ("SELECT id FROM imaging_servers WHERE last_seen", "SELECT b.id, b.name, b.fqdn",
                      "SELECT MIN(id)", "SELECT MAX(id)"):
            self.assertFalse([s for s in statements if s.startswith(alone)], (alone, statements))

    async def test_a_look_in_bulk_samples_the_ids_pick_would_try(self) -> None:
        """The bulk look's random ids for a request are the first :func:`selection.pick` tries
        with the same draw, in order: with the first taken, it claims the next free one, as
        pick does, instead of leaving the request to a look of its own."""
        lo, hi = (await self.db.query("SELECT MIN(id), MAX(id) FROM devices"))[0]

        def tried(draw: float) -> tuple[int, int]:  # pick's first two random ids
            rng = random.Random(draw)
            return rng.randint(lo, hi), rng.randint(lo, hi)

        draw = next(k / 64 for k in range(64) if len(set(tried(k / 64))) == 2)
        first, second = tried(draw)
        await self.db.query("UPDATE devices SET state = 'in_use' WHERE id = ?", (first,))
        info = await self.request()
        self.assertEqual((await self.db.runInteraction(selection.pick, info, draw)).id, second)
        looks = await self.db.runInteraction(selection.claim_fresh, [selection.Fresh(info, (draw,))], NOW, None)
        claimed = looks.get(info.id)
        self.assertIsNotNone(claimed and claimed.device, "claimed in bulk")
        self.assertEqual(claimed.device.id, second)  # type: ignore[union-attr]

    async def test_the_look_passes_by_the_devices_of_a_dead_server(self) -> None:
        """The dead servers come with the look's context read: their devices are never claimed,
        and a server that has sent no heartbeat at all is not judged."""
        await self.db.query("INSERT INTO imaging_servers (fqdn, last_seen) VALUES ('gone.example', '2025-01-01 00:00:00')")
        await self.db.query("INSERT INTO imaging_servers (fqdn) VALUES ('quiet.example')")
        await self.db.query("UPDATE devices SET imaging_server_id = (SELECT id FROM imaging_servers"
                            " WHERE fqdn = 'gone.example') WHERE name IN ('panda-0001', 'panda-0002')")
        await self.db.query("UPDATE devices SET imaging_server_id = (SELECT id FROM imaging_servers"
                            " WHERE fqdn = 'quiet.example') WHERE name = 'panda-0003'")
        info = await self.request()
        claimed = set()
        for k in range(24):
            _, found = await self.db.runInteraction(selection.find_now, info.id, [k / 24], NOW, NOW)
            assert found.claimed.device is not None
            claimed.add(found.claimed.device.name)
        self.assertEqual(claimed, {"panda-0003", "panda-0004"})
        self.assertEqual(await self.claims(), [(info.id, found.claimed.device.name)])

    async def test_a_new_request_waits_behind_earlier_ones_for_the_same_devices(self) -> None:
        """The requests waiting ahead (read with the look's context): counted when they could take
        the same devices, at no lower priority, on a live server; with no more devices free than
        wait ahead, the new request joins the queue."""
        await self.db.query("UPDATE devices SET state = 'held' WHERE name <> 'panda-0001'")  # prod, ready
        waiting = await self.request(environment="staging")
        await self.db.query("UPDATE requests SET state = 'finding_device' WHERE id = ?", (waiting.id,))

        async def look() -> selection.FindOutcome:
            info = await self.request(environment="prod")
            _, found = await self.db.runInteraction(selection.find_now, info.id, [0.5], NOW, NOW)
            await self.db.query("DELETE FROM device_requests WHERE request_id = ?", (info.id,))
            return found

        self.assertEqual((await look()).claimed.device, selection.Candidate(1, "panda-0001"), "other devices")
        await self.db.query("UPDATE requests SET environment = 'any' WHERE id = ?", (waiting.id,))
        self.assertEqual(await look(), selection.FindOutcome(queued_behind=1))
        await self.db.query("UPDATE requests SET priority = 10 WHERE id = ?", (waiting.id,))
        self.assertIsNotNone((await look()).claimed.device, "a lower priority waits behind")
        await self.db.query("UPDATE requests SET priority = 50 WHERE id = ?", (waiting.id,))
        await self.db.query("INSERT INTO imaging_servers (fqdn, last_seen) VALUES ('gone.example', '2025-01-01')")
        await self.db.query("UPDATE requests SET imaging_server_id = (SELECT id FROM imaging_servers"
                            " WHERE fqdn = 'gone.example') WHERE id = ?", (waiting.id,))
        self.assertIsNotNone((await look()).claimed.device, "a dead server's requests do not count")
        await self.db.query("UPDATE devices SET state = 'ready' WHERE name = 'panda-0003'")  # prod too
        await self.db.query("UPDATE requests SET imaging_server_id = 1 WHERE id = ?", (waiting.id,))
        self.assertIsNotNone((await look()).claimed.device, "more devices free than requests ahead")

    async def test_an_impossible_request_is_still_told_so(self) -> None:
        info = await self.request(environment="nowhere")
        found = await self.db.runInteraction(selection.find_now, info.id, [0.5], NOW)
        self.assertEqual(found[1], selection.FindOutcome(impossible="no device is in environment nowhere"))

    async def test_nothing_to_claim(self) -> None:
        await self.db.query("UPDATE devices SET state = 'failed_pxe_booting'")
        info = await self.request()
        self.assertEqual(await self.db.runInteraction(selection.pick_and_claim, info, [0.5], NOW), selection.Claimed(None))


SelectionSQLite, SelectionMariaDB = on_both_backends(Selection)
