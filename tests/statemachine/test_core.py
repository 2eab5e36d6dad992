"""The shared machinery, with a toy machine on the devices table, on both back-ends."""

from __future__ import annotations

import json
from typing import Any, Protocol

from automat import TypeMachineBuilder
from twisted.internet import defer, task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from mozpool.db import fixtures, logs
from mozpool.db.errors import DatabaseUnavailable
from mozpool.statemachine import core
from mozpool.statemachine.core import Machine, MachineRunner, TimeoutDriver, each_bounded
from tests.support.dbtest import DatabaseTest, on_both_backends

T0 = 1795694400.0  # 2026-11-26 12:00:00 UTC


class Toy:
    """idle --go--> waiting (10 s; 3 timeouts -> failed) --done--> idle."""

    table, log_kind, key_column, unknown_state = "devices", "device", "name", "unknown"
    timeouts = {"idle": None, "waiting": 10, "failed": None, "unknown": None}

    def __init__(self) -> None:
        self.trace: list[tuple[str, ...]] = []
        self.gate: defer.Deferred[None] | None = None

    async def event(self, m: Machine, event: str, args: dict[str, Any]) -> bool:
        self.trace.append(("event-start", event, m.key))
        if self.gate is not None and m.key == "panda-0001":
            gate, self.gate = self.gate, None
            await gate
        self.trace.append(("event-end", event, m.key))
        if m.state == "idle" and event == "go":
            await m.goto("waiting")
            return True
        if event == "note":  # info lines, then a transition: one write for all of it
            await m.log("first note")
            await m.log("second note", "debug", source="toy")
            await m.goto("waiting")
            return True
        if event == "chat":  # an info line and nothing else
            await m.log("only a note")
            return True
        if event == "alarm":  # an info line, a warning, then a transition citing the warning
            await m.log("before the trouble")
            await m.log("trouble", "warn")
            await m.goto("failed")
            return True
        if m.state == "waiting" and event == "done":
            await m.clear()
            await m.goto("idle")
            return True
        return False

    async def timeout(self, m: Machine) -> bool:
        if m.state != "waiting":
            return False
        if await m.incr("tries") > 2:
            await m.goto("failed")
        else:
            await m.goto("waiting")
        return True

    async def enter(self, m: Machine, state: str) -> None:
        self.trace.append(("enter", state))


class Core(DatabaseTest):
    async def setUp(self) -> None:
        await super().setUp()
        self.clock = task.Clock()
        self.clock.advance(T0)
        await fixtures.load_fixture(self.db, "a.example.com", 2, "2026-11-26 12:00:00")
        await self.db.query("UPDATE devices SET state = 'idle', state_timeout = NULL")
        self.toy = Toy()
        self.runner = MachineRunner(self.db, self.clock, self.toy, "a.example.com", time_scale=0.5)

    async def row(self, name: str = "panda-0001") -> tuple:
        return (await self.db.query("SELECT state, state_timeout, state_counters FROM devices WHERE name = ?", (name,)))[0]

    async def messages(self, device_id: int = 1) -> list[str]:
        return [e["message"] for e in await self.db.runInteraction(logs.get_log, "device", device_id, self.runner.now())]

    async def test_event_persists_state_and_scaled_deadline(self) -> None:
        self.assertTrue(await self.runner.handle_event("panda-0001", "go"))
        self.assertEqual(await self.row(), ("waiting", "2026-11-26 12:00:05", "{}"))
        self.assertEqual(self.toy.trace[-1], ("enter", "waiting"))
        self.assertIn("entering state waiting", await self.messages())

    def count_interactions(self) -> list[int]:
        calls = [0]
        real = self.db.runInteraction

        def counted(*args: Any, **kw: Any) -> Any:
            calls[0] += 1
            return real(*args, **kw)

        self.patch(self.db, "runInteraction", counted)
        return calls

    async def lines(self, device_id: int = 1) -> list[tuple[str, str, str]]:
        return [(e["source"], e["message"], e["timestamp"])
                for e in await self.db.runInteraction(logs.get_log, "device", device_id, self.runner.now())]

    async def test_info_lines_go_with_the_next_write(self) -> None:
        calls = self.count_interactions()
        self.assertTrue(await self.runner.handle_event("panda-0001", "note"))
        self.assertEqual(calls[0], 2, "the load, then one write for the lines and the transition")
        self.assertEqual(await self.lines(), [
            ("statemachine", "first note", "2026-11-26T12:00:00"), ("toy", "second note", "2026-11-26T12:00:00"),
            ("statemachine", "entering state waiting", "2026-11-26T12:00:00"),
        ])

    async def test_lines_left_at_the_end_of_an_operation_are_written(self) -> None:
        calls = self.count_interactions()
        self.assertTrue(await self.runner.handle_event("panda-0001", "chat"))
        self.assertEqual(calls[0], 2, "the load, then the line")
        self.assertEqual(await self.messages(), ["only a note"])

    async def test_a_warning_is_written_at_once_after_the_held_lines(self) -> None:
        self.assertTrue(await self.runner.handle_event("panda-0001", "alarm"))
        self.assertEqual(await self.messages(), ["before the trouble", "trouble", "entering state failed"])
        entries = await self.db.query("SELECT reason FROM state_history WHERE device_id = 1 AND to_state = 'failed'")
        self.assertEqual([json.loads(e[0]).get("text") for e in entries], ["trouble"], "the transition cites it")

    def entry_looks_in_its_transaction(self, fails: int = 0) -> list[str]:
        """``waiting`` becomes an ``entry_writes`` state whose entry begins with incr_with (as a
        request's finding_device looks for a device); the first ``fails`` looks fail.  What the
        look saw of the row: its state, in its own transaction."""
        seen: list[str] = []
        self.toy.entry_writes = ("waiting",)  # type: ignore[attr-defined]

        async def enter(m: Machine, state: str) -> None:
            def look(c: Any) -> None:
                seen.append(c.scalar("SELECT state FROM devices WHERE name = ?", (m.key,)))
                if len(seen) <= fails:
                    raise RuntimeError("database went away")

            if state == "waiting":
                await m.incr_with("looks", look)
                await m.log("looked")

        self.toy.enter = enter  # type: ignore[method-assign]
        return seen

    async def test_entry_writes_the_state_in_its_first_transaction(self) -> None:
        seen = self.entry_looks_in_its_transaction()
        calls = self.count_interactions()
        self.assertTrue(await self.runner.handle_event("panda-0001", "note"))
        self.assertEqual(calls[0], 3, "the load, the state written with the look, the held line")
        self.assertEqual(seen, ["waiting"], "the state is persisted before the entry's work")
        self.assertEqual(await self.row(), ("waiting", "2026-11-26 12:00:05", '{"looks": 1}'))
        self.assertEqual(await self.messages(), ["first note", "second note", "entering state waiting", "looked"])
        history = await self.db.query("SELECT from_state, to_state FROM state_history WHERE device_id = 1")
        self.assertEqual(history, [("idle", "waiting")])
        journal = await self.db.query("SELECT kind, data FROM changes WHERE device_id = 1 AND kind = 'device_state'")
        self.assertEqual([json.loads(d)["state"] for _, d in journal], ["waiting"])

    async def test_entry_writes_state_kept_when_the_look_fails(self) -> None:
        """The look's transaction fails: the state, its lines, its history entry and its journal
        change are written with the retry deadline (nothing of the transition is lost)."""
        seen = self.entry_looks_in_its_transaction(fails=1)
        self.assertTrue(await self.runner.handle_event("panda-0001", "note"))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(seen, ["waiting"])
        self.assertEqual(await self.row(), ("waiting", "2026-11-26 12:00:05", '{"looks": 1}'),
                         "the retry deadline (the failed look counted, as any incr_with that failed)")
        self.assertEqual(await self.messages(), ["first note", "second note", "entering state waiting"])
        history = await self.db.query("SELECT from_state, to_state FROM state_history WHERE device_id = 1")
        self.assertEqual(history, [("idle", "waiting")])
        journal = await self.db.query("SELECT kind FROM changes WHERE device_id = 1 AND kind = 'device_state'")
        self.assertEqual(len(journal), 1)

    async def test_missing_machine(self) -> None:
        self.assertFalse(await self.runner.handle_event("nope", "go"))
        self.assertIsNone(await self.runner.state_change("nope", "idle", "waiting"))

    async def test_a_caller_that_stops_waiting_does_not_cut_a_transition_short(self) -> None:
        self.toy.gate = gate = defer.Deferred()
        call = defer.Deferred.fromCoroutine(self.runner.handle_event("panda-0001", "go"))
        call.cancel()  # e.g. the HTTP client hung up
        self.failureResultOf(call, defer.CancelledError)
        gate.callback(None)
        self.assertEqual(await self.runner.current_state("panda-0001"), "waiting", "the work ran on")
        self.assertEqual(self.toy.trace[-1], ("enter", "waiting"))

    async def test_a_failed_entry_action_is_retried_by_the_timeout_path(self) -> None:
        """A transient state whose entry failed part-way is not left without a timer."""
        calls = []
        real_enter = self.toy.enter

        async def flaky_enter(m: Machine, state: str) -> None:
            calls.append(state)
            if len(calls) == 1:
                raise RuntimeError("database went away")
            await real_enter(m, state)

        self.toy.enter = flaky_enter  # type: ignore[method-assign]
        await self.runner.state_change("panda-0001", "idle", "failed")
        self.assertEqual((await self.row())[:2], ("failed", "2026-11-26 12:00:05"), "a retry deadline")
        self.flushLoggedErrors(RuntimeError)
        self.clock.advance(5)
        await TimeoutDriver(self.runner, interval=1).tick()
        self.assertEqual(calls, ["failed", "failed"])
        self.assertEqual(await self.row(), ("failed", None, "{}"))
        self.assertIn("retrying the entry of state failed", await self.messages())

    async def test_an_entry_action_failed_by_an_unavailable_database_is_a_warning(self) -> None:
        """The pool reports an outage once: an entry action it failed is one warning line, not a
        logged error with a traceback (a bug is still logged as one, as above)."""
        async def unavailable_enter(m: Machine, state: str) -> None:
            raise DatabaseUnavailable("no answer from the database within 10 s")

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.toy.enter = unavailable_enter  # type: ignore[method-assign]
        await self.runner.state_change("panda-0001", "idle", "failed")
        self.assertEqual((await self.row())[:2], ("failed", "2026-11-26 12:00:05"), "a retry deadline")
        self.assertEqual(self.flushLoggedErrors(), [])
        retries = [e for e in events if "will retry" in e.get("log_format", "")]
        self.assertEqual([(e["log_level"], "log_failure" in e) for e in retries], [(LogLevel.warn, False)])

    async def test_ignored_event_logged_and_nothing_changes(self) -> None:
        await self.runner.handle_event("panda-0001", "done")
        self.assertEqual(await self.row(), ("idle", None, "{}"))
        self.assertIn("ignored event done in state idle", await self.messages())

    async def test_timeouts_counters_and_limit(self) -> None:
        await self.runner.handle_event("panda-0001", "go")
        driver = TimeoutDriver(self.runner, interval=1)
        await driver.tick()
        self.assertEqual((await self.row())[0:1], ("waiting",))
        self.assertEqual(self.toy.trace.count(("enter", "waiting")), 1, "not due yet")
        for expected_tries in (1, 2):
            self.clock.advance(5)
            await driver.tick()
            state, _, counters = await self.row()
            self.assertEqual((state, counters), ("waiting", f'{{"tries": {expected_tries}}}'))
        self.clock.advance(5)
        await driver.tick()
        self.assertEqual(await self.row(), ("failed", None, '{"tries": 3}'))

    async def test_on_pass_after_every_completed_poll(self) -> None:
        """The heartbeat_file hook: called after a poll that read the due machines and handled
        them; not after one that could not read them."""
        driver = TimeoutDriver(self.runner, interval=1)
        passes: list[int] = []
        driver.on_pass = lambda: passes.append(self.toy.trace.count(("enter", "waiting")))
        await self.runner.handle_event("panda-0001", "go")
        self.clock.advance(5)
        await driver.tick()
        self.assertEqual(passes, [2], "after the due machine's timeout was handled")

        async def broken() -> list[str]:
            raise RuntimeError("no database")

        self.patch(self.runner, "due", broken)
        await driver.tick()
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(passes), 1)

    async def test_due_only_for_this_server(self) -> None:
        await self.runner.handle_event("panda-0001", "go")
        await fixtures.load_fixture(self.db, "b.example.com", 1, "2026-11-26 12:00:00", prefix="b")
        await self.db.query("UPDATE devices SET state = 'waiting', state_timeout = '2026-11-26 11:00:00' WHERE name = 'b-0001'")
        self.clock.advance(5)
        self.assertEqual(await self.runner.due(), ["panda-0001"])

    async def test_state_change(self) -> None:
        self.assertFalse(await self.runner.state_change("panda-0001", "waiting", "failed"))
        self.assertEqual((await self.row())[0], "idle")
        self.assertTrue(await self.runner.state_change("panda-0001", "idle", "waiting"))
        self.assertEqual((await self.row())[:2], ("waiting", "2026-11-26 12:00:05"))
        # An unrecognised stored state reads as unknown, and then any change is allowed.
        await self.db.query("UPDATE devices SET state = 'bogus' WHERE name = 'panda-0001'")
        self.assertEqual(await self.runner.current_state("panda-0001"), "unknown")
        self.assertTrue(await self.runner.state_change("panda-0001", "whatever", "idle"))
        self.assertEqual((await self.row())[0], "idle")

    async def test_events_for_one_machine_never_interleave(self) -> None:
        self.toy.gate = gate = defer.Deferred()
        first = self.runner.post("panda-0001", "go")
        second = self.runner.post("panda-0001", "done")
        other = self.runner.post("panda-0002", "go")
        await other  # another machine is not held up
        self.assertNotIn(("event-start", "done", "panda-0001"), self.toy.trace)
        self.assertIn(("event-end", "go", "panda-0002"), self.toy.trace)
        gate.callback(None)
        await first
        await second
        mine = [e[:2] for e in self.toy.trace if e[0] in ("event-start", "event-end") and e[2] == "panda-0001"]
        self.assertEqual(
            mine, [("event-start", "go"), ("event-end", "go"), ("event-start", "done"), ("event-end", "done")]
        )
        self.assertEqual((await self.row())[0], "idle")
        self.assertEqual(self.runner._locks, {})


    # --- the driver's timers ----------------------------------------------------------------

    async def started_driver(self) -> TimeoutDriver:
        driver = TimeoutDriver(self.runner, interval=1000)  # the poll stays out of the way
        driver.startService()
        self.addCleanup(driver.stopService)
        await driver._tick  # the first poll, at start
        return driver

    async def test_a_deadline_set_here_times_out_on_time_without_the_poll(self) -> None:
        driver = await self.started_driver()
        await self.runner.handle_event("panda-0001", "go")  # waiting: 10 s x 0.5
        self.clock.advance(4.99)
        await driver.idle()
        self.assertEqual((await self.row())[2], "{}")
        self.clock.advance(0.02)
        await driver.idle()
        self.assertEqual((await self.row())[::2], ("waiting", '{"tries": 1}'))
        self.clock.advance(5.01)  # and the next deadline, set by that timeout, too
        await driver.idle()
        self.assertEqual((await self.row())[::2], ("waiting", '{"tries": 2}'))

    async def test_stopping_cancels_the_timers(self) -> None:
        driver = await self.started_driver()
        await self.runner.handle_event("panda-0001", "go")
        self.assertEqual(len(self.clock.getDelayedCalls()), 2, "the poll and the deadline")
        await driver.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        await self.runner.handle_event("panda-0002", "go")
        self.assertEqual(self.clock.getDelayedCalls(), [], "a stopped driver arms nothing")

    async def test_timers_run_at_most_the_concurrency_at_once(self) -> None:
        self.patch(core, "TIMEOUT_CONCURRENCY", 1)
        driver = await self.started_driver()
        await self.runner.handle_event("panda-0001", "go")
        await self.runner.handle_event("panda-0002", "go")
        running, most = [0], [0]
        real_timeout = self.toy.timeout
        gate: defer.Deferred[None] = defer.Deferred()

        async def counted(m: Machine) -> bool:
            running[0] += 1
            most[0] = max(most[0], running[0])
            await gate
            running[0] -= 1
            return await real_timeout(m)

        self.toy.timeout = counted  # type: ignore[method-assign]
        self.clock.advance(5.01)
        await self.settle_db(lambda: running[0] > 0)
        await self.settle_db(lambda: running[0] > 1)
        self.assertEqual(running[0], 1, "the second waits for the first")
        gate.callback(None)
        await driver.idle()
        self.assertEqual(most[0], 1)
        self.assertEqual([(await self.row(n))[2] for n in ("panda-0001", "panda-0002")], ['{"tries": 1}'] * 2)

    async def settle_db(self, done: Any, rounds: int = 100) -> None:
        """Give timer-started work (which reads the database first) ``rounds`` database round
        trips to make ``done()`` true."""
        for _ in range(rounds):
            if done():
                return
            await self.db.query("SELECT 1")


CoreSQLite, CoreMariaDB = on_both_backends(Core)


class EachBounded(TestCase):
    """The drivers' bounded fan-out."""

    async def test_at_most_limit_at_once_in_order(self) -> None:
        gates: dict[int, defer.Deferred[None]] = {}
        started: list[int] = []

        async def work(i: int) -> None:
            started.append(i)
            gates[i] = defer.Deferred()
            await gates[i]

        done = defer.Deferred.fromCoroutine(each_bounded(range(5), 2, work))
        self.assertEqual(started, [0, 1])
        gates[1].callback(None)
        self.assertEqual(started, [0, 1, 2])
        for i in (0, 2, 3, 4):
            gates[i].callback(None)
        await done
        self.assertEqual(started, [0, 1, 2, 3, 4])

    async def test_synchronous_work_does_not_recurse(self) -> None:
        seen: list[int] = []

        async def work(i: int) -> None:
            seen.append(i)

        await each_bounded(range(100_000), 32, work)
        self.assertEqual(len(seen), 100_000)

    async def test_until_stops_starting_work(self) -> None:
        seen: list[int] = []

        async def work(i: int) -> None:
            seen.append(i)

        await each_bounded(range(10), 3, work, until=lambda: len(seen) >= 4)
        self.assertEqual(seen, [0, 1, 2, 3])


class _Inputs(Protocol):
    def go(self) -> Any:
        """Accepted in ``idle`` only."""


class _Core:
    pass


def _tiny_machine() -> Any:
    """idle --go--> busy, whose behaviour answers "went"."""
    builder = TypeMachineBuilder(_Inputs, _Core)
    idle, busy = builder.state("idle"), builder.state("busy")

    @idle.upon(_Inputs.go).to(busy)
    async def go(inputs: _Inputs, core: _Core) -> str:
        return "went"

    return builder.build()(_Core())


class ApplyInput(TestCase):
    """The one place an Automat machine is given an input and NoTransition read as 'not accepted'."""

    async def test_accepted_input_hands_its_answer_on(self) -> None:
        seen: list[str] = []

        async def then(answer: str) -> None:
            seen.append(answer)

        self.assertTrue(await core.apply_input(_tiny_machine(), lambda i: i.go(), then))
        self.assertEqual(seen, ["went"])

    async def test_refused_input_is_false(self) -> None:
        machine = _tiny_machine()
        self.assertTrue(await core.apply_input(machine, lambda i: i.go()))
        seen: list[Any] = []
        self.assertFalse(await core.apply_input(machine, lambda i: i.go(), lambda a: defer.succeed(seen.append(a))))
        self.assertEqual(seen, [])
