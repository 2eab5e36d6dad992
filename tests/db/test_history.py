"""The state history's and the boot telemetry's tables (issue 15) on both back-ends: paging,
the claim each entry names, failure summaries, boots' milestones, and retention."""

from __future__ import annotations

from typing import Any

from mozpool.db import boots, fixtures, history
from mozpool.db.purge import purge
from tests.support.dbtest import DatabaseTest, on_both_backends

NOW = "2026-11-26 12:00:00"
FQDN = "a.example.com"


class Tables(DatabaseTest):
    async def setUp(self) -> None:
        await super().setUp()
        await fixtures.load_fixture(self.db, FQDN, 2, NOW)
        rows = await self.db.query("SELECT id, name FROM devices ORDER BY name")
        self.ids = {name: int(i) for i, name in rows}

    async def record(self, device: str, old: str | None, new: str, ts: str, cause: str = "timeout",
                     **reason: Any) -> None:
        entry = history.Entry(history.DEVICE, self.ids[device], ts, old, new, cause, FQDN, reason)
        await self.db.runInteraction(history.record, entry)

    async def claim(self, device: str) -> int:
        def q(c: Any) -> int:
            server = c.scalar("SELECT id FROM imaging_servers WHERE fqdn = ?", (FQDN,))
            image = c.scalar("SELECT id FROM images WHERE name = 'b2g'")
            c.execute(
                "INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id, boot_config,"
                " state, state_counters, environment) VALUES (?, 'any', 'me', ?, ?, '{}', 'pending', '{}', 'any')",
                (server, "2026-11-27 12:00:00", image),
            )
            request_id = c.lastrowid
            c.execute("INSERT INTO device_requests (request_id, device_id) VALUES (?, ?)", (request_id, self.ids[device]))
            return int(request_id)

        return await self.db.runInteraction(q)

    async def test_pages_newest_first_until_none_is_left(self) -> None:
        for n in range(5):
            await self.record("panda-0001", "pxe_booting", "pxe_power_cycling", f"2026-11-26 12:0{n}:00.500",
                              counter="pxe_booting", count=n + 1)
        await self.record("panda-0002", "ready", "start_self_test", "2026-11-26 12:00:00", cause="failed")
        first = await self.db.runInteraction(history.device_history_by_name, "panda-0001", 2)
        self.assertEqual([e["reason"]["count"] for e in first["history"]], [5, 4])
        self.assertEqual(first["history"][0]["timestamp"], "2026-11-26T12:04:00.500")
        second = await self.db.runInteraction(history.device_history_by_name, "panda-0001", 2, first["next_before"])
        self.assertEqual([e["reason"]["count"] for e in second["history"]], [3, 2])
        last = await self.db.runInteraction(history.device_history_by_name, "panda-0001", 2, second["next_before"])
        self.assertEqual([e["reason"]["count"] for e in last["history"]], [1])
        self.assertIsNone(last["next_before"])
        self.assertIsNone(await self.db.runInteraction(history.device_history_by_name, "panda-0001 ", 2))
        everything = await self.db.runInteraction(history.device_history_by_name, "panda-0001", 0)
        self.assertEqual(len(everything["history"]), 5, "0: the default page")

    async def test_entries_name_the_claim_and_a_request_history_holds_its_device(self) -> None:
        request_id = await self.claim("panda-0001")
        await self.record("panda-0001", "ready", "start_pxe_boot", "2026-11-26 12:00:01", cause="please_image")
        await self.db.runInteraction(history.record, history.Entry(
            history.REQUEST, request_id, "2026-11-26 12:00:02", "contacting_lifeguard", "pending",
            "lifeguard_contacted", FQDN))
        await self.record("panda-0002", "ready", "start_self_test", "2026-11-26 12:00:03", cause="failed")
        page = await self.db.runInteraction(history.request_history_if_known, request_id)
        self.assertEqual(
            [(e["machine"], e["device"], e["request"], e["to"]) for e in page["history"]],
            [("request", "panda-0001", request_id, "pending"), ("device", "panda-0001", request_id, "start_pxe_boot")],
        )
        self.assertIsNone(await self.db.runInteraction(history.request_history_if_known, request_id + 1))

    async def test_failure_summary_is_written_shown_and_cleared(self) -> None:
        await self.db.query("UPDATE devices SET state = 'failed_pxe_booting' WHERE name = 'panda-0001'")
        await self.record("panda-0001", "pxe_booting", "failed_pxe_booting", "2026-11-26 12:00:00.125",
                          counter="pxe_booting", count=31, limit=30)
        failures = await self.db.runInteraction(history.failures_by_name, ["panda-0001", "panda-0002"])
        self.assertEqual(failures, {"panda-0001": {
            "state": "failed_pxe_booting", "since": "2026-11-26T12:00:00.125",
            "reason": "pxe_booting reached 31 (limit 30) (timeout in pxe_booting)", "phase": "pxe_booting",
            "attempts": 31, "evidence": [],
        }})
        # a row changed behind the machines' back shows no stale summary
        await self.db.query("UPDATE devices SET state = 'failed_sut_verifying' WHERE name = 'panda-0001'")
        self.assertEqual(await self.db.runInteraction(history.failures_by_name, ["panda-0001"]), {})
        await self.record("panda-0001", "failed_sut_verifying", "start_self_test", "2026-11-26 12:01:00",
                          cause="please_self_test")
        self.assertEqual(await self.db.query("SELECT failure FROM devices WHERE name = 'panda-0001'"), [(None,)])

    async def test_a_hardware_line_held_back_in_the_same_transaction_is_evidence(self) -> None:
        from mozpool.db import logs

        def line_then_failure(c: Any) -> dict[str, Any] | None:
            logs.add_log(c, "device", self.ids["panda-0001"], "bmm", "power cycle failed", "2026-11-26 12:00:00")
            return history.record(c, history.Entry(
                history.DEVICE, self.ids["panda-0001"], "2026-11-26 12:00:00.125", "pxe_booting",
                "failed_pxe_booting", "timeout", FQDN, {}))

        failure = await self.db.runInteraction(line_then_failure)
        (line,) = await self.db.query("SELECT id FROM device_logs WHERE message = 'power cycle failed'")
        assert failure is not None
        self.assertEqual(failure["evidence"], [int(line[0])])

    async def test_boots_record_the_first_time_of_each_milestone(self) -> None:
        device = self.ids["panda-0001"]
        await self.db.query("UPDATE devices SET next_image_id = (SELECT id FROM images WHERE name = 'android')"
                            " WHERE id = ?", (device,))
        first = await self.db.runInteraction(boots.start, device, FQDN, "2026-11-26 12:00:00")
        await self.db.runInteraction(boots.mark, device, "power_on", "2026-11-26 12:00:02.500")
        await self.db.runInteraction(boots.mark, device, "power_on", "2026-11-26 12:00:09")  # kept: the first
        second = await self.db.runInteraction(boots.start, device, FQDN, "2026-11-26 12:03:00")
        self.assertNotEqual(first, second)
        self.assertTrue(await self.db.runInteraction(boots.end, device, "2026-11-26 12:05:00", "complete"))
        self.assertFalse(await self.db.runInteraction(boots.mark, device, "init_started", "2026-11-26 12:06:00"),
                         "no open boot")
        found = await self.db.runInteraction(boots.since, "2026-11-26 00:00:00")
        self.assertEqual([(b["id"], b["outcome"], b["power_on"], b["ended"]) for b in found], [
            (second, "complete", None, "2026-11-26 12:05:00"),
            (first, "retried", "2026-11-26 12:00:02.500", "2026-11-26 12:03:00"),
        ])
        self.assertEqual((found[0]["image"], found[0]["hardware_type"], found[0]["device"]),
                         ("android", "panda", "panda-0001"))
        mac = (await self.db.query("SELECT mac_address FROM devices WHERE id = ?", (device,)))[0][0]
        self.assertEqual(await self.db.runInteraction(boots.device_by_mac, mac), device)

    async def test_history_and_boots_are_purged_with_the_logs(self) -> None:
        await self.record("panda-0001", "ready", "start_self_test", "2026-11-01 12:00:00", cause="failed")
        await self.record("panda-0001", "start_self_test", "pxe_power_cycling", "2026-11-26 11:00:00", cause="entry")
        await self.db.runInteraction(boots.start, self.ids["panda-0001"], FQDN, "2026-11-01 12:00:00")
        await self.db.runInteraction(boots.start, self.ids["panda-0002"], FQDN, "2026-11-26 11:00:00")
        counts = await purge(self.db, NOW, 14, 7)
        self.assertEqual((counts["state_history"], counts["boots"]), (1, 1))
        left = await self.db.runInteraction(history.device_history_by_name, "panda-0001")
        self.assertEqual([e["to"] for e in left["history"]], ["pxe_power_cycling"])


TablesSQLite, TablesMariaDB = on_both_backends(Tables)
