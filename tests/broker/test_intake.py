"""Request creation in bulk (mozpool/broker/intake.py): a burst of ``any`` requests is inserted
and claimed in few transactions, writes exactly what the request machine's own path writes, and
leaves every other outcome to the machine -- on SQLite and MariaDB."""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet import defer

from mozpool.broker import intake, queries, selection
from mozpool.broker.interfaces import RequestSpec
from mozpool.db.errors import Conflict
from mozpool.statemachine.core import Row
from mozpool.timeutil import dbnow, deadline_text
from tests.broker.support import HERE, BrokerTest
from tests.support.dbtest import on_both_backends, statements_sent


class Bulk(BrokerTest):
    devices = 12

    def spec(self, image: str = "android") -> RequestSpec:
        return RequestSpec("tester@example.com", 3600, image, "any", "{}")

    async def through_the_machine(self) -> int:
        """A request created the way a named one is: inserted, then ``find_device`` fed to its
        machine, which looks for a device itself."""
        spec, broker = self.spec(), self.broker
        rid = await self.db.runInteraction(
            queries.insert_request, HERE, "any", spec, dbnow(self.clock, spec.duration), dbnow(self.clock),
            "Request created", deadline_text(self.clock.seconds()))
        await broker.runner.handle_event(str(rid), "find_device", created=Row(rid, str(rid), "new"))
        return int(rid)

    async def written(self, rid: int) -> dict[str, Any]:
        """Everything the creation wrote about the request, device names written as DEV."""

        def same(text: Any) -> Any:
            return re.sub(r"panda-\d{4}", "DEV", text) if isinstance(text, str) else text

        (row,) = await self.db.query(
            "SELECT state, state_counters, state_timeout, assigned_at FROM requests WHERE id = ?", (rid,))
        history = await self.db.query(
            "SELECT from_state, to_state, cause, reason, device_id IS NULL, server FROM state_history"
            " WHERE request_id = ? ORDER BY id", (rid,))
        journal = await self.db.query(
            "SELECT kind, data FROM changes WHERE request_id = ? AND kind <> 'request_log' ORDER BY id", (rid,))
        lines = await self.db.query(
            "SELECT l.message, c.data FROM request_logs l JOIN changes c ON c.kind = 'request_log'"
            " AND c.request_id = l.request_id WHERE l.request_id = ? ORDER BY l.id, c.id", (rid,))
        for message, data in lines:  # each line's journal entry carries it
            self.assertIn(message, [json.loads(d)["message"] for _, d in lines])
        line_data = [json.loads(d) for _, d in lines]
        return {
            "row": (row[0], json.loads(row[1]), row[2], row[3]),
            "history": [tuple(same(v) for v in h) for h in history],
            "journal": sorted((kind, same(json.dumps({k: v for k, v in json.loads(data).items() if k != "device_id"},
                                                      sort_keys=True))) for kind, data in journal),
            "lines": [same(m) for m in await self.messages(rid)][1:],  # after the creation's own line
            "line_ids": sorted({d["id"] for d in line_data}) == sorted(
                int(r[0]) for r in await self.db.query("SELECT id FROM request_logs WHERE request_id = ?", (rid,))),
        }

    async def test_a_claim_in_bulk_writes_what_the_machine_writes(self) -> None:
        lost: set[int] = set()
        real_claim = selection.claim

        def racing_claim(c: Any, request_id: int, device_id: int, now: str, stamp: bool = True) -> None:
            if request_id not in lost:  # every request loses its first race once
                lost.add(request_id)
                raise Conflict("someone else got it first")
            real_claim(c, request_id, device_id, now, stamp)

        def taken(c: Any, pairs: Any) -> None:  # the claim in bulk loses: its claims are made one by one
            raise Conflict("someone else got one first")

        self.patch(selection, "claim", racing_claim)
        self.patch(selection, "insert_claims", taken)
        bulk = (await self.create())["id"]
        own = await self.through_the_machine()
        in_bulk, by_machine = await self.written(bulk), await self.written(own)
        self.maxDiff = None
        self.assertEqual(in_bulk, by_machine)
        self.assertEqual(in_bulk["row"][0], "contact_lifeguard")
        self.assertEqual(in_bulk["lines"], [
            "entering state finding_device", "device DEV was claimed by another request; trying another",
            "Assigning device DEV", "entering state contact_lifeguard"])
        self.assertTrue(in_bulk["line_ids"])

    def batch_sizes(self) -> list[int]:
        """The size of each batch created from now on, in order."""
        sizes: list[int] = []
        real = intake.create_batch

        def counting(c: Any, server: str, batch: Any, *rest: Any) -> Any:
            sizes.append(len(batch))
            return real(c, server, batch, *rest)

        self.patch(intake, "create_batch", counting)
        return sizes

    async def test_a_burst_goes_in_few_transactions_and_claims_distinct_devices(self) -> None:
        batches = self.batch_sizes()
        made = await defer.gatherResults([
            defer.ensureDeferred(self.broker.create_request("any", self.spec())) for _ in range(10)])
        self.assertEqual(sum(batches), 10)
        self.assertEqual(batches[0], 1, "a request arriving alone goes at once")
        self.assertLessEqual(len(batches), intake.LANES + 1, "the rest wait for the lanes, and go together")
        devices = [m["assigned_device"] for m in made]
        self.assertEqual(len(set(devices)), 10)
        self.assertEqual(sorted(devices), sorted(name for _, name in await self.claims()))
        for m in made:
            self.assertEqual(await self.state(m["id"]), "contact_lifeguard")

    async def test_servers_alive_share_the_batch(self) -> None:
        """With four servers alive, a server's batches take a quarter of the creations a server
        alone would (never fewer than the least)."""
        batches = self.batch_sizes()
        self.patch(intake, "BATCH", 8)
        self.patch(intake, "LEAST", 2)
        self.broker.intake.batches.lanes = 1
        self.broker.intake.servers_alive = lambda: 4
        await defer.gatherResults([
            defer.ensureDeferred(self.broker.create_request("any", self.spec())) for _ in range(9)])
        self.assertEqual(batches, [1, 2, 2, 2, 2])
        self.assertEqual([intake.batch_size(n) for n in (1, 2, 3, 4, 5, 100)], [8, 4, 2, 2, 2, 2])

    async def test_what_claims_nothing_goes_on_through_its_machine(self) -> None:
        """More requests than devices: those left over wait in the queue, as their machine's own
        look decided."""
        await self.db.query("UPDATE devices SET state = 'maintenance_mode' WHERE name > 'panda-0002'")
        made = await defer.gatherResults([
            defer.ensureDeferred(self.broker.create_request("any", self.spec())) for _ in range(4)])
        await self.broker.idle()
        states = sorted([await self.state(m["id"]) for m in made])
        self.assertEqual(states, ["contact_lifeguard"] * 2 + ["finding_device"] * 2)
        for m in made:
            if await self.state(m["id"]) == "finding_device":
                self.assertEqual(m["assigned_device"], "")
                self.assertEqual(await self.counters(m["id"]), {"finding_device": 1})
                self.assertTrue(any("waiting in the queue" in line for line in await self.messages(m["id"])))

    async def test_an_image_gone_fails_its_creation_alone(self) -> None:
        await self.db.query("INSERT INTO images (name, boot_config_keys, can_reuse, hidden, has_sut_agent)"
                            " VALUES ('going', '[]', 0, 0, 0)")
        first = self.broker.create_request("any", self.spec())  # goes alone, at once
        await self.db.query("DELETE FROM images WHERE name = 'going'")  # after the API looked it up
        rest = [self.broker.create_request("any", self.spec(image)) for image in ("android", "going", "android")]
        results = await defer.DeferredList([first, *rest], consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True, True, False, True])
        self.assertIsInstance(results[2][1].value, ValueError)
        self.assertEqual(len(await self.claims()), 3)

    async def test_a_failed_batch_fails_its_creations_and_the_next_is_served(self) -> None:
        real = intake.create_batch
        calls: list[int] = []

        def failing_once(c: Any, *args: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("the batch failed")
            return real(c, *args)

        self.patch(intake, "create_batch", failing_once)
        with self.assertRaises(RuntimeError):
            await self.broker.create_request("any", self.spec())
        made = await self.broker.create_request("any", self.spec())
        self.assertEqual(await self.state(made["id"]), "contact_lifeguard")
        self.flushLoggedErrors(RuntimeError)


BulkSQLite, BulkMariaDB = on_both_backends(Bulk)


class ClaimMany(BrokerTest):
    """The claims of a batch in one INSERT, when another transaction took one of the devices."""

    async def test_a_device_taken_meanwhile_is_lost_and_the_rest_are_claimed(self) -> None:
        ids = {name: int(i) for i, name in await self.db.query("SELECT id, name FROM devices")}
        other = (await self.create())["id"]  # holds some device: free the others' claims
        taken = await self.claimed(other)
        assert taken is not None
        rows = [(await self.through_new()) for _ in range(3)]
        free = [name for name in sorted(ids) if name != taken][:2]
        chosen = list(zip(rows, [selection.Candidate(ids[free[0]], free[0]),
                                 selection.Candidate(ids[taken], taken),
                                 selection.Candidate(ids[free[1]], free[1])]))
        sent = statements_sent(self)
        out = await self.db.runInteraction(selection.claim_many, chosen, dbnow(self.clock))
        inserts = len([sql for sql in sent if sql.startswith("INSERT INTO device_requests")])
        # MySQL names the taken device: the rest go again together; SQLite's error names none.
        self.assertEqual(inserts, 2 if self.backend == "mysql" else 1 + 3)
        self.assertEqual(out[rows[1]], selection.Claimed(None, (taken,), (ids[taken],)))
        self.assertEqual((out[rows[0]].device, out[rows[2]].device), (chosen[0][1], chosen[2][1]))
        self.assertEqual(await self.claims(), sorted([(other, taken), (rows[0], free[0]), (rows[2], free[1])]))

    async def test_a_conflict_naming_no_device_claims_each_alone(self) -> None:
        ids = {name: int(i) for i, name in await self.db.query("SELECT id, name FROM devices")}
        rows = [(await self.through_new()) for _ in range(2)]

        def unnamed(c: Any, pairs: Any) -> None:
            raise Conflict("UNIQUE constraint failed: device_requests.device_id")

        self.patch(selection, "insert_claims", unnamed)
        chosen = [(rows[0], selection.Candidate(ids["panda-0001"], "panda-0001")),
                  (rows[1], selection.Candidate(ids["panda-0002"], "panda-0002"))]
        out = await self.db.runInteraction(selection.claim_many, chosen, dbnow(self.clock))
        self.assertEqual([out[r].device for r in rows], [c for _, c in chosen])
        self.assertEqual(await self.claims(), [(rows[0], "panda-0001"), (rows[1], "panda-0002")])

    async def through_new(self) -> int:
        """A request inserted in ``new``, holding nothing."""
        spec = RequestSpec("tester@example.com", 3600, "android", "any", "{}")
        return int(await self.db.runInteraction(
            queries.insert_request, HERE, "any", spec, dbnow(self.clock, 3600), dbnow(self.clock), "made"))


ClaimManySQLite, ClaimManyMariaDB = on_both_backends(ClaimMany)


class LostBatch(BrokerTest):
    devices = 6

    async def test_a_batch_lost_to_concurrent_work_is_made_again_one_by_one(self) -> None:
        """A batch that keeps losing (deadlocks, Galera certification) is rolled back whole and
        the pool gives up with Conflict: each of its creations is made again alone, none lost."""
        real = intake.create_batch
        sizes: list[int] = []

        def losing_big_batches(c: Any, server: str, batch: Any, *rest: Any) -> Any:
            sizes.append(len(batch))
            if len(batch) > 1:
                raise Conflict("transaction lost 5 times to concurrent work")
            return real(c, server, batch, *rest)

        self.patch(intake, "create_batch", losing_big_batches)
        self.broker.intake.batches.lanes = 2
        spec = RequestSpec("tester@example.com", 3600, "android", "any", "{}")
        made = await defer.gatherResults([
            defer.ensureDeferred(self.broker.create_request("any", spec)) for _ in range(6)])
        self.assertEqual(len({m["assigned_device"] for m in made}), 6)
        self.assertIn(4, sizes, "the batch that lost (two went alone, one in each lane)")
        self.assertEqual(len(await self.claims()), 6)


LostBatchSQLite, LostBatchMariaDB = on_both_backends(LostBatch)
