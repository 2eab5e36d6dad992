"""The state history the shared runner records with every goto (issue 15): cause, structured
reason, evidence and a device's failure summary, on a toy machine driven with task.Clock, on
both back-ends."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import task

from mozpool.db import changes, fixtures, history
from mozpool.statemachine.core import Machine, MachineRunner, TimeoutDriver
from tests.support.dbtest import DatabaseTest, on_both_backends

T0 = 1795694400.0  # 2026-11-26 12:00:00 UTC
FQDN = "a.example.com"


class Toy:
    """idle --go--> waiting (10 s; a third timeout -> failed_toy, with a warning);
    idle --jump--> hop, whose entry moves on to waiting; idle --poke--> waiting with a reason."""

    table, log_kind, key_column, unknown_state = "devices", "device", "name", "unknown"
    timeouts = {"idle": None, "waiting": 10, "hop": None, "failed_toy": None, "unknown": None}
    limits = {"tries": 2}

    async def event(self, m: Machine, event: str, args: dict[str, Any]) -> bool:
        if m.state == "idle" and event == "go":
            await m.goto("waiting")
        elif m.state == "idle" and event == "jump":
            await m.goto("hop")
        elif m.state == "idle" and event == "poke":
            m.because(outcome="power_cycle_failed", extra=1)
            await m.goto("waiting", reason={"extra": 2}, cause="poked")
        elif m.state == "waiting" and event == "again":
            await m.goto("waiting")  # a re-entry without a reason: not recorded
        elif m.state == "waiting" and event == "said":
            await m.goto("waiting", why="because I said so")  # a re-entry with a reason: recorded
        else:
            return False
        return True

    async def timeout(self, m: Machine) -> bool:
        if m.state != "waiting":
            return False
        if await m.incr("tries") > self.limits["tries"]:
            await m.log("no answer, giving up", "warn")
            await m.goto("failed_toy")
        else:
            await m.goto("waiting")
        return True

    async def enter(self, m: Machine, state: str) -> None:
        if state == "hop":
            await m.goto("waiting")


class Recording(DatabaseTest):
    async def setUp(self) -> None:
        await super().setUp()
        self.clock = task.Clock()
        self.clock.advance(T0 + 0.25)
        await fixtures.load_fixture(self.db, FQDN, 2, "2026-11-26 12:00:00")
        await self.db.query("UPDATE devices SET state = 'idle', state_timeout = NULL")
        self.runner = MachineRunner(self.db, self.clock, Toy(), FQDN)
        self.driver = TimeoutDriver(self.runner, interval=1)
        self.device_id = int((await self.db.query("SELECT id FROM devices WHERE name = 'panda-0001'"))[0][0])

    async def entries(self) -> list[dict[str, Any]]:
        """Oldest first."""
        page = await self.db.runInteraction(history.device_history, self.device_id, 1000)
        return list(reversed(page["history"]))

    async def timeout_after(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.driver.tick()

    async def test_an_event_is_recorded_with_time_cause_and_server(self) -> None:
        await self.runner.handle_event("panda-0001", "go")
        (entry,) = await self.entries()
        self.assertEqual(entry, {
            "id": entry["id"], "timestamp": "2026-11-26T12:00:00.250", "machine": "device", "device": "panda-0001",
            "request": None, "from": "idle", "to": "waiting", "cause": "go", "server": FQDN, "reason": {},
        })

    async def test_counters_give_the_reason_with_their_limit(self) -> None:
        await self.runner.handle_event("panda-0001", "go")
        for _ in range(3):
            await self.timeout_after(10)
        got = [(e["from"], e["to"], e["cause"], e["reason"]) for e in await self.entries()]
        self.assertEqual(got, [
            ("idle", "waiting", "go", {}),
            ("waiting", "waiting", "timeout", {"counter": "tries", "count": 1, "limit": 2}),
            ("waiting", "waiting", "timeout", {"counter": "tries", "count": 2, "limit": 2}),
            ("waiting", "failed_toy", "timeout",
             {"counter": "tries", "count": 3, "limit": 2, "text": "no answer, giving up"}),
        ])

    async def test_a_failure_summary_cites_the_warning_and_the_hardware(self) -> None:
        def bmm_line(c: Any) -> int:
            from mozpool.db import logs

            return logs.add_log_now(c, "device", self.device_id, "bmm", "power cycle failed: relay hung", "2026-11-26 12:00:00")

        hardware_line = await self.db.runInteraction(bmm_line)
        await self.runner.handle_event("panda-0001", "go")
        for _ in range(3):
            await self.timeout_after(10)
        warning = (await self.db.query(
            "SELECT id FROM device_logs WHERE device_id = ? AND message = 'no answer, giving up'", (self.device_id,)))[0][0]
        (text,) = (await self.db.query("SELECT failure FROM devices WHERE id = ?", (self.device_id,)))[0]
        self.assertEqual(json.loads(text), {
            "state": "failed_toy", "since": "2026-11-26T12:00:30.250",
            "reason": "no answer, giving up; tries reached 3 (limit 2) (timeout in waiting)",
            "phase": "waiting", "attempts": 3, "evidence": sorted([int(hardware_line), int(warning)]),
        })
        journal = await self.db.query("SELECT data FROM changes WHERE kind = ? ORDER BY id", (changes.DEVICE_STATE,))
        self.assertEqual(json.loads(journal[-1][0])["failure"], json.loads(text), "followers hear it too")
        # leaving the failed state clears it
        await self.runner.state_change("panda-0001", "failed_toy", "idle")
        self.assertEqual(await self.db.query("SELECT failure FROM devices WHERE id = ?", (self.device_id,)), [(None,)])
        last = (await self.entries())[-1]
        self.assertEqual((last["from"], last["to"], last["cause"]), ("failed_toy", "idle", "state_change"))

    async def test_a_plain_reentry_is_not_recorded_but_one_with_a_reason_is(self) -> None:
        await self.runner.handle_event("panda-0001", "go")
        await self.runner.handle_event("panda-0001", "again")
        await self.runner.handle_event("panda-0001", "said")
        got = [(e["from"], e["to"], e["cause"], e["reason"]) for e in await self.entries()]
        self.assertEqual(got, [
            ("idle", "waiting", "go", {}),
            ("waiting", "waiting", "said", {"text": "because I said so"}),
        ])

    async def test_a_goto_made_by_an_entry_action_has_cause_entry(self) -> None:
        await self.runner.handle_event("panda-0001", "jump")
        got = [(e["from"], e["to"], e["cause"]) for e in await self.entries()]
        self.assertEqual(got, [("idle", "hop", "jump"), ("hop", "waiting", "entry")])

    async def test_callers_pass_reasons_and_may_name_the_cause(self) -> None:
        await self.runner.handle_event("panda-0001", "poke")
        (entry,) = await self.entries()
        self.assertEqual((entry["cause"], entry["reason"]), ("poked", {"outcome": "power_cycle_failed", "extra": 2}))

    async def test_observers_see_each_transition_in_its_transaction(self) -> None:
        seen: list[tuple[str | None, str, str]] = []

        def observe(c: Any, entry: history.Entry) -> None:
            seen.append((entry.old, entry.new, entry.cause))
            if entry.new == "hop":
                raise RuntimeError("observer broke")

        self.runner.observers.append(observe)
        await self.runner.handle_event("panda-0001", "go")
        self.assertEqual(seen, [("idle", "waiting", "go")])
        await self.runner.state_change("panda-0001", "waiting", "idle")
        with self.assertRaises(RuntimeError):
            await self.runner.handle_event("panda-0001", "jump")
        state = (await self.db.query("SELECT state FROM devices WHERE id = ?", (self.device_id,)))[0][0]
        self.assertEqual(state, "idle", "the observer's failure undid the transition: one transaction")
        self.assertEqual([e["to"] for e in await self.entries()], ["waiting", "idle"])


RecordingSQLite, RecordingMariaDB = on_both_backends(Recording)
