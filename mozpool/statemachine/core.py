"""The machinery both layers' machines run on: persisted rows, per-machine serialization,
counters, logging, and the timeout driver.

A layer describes its machine with a :class:`MachineKind` (its table, its timeouts, and three
async hooks: ``event``, ``timeout`` and ``enter``).  :class:`MachineRunner` does the rest::

    runner = MachineRunner(db, clock, DeviceKind(...), server_fqdn, time_scale)
    await runner.handle_event("panda-0001", "please_power_cycle", {})
    runner.post("panda-0001", "power_cycle_ok")   # from a side effect: queued, never awaited
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol, Sequence, TypeVar

from automat import NoTransition
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from mozpool.logconfig import Logger
from twisted.python.failure import Failure

from mozpool.db import history, logs
from mozpool.db.errors import DatabaseUnavailable
from mozpool.db.jsontext import loads_object
from mozpool.db.pool import Cursor, Database
from mozpool.statemachine import queries
from mozpool.timeutil import dbnow, deadline_text

log = Logger()
T = TypeVar("T")
M = TypeVar("M")

#: The original polled every 10 s; the interval is scaled like every timeout.
POLL_INTERVAL = 10.0
#: Timeouts handled at once per tick, so a burst of due machines does not flood the pool.
TIMEOUT_CONCURRENCY = 32


@dataclass
class Row:
    """A machine's persisted part."""

    id: int
    key: str
    state: str
    counters: dict[str, int] = field(default_factory=dict)
    timeout: str | None = None


class MachineKind(Protocol):
    """What a layer tells the runner about its machine."""

    #: 'devices' or 'requests'
    table: str
    #: 'device' or 'request': which log table lines go to
    log_kind: str
    #: the column a machine is addressed by: 'name' for devices, 'id' for requests
    key_column: str
    #: what an unrecognised stored state is read as
    unknown_state: str
    #: state -> nominal timeout in seconds (None: no timer); a state missing here is unknown
    timeouts: Mapping[str, float | None]

    async def event(self, m: "Machine", event: str, args: dict[str, Any]) -> bool:
        """Apply ``event``; False if the current state does not accept it."""

    async def timeout(self, m: "Machine") -> bool:
        """Apply the current state's timeout rule; False if it has none."""

    async def enter(self, m: "Machine", state: str) -> None:
        """Run ``state``'s entry action (after the row was written)."""

    # Optional: ``entry_writes``, the states whose entry action begins with
    # :meth:`Machine.incr_with`; the goto's write of the state then travels in that transaction
    # instead of one of its own (persisted before anything the entry does, R-1, for one commit
    # less).  A request's ``finding_device`` is one: it is entered in the transaction that looks
    # for a device, so a request in it has always looked once (the queue counts it as waiting).


class Machine:
    """One machine during one operation (an event, a timeout or a state change), under its lock."""

    def __init__(self, runner: "MachineRunner", row: Row, cause: str = "operation") -> None:
        self.runner = runner
        self.row = row
        #: increases with every goto: an entry action that sees it change has been superseded
        self.generation = 0
        #: what this operation is, for the state history: the event's name, ``timeout``, ...
        self.cause = cause
        # What the next goto records as its reason (see because()), and the counter incremented,
        # the warnings logged and their line ids since the last goto (mozpool.db.history).
        self._reason: dict[str, Any] = {}
        self._counted: tuple[str, int] | None = None
        self._warning: str | None = None
        self._evidence: list[int] = []
        self._entering = 0
        #: info and debug lines not yet in the log table: (source, message, ts).  They go with the
        #: operation's next write, or on their own when it ends (MachineRunner._locked_work), so
        #: a line costs no transaction of its own; a warning or error is written at once.
        self._held: list[logs.Line] = []
        #: a goto's write that waits for the entry action's first transaction (``entry_writes``):
        #: (log lines, old state, history entry)
        self._unwritten: tuple[list[str], str, history.Entry | None] | None = None

    @property
    def id(self) -> int:
        return self.row.id

    @property
    def key(self) -> str:
        return self.row.key

    @property
    def state(self) -> str:
        """The current state, an unrecognised stored name reading as the kind's unknown state."""
        s = self.row.state
        return s if s in self.runner.kind.timeouts else self.runner.kind.unknown_state

    @property
    def db(self) -> Database:
        return self.runner.db

    def counter(self, name: str) -> int:
        return int(self.row.counters.get(name, 0))

    async def incr(self, name: str) -> int:
        """Add one to a counter, persisted at once; return the new value."""
        await self.settle()
        self.row.counters[name] = self.counter(name) + 1
        self._counted = (name, self.row.counters[name])
        await self.runner.write_counters(self.row, self.take_held())
        return self.row.counters[name]

    async def incr_with(self, name: str, fn: Callable[..., T], *args: Any) -> tuple[int, T]:
        """:meth:`incr`, and ``fn(cursor, *args)`` in the same transaction: (new value, result).
        A goto's write still waiting (``entry_writes``) goes first in that transaction."""
        self.row.counters[name] = n = self.counter(name) + 1
        self._counted = (name, n)
        counters = json.dumps(self.row.counters)
        held = self.take_held()
        unwritten, self._unwritten = self._unwritten, None
        row = self.row
        write_state = None if unwritten is None else self.runner.state_sql(row, counters, *unwritten, held)

        def both(c: Cursor) -> T:
            if write_state is None:
                self.runner.update_counters(c, row.id, counters, held)
            else:
                write_state(c)
            return fn(c, *args)

        try:
            result = await self.db.runInteraction(both)
        except BaseException:
            # Rolled back with the rest: still to be written.
            self._unwritten = unwritten
            self._held[:0] = held
            raise
        if unwritten is not None:
            for line in unwritten[0]:
                self.runner.echo(row, line)
        return n, result

    async def clear(self, name: str | None = None) -> None:
        """Clear one counter, or all of them."""
        await self.settle()
        if name is None:
            self.row.counters = {}
        else:
            self.row.counters.pop(name, None)
        await self.runner.write_counters(self.row, self.take_held())

    async def settle(self) -> None:
        """Write a goto's write still waiting for its entry's first transaction (see
        ``entry_writes``) before any other write, so the log and the history keep their order."""
        if self._unwritten is not None:
            lines, old, transition = self._unwritten
            self._unwritten = None
            await self.runner.write_state(self.row, lines, old, transition, self.take_held())

    def because(self, **reason: Any) -> None:
        """Add to the structured reason the next goto records in the state history (a BMM
        outcome, what was checked, ...): for a caller that decides before it knows where to go."""
        self._reason.update(reason)

    async def goto(
        self, state: str, why: str | None = None, *, reason: dict[str, Any] | None = None, cause: str | None = None
    ) -> None:
        """Persist ``state`` with its deadline and log the change (``why`` first, when given) in
        one transaction, with its entry in the state history, then run its entry action.

        The history entry's ``cause`` is this operation's (the event, ``timeout``,
        ``state_change``), or ``entry`` for a goto made by an entry action; ``cause`` overrides
        it.  Its reason is ``reason`` over what :meth:`because` gathered, the counter last
        incremented (with its limit, when the kind declares ``limits``) and the last warning
        logged; the warnings' lines are the evidence a failure cites.  A re-entry with no reason
        (an idle device's health check) is not recorded.

        Callers return right after a goto: once a transition is made, nothing more starts (R-4).
        """
        await self.settle()
        self.generation += 1
        old = self.row.state
        transition = self._transition(old, state, why, reason, cause)
        self.row.state = state
        delay = self.runner.delay(state)
        self.row.timeout = self.runner.deadline_in(delay)
        lines = [why] if why else []
        if state != old:
            lines.append(f"entering state {state}")
        if state in getattr(self.runner.kind, "entry_writes", ()) and state in self.runner.kind.timeouts:
            self._unwritten = (lines, old, transition)  # written by the entry's first transaction
        else:
            await self.runner.write_state(self.row, lines, old, transition, self.take_held())
        self.runner.arm(self.key, delay)
        if state in self.runner.kind.timeouts:
            generation = self.generation
            self._entering += 1
            try:
                await self.runner.kind.enter(self, state)
            except Exception as e:
                if self.generation != generation:
                    raise  # a later goto failed; it has set up its own retry
                # The row says `state` but its entry action did not finish (the database went
                # away, say).  Leave a deadline so the timeout path runs the entry again rather
                # than leaving a transient state with no timer stuck for ever.
                _log_failure(Failure(), "entry action of {state} for {key} failed; will retry",
                             state=state, key=self.key)
                retry = self.runner.retry_delay()
                self.row.timeout = self.runner.deadline_in(retry)
                lines, old, transition = self._unwritten or ([], None, None)  # type: ignore[assignment]
                self._unwritten = None
                try:
                    await self.runner.write_state(self.row, lines, old, transition, self.take_held())
                except Exception:
                    log.warn("could not record the retry for {key}: {error}", key=self.key, error=e)
                self.runner.arm(self.key, retry)
            finally:
                self._entering -= 1

    def _transition(
        self, old: str, new: str, why: str | None, reason: dict[str, Any] | None, cause: str | None
    ) -> history.Entry | None:
        """The state history's entry for a goto from ``old`` to ``new`` (None: not recorded), and
        a fresh start for the next goto's reason."""
        details, self._reason = self._reason, {}
        if self._counted is not None:
            name, count = self._counted
            details.setdefault("counter", name)
            details.setdefault("count", count)
            limit = getattr(self.runner.kind, "limits", {}).get(name)
            if limit is not None and details["counter"] == name:
                details.setdefault("limit", limit)
        text = self._warning or why
        if text and "text" not in details:
            details["text"] = text
        details.update(reason or {})
        evidence, self._evidence = self._evidence, []
        self._counted = self._warning = None
        if new == old and not details:
            return None
        return history.Entry(
            kind=self.runner.kind.log_kind, object_id=self.id, ts=self.runner.now_precise(), old=old, new=new,
            cause=cause or ("entry" if self._entering else self.cause), server=self.runner.server_fqdn,
            reason=details, evidence=evidence,
        )

    async def rearm(self, delay: float) -> None:
        """Move the current state's deadline to ``delay`` seconds from now, staying in it."""
        await self.settle()
        self.row.timeout = self.runner.deadline_in(delay)
        await self.runner.write_state(self.row, held=self.take_held())
        self.runner.arm(self.key, delay)

    async def log(self, message: str, level: str = "info", source: str = "statemachine") -> None:
        """A line for the machine's log.  An info or debug line is held for the operation's next
        write; a warning or error is written at once (after the held lines), since the next
        transition cites its id as evidence."""
        if level not in ("warn", "error"):
            self.runner.echo(self.row, message, level)
            self._held.append((source, message, self.runner.now()))
            return
        await self.settle()
        line_id = await self.runner.log(self.row, message, level, source, self.take_held())
        self._warning = message
        if line_id is not None:
            self._evidence.append(line_id)

    def take_held(self) -> list[logs.Line]:
        """The held lines, for a write about to start (which then owns them)."""
        held, self._held = self._held, []
        return held

    async def flush(self) -> None:
        """Write what the operation still holds (a goto waiting for its entry's transaction, info
        lines) at its end; a failure is only logged."""
        try:
            await self.settle()  # takes the held lines with it
        except Exception as e:
            log.warn("could not write the state of {key}: {error}", key=self.key, error=e)
        held = self.take_held()
        if held:
            await self.runner.write_lines(self.row, held)

    def post(self, event: str, args: dict[str, Any] | None = None) -> None:
        """Queue an event for this machine (from a side effect's outcome)."""
        self.runner.post(self.key, event, args)


class MachineRunner:
    """Loads, serializes, persists and logs the machines of one kind."""

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        kind: MachineKind,
        server_fqdn: str,
        time_scale: float = 1.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.kind = kind
        self.server_fqdn = server_fqdn
        self.time_scale = time_scale
        self._locks: dict[str, defer.DeferredLock] = {}
        self._log = Logger(namespace=f"mozpool.{kind.log_kind}")
        #: set by a running :class:`TimeoutDriver`: called with (key, seconds) on every deadline
        self.deadline_set: Callable[[str, float], None] | None = None
        #: see every transition in the transaction that writes it (boot telemetry, in the tap)
        self.observers: list[queries.Observer] = []

    # -- time -------------------------------------------------------------------------------

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def delay(self, state: str) -> float | None:
        """Seconds from now to ``state``'s deadline (None: no timer)."""
        nominal = self.kind.timeouts.get(state)
        if nominal is None:
            return None
        floor = getattr(self.kind, "min_delay", None)
        return max(self.scaled(nominal), floor(state)) if floor is not None else self.scaled(nominal)

    def retry_delay(self) -> float:
        """When to run a failed entry action again: one (scaled) poll interval from now."""
        return self.scaled(POLL_INTERVAL)

    def deadline_in(self, delay: float | None) -> str | None:
        return None if delay is None else deadline_text(self.clock.seconds() + delay)

    def arm(self, key: str, delay: float | None) -> None:
        """Tell the running driver (if any) that this process set ``key``'s deadline."""
        if delay is not None and self.deadline_set is not None:
            self.deadline_set(key, delay)

    def now(self) -> str:
        return dbnow(self.clock)

    def now_precise(self) -> str:
        """Now with milliseconds, to compare with deadlines."""
        return deadline_text(self.clock.seconds())

    # -- persistence ------------------------------------------------------------------------

    async def load(self, key: str) -> Row | None:
        row = await self.db.runInteraction(queries.load_row, self.kind.table, self.kind.key_column, key)
        if row is None:
            return None
        counters = {k: v for k, v in loads_object(row[3]).items() if isinstance(v, int)}
        return Row(int(row[0]), str(row[1]), row[2], counters, row[4])

    async def write_state(
        self, row: Row, log_lines: Sequence[str] = (), old_state: str | None = None,
        transition: history.Entry | None = None, held: Sequence[logs.Line] = (),
    ) -> None:
        """Write the row's state, deadline and counters, and ``held`` lines then ``log_lines`` to
        its log, at once; a change from ``old_state`` goes to the change journal too,
        ``transition`` to the state history (and to the observers)."""
        await self.db.runInteraction(
            self.state_sql(row, json.dumps(row.counters), log_lines, old_state, transition, held))
        for line in log_lines:
            self.echo(row, line)

    def state_sql(
        self, row: Row, counters: str, log_lines: Sequence[str] = (), old_state: str | None = None,
        transition: history.Entry | None = None, held: Sequence[logs.Line] = (),
    ) -> Callable[[Cursor], None]:
        """:meth:`write_state`'s statements for a transaction, the row as it is now."""
        args = (self.kind.table, self.kind.log_kind, row.id, row.state, row.timeout, counters, self.now(),
                log_lines, old_state, transition, tuple(self.observers), held)
        return lambda c: queries.write_state(c, *args)

    async def write_counters(self, row: Row, held: Sequence[logs.Line] = ()) -> None:
        await self.db.runInteraction(self.update_counters, row.id, json.dumps(row.counters), held)

    def update_counters(self, c: Cursor, row_id: int, counters: str, held: Sequence[logs.Line] = ()) -> None:
        logs.add_lines(c, self.kind.log_kind, row_id, held)
        queries.set_counters(c, self.kind.table, row_id, counters)

    async def write_lines(self, row: Row, lines: Sequence[logs.Line]) -> None:
        """Held lines on their own (already echoed); a failed write is only logged."""
        try:
            await self.db.runInteraction(logs.add_lines, self.kind.log_kind, row.id, lines)
        except Exception as e:
            self._log.warn("could not write {n} log lines for {key}: {error}", n=len(lines), key=row.key, error=e)

    async def log(
        self, row: Row, message: str, level: str = "info", source: str = "statemachine", held: Sequence[logs.Line] = ()
    ) -> int | None:
        """To the twisted log and to the machine's log table (after the ``held`` lines, already
        echoed); a failed write is only logged.  The line's id (None if it was not written)."""
        self.echo(row, message, level)

        def write(c: Cursor) -> int:
            logs.add_lines(c, self.kind.log_kind, row.id, held)
            return logs.add_log_now(c, self.kind.log_kind, row.id, source, message, self.now())

        try:
            return int(await self.db.runInteraction(write))
        except Exception as e:
            self._log.warn("could not write log line for {key}: {error}", key=row.key, error=e)
            return None

    def echo(self, row: Row, message: str, level: str = "info") -> None:
        """To the twisted log only: for a line written to the log table by the caller's own
        transaction."""
        getattr(self._log, level)(
            "{kind} {key}: {message}", kind=self.kind.log_kind, key=logs.printable(row.key), message=logs.printable(message)
        )

    # -- serialization ----------------------------------------------------------------------

    async def _locked(
        self, key: str, work: Callable[[Machine], Awaitable[Any]], missing: Any = None, created: Row | None = None
    ) -> Any:
        """Run ``work`` under the machine's lock.  A caller that stops waiting (an HTTP client
        that hung up, a bounded call that gave up) does not cancel the transition half-way: the
        work runs on; only the wait is abandoned."""
        inner = defer.Deferred.fromCoroutine(self._locked_work(key, work, missing, created))
        outer: defer.Deferred[Any] = defer.Deferred()

        def done(result: Any) -> Any:
            if not outer.called:
                outer.callback(result)
            elif isinstance(result, Failure):
                if result.check(DatabaseUnavailable):
                    log.warn("{kind} {key}: work given up after its caller left: {error}",
                             kind=self.kind.log_kind, key=key, error=result.value)
                    return None
                log.failure("{kind} {key}: work finished after its caller left", result,
                            kind=self.kind.log_kind, key=key)
            return None

        inner.addBoth(done)
        return await outer

    async def _locked_work(
        self, key: str, work: Callable[[Machine], Awaitable[Any]], missing: Any = None, created: Row | None = None
    ) -> Any:
        key = str(key)
        lock = self._locks.setdefault(key, defer.DeferredLock())
        await lock.acquire()
        try:
            row = created if created is not None else await self.load(key)
            if row is None:
                return missing
            m = Machine(self, row)
            try:
                return await work(m)
            finally:
                await m.flush()
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)

    async def handle_event(
        self, key: str, event: str, args: dict[str, Any] | None = None, *, created: Row | None = None
    ) -> bool:
        """Feed ``event``; False (and nothing else) when the machine does not exist.  ``created``
        is the row of a machine the caller has just inserted (and nobody else knows of yet): it is
        taken as it is instead of read back."""

        async def work(m: Machine) -> bool:
            m.cause = event
            if not await self.kind.event(m, event, dict(args or {})):
                await m.log(f"ignored event {event} in state {m.state}", "warn")
            return True

        return bool(await self._locked(key, work, False, created))

    async def handle_timeout(self, key: str) -> None:
        """Apply the timeout rule, if the deadline has really passed (re-checked under the lock)."""

        async def work(m: Machine) -> None:
            if m.row.timeout is None or m.row.timeout > self.now_precise():
                return
            m.cause = "timeout"
            await m.log(f"handling timeout on {m.state}", "debug")
            if not await self.kind.timeout(m):
                # A state without a timeout rule only has a deadline when its entry action
                # failed part-way (see Machine.goto): run it again.
                await m.log(f"retrying the entry of state {m.row.state}", "warn")
                await m.goto(m.row.state)

        await self._locked(key, work)

    async def state_change(self, key: str, old: str, new: str) -> bool | None:
        """Go to ``new`` if the state is ``old`` (or unknown); None for a missing machine,
        False on mismatch."""

        async def work(m: Machine) -> bool:
            if m.state != self.kind.unknown_state and m.row.state != old:
                return False
            m.cause = "state_change"
            await m.log(f"state change from {m.row.state} to {new}")
            await m.goto(new)
            return True

        return await self._locked(key, work, None)

    async def current_state(self, key: str) -> str | None:
        return await self._locked(key, lambda m: defer.succeed(m.state))

    def post(self, key: str, event: str, args: dict[str, Any] | None = None) -> "defer.Deferred[Any]":
        """Queue an event without waiting for it; failures are logged, never raised."""
        d = defer.Deferred.fromCoroutine(self.handle_event(key, event, args))
        d.addErrback(_log_failure, "event {event} for {key} failed", event=event, key=key)
        return d

    async def due(self) -> list[str]:
        """Keys of this server's machines whose deadline has passed."""
        return await self.db.runInteraction(
            queries.due_keys, self.kind.table, self.kind.key_column, self.server_fqdn, self.now_precise()
        )


async def apply_input(
    machine: M, give: Callable[[M], Awaitable[T]], then: Callable[[T], Awaitable[Any]] | None = None
) -> bool:
    """Give an Automat ``machine`` (restored in its row's state) one input through ``give``.

    False when the state does not accept the input (Automat raises ``NoTransition``): the
    runner logs the event as ignored.  Otherwise the transition's behaviour is awaited and what
    it answers handed to ``then`` (where the layer goes to its target), and True."""
    try:
        step = give(machine)
    except NoTransition:
        return False
    answer = await step
    if then is not None:
        await then(answer)
    return True


async def each_bounded(
    items: Iterable[T], limit: int, work: Callable[[T], Awaitable[None]], until: Callable[[], bool] = lambda: False
) -> None:
    """``await work(item)`` for every item, at most ``limit`` at once, in order; none started
    once ``until()`` is true.  Workers loop instead of chaining a DeferredSemaphore, whose
    releases recurse when the work finishes synchronously (seen as a RecursionError)."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            if until():
                return
            await work(item)

    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(worker()) for _ in range(limit)], consumeErrors=True
    )


class TimeoutDriver(Service):
    """Feeds ``timeout`` to machines whose deadline passed, two ways:

    - a timer per deadline this process sets, so a state times out when it should rather than
      up to a poll interval late (a 0 s timeout is taken at once);
    - every ``POLL_INTERVAL * time_scale`` seconds, a poll of the database for this server's
      due machines, which covers deadlines from before a restart or from another process; then
      ``extra`` (the request layer's expiry poll).

    Both feed one queue of due machines, worked by at most ``TIMEOUT_CONCURRENCY`` timeouts at
    once; the machine's lock re-checks the deadline, so a timeout seen twice is applied once.  A
    failing step is logged; the loop goes on.

    ``on_pass`` is called after every poll that read the due machines and handled them (the
    tap touches ``[server] heartbeat_file`` with it, the seed's hook for external watchdogs): a
    poll skipped or failed for want of the database, or one stuck, calls nothing."""

    def __init__(
        self, runner: MachineRunner, extra: Callable[[], Awaitable[None]] | None = None, interval: float | None = None
    ) -> None:
        self.runner = runner
        self.extra = extra
        self.interval = interval if interval is not None else runner.scaled(POLL_INTERVAL)
        #: called after every completed poll (see the class docstring)
        self.on_pass: Callable[[], None] | None = None
        self._loop: task.LoopingCall | None = None
        self._tick: defer.Deferred[None] | None = None
        self._stopping = False
        self._timers: dict[str, Any] = {}
        #: due machines waiting for a worker, in order, each once
        self._due: deque[str] = deque()
        self._queued: set[str] = set()
        self._workers: set[defer.Deferred[None]] = set()

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.runner.deadline_set = self._arm
        self._loop = task.LoopingCall(self._start_tick)
        self._loop.clock = self.runner.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> "defer.Deferred[None]":
        super().stopService()
        self._stopping = True
        self.runner.deadline_set = None
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._due.clear()
        self._queued.clear()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        pending = [d for d in (self._tick, *self._workers) if d is not None]
        return defer.DeferredList(pending, consumeErrors=True).addCallback(lambda _: None)

    def idle(self) -> "defer.Deferred[None]":
        """Fires when no due machine is queued or being handled."""

        async def wait() -> None:
            while self._workers:
                await defer.DeferredList(list(self._workers), consumeErrors=True)

        return defer.Deferred.fromCoroutine(wait())

    # -- timers -----------------------------------------------------------------------------

    def _arm(self, key: str, delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None and old.active():
            old.cancel()
        # A millisecond late: deadlines are stored rounded up to the millisecond.
        self._timers[key] = self.runner.clock.callLater(delay + 0.001, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self._enqueue(key)

    def _enqueue(self, key: str) -> None:
        """Queue a due machine (once) for the workers, starting one if fewer are running than
        the bound: timers and the poll share this queue and its bound."""
        if self._stopping or key in self._queued:
            return
        if not _available(self.runner.db):
            # Skipped, not queued: the deadline stays in the database, and the first poll once
            # the database is back finds the machine again.
            return
        self._queued.add(key)
        self._due.append(key)
        if len(self._workers) < TIMEOUT_CONCURRENCY:
            worker = defer.Deferred.fromCoroutine(self._drain())
            self._workers.add(worker)
            worker.addBoth(lambda _: self._workers.discard(worker))

    async def _drain(self) -> None:
        while self._due and not self._stopping:
            key = self._due.popleft()
            self._queued.discard(key)
            await self._timeout(key)

    async def _timeout(self, key: str) -> None:
        try:
            await self.runner.handle_timeout(key)
        except Exception:
            _log_failure(Failure(), "timeout for {kind} {key} failed", kind=self.runner.kind.log_kind, key=key)

    # -- the poll ---------------------------------------------------------------------------

    def _start_tick(self) -> None:
        if not _available(self.runner.db):
            # The pool fails every call at once while the database is unavailable, and says so
            # once: skip the tick rather than fail each of its steps.
            return
        if self._tick is not None:
            log.warn("{kind} timeout tick still running; skipping one", kind=self.runner.kind.log_kind)
            return
        self._tick = defer.Deferred.fromCoroutine(self.tick())
        self._tick.addBoth(self._tick_done)

    def _tick_done(self, result: Any) -> None:
        self._tick = None

    async def tick(self) -> None:
        listed = True
        try:
            keys = await self.runner.due()
        except Exception:
            _log_failure(Failure(), "listing due {kind} machines failed", kind=self.runner.kind.log_kind)
            keys, listed = [], False
        for key in keys:
            self._enqueue(key)  # once stopping, nothing more is queued
        await self.idle()
        if self.extra is not None:
            try:
                await self.extra()
            except Exception:
                _log_failure(Failure(), "{kind} periodic step failed", kind=self.runner.kind.log_kind)
        if listed and self.on_pass is not None and not self._stopping:
            try:
                self.on_pass()
            except Exception:
                log.failure("after a {kind} timeout pass", kind=self.runner.kind.log_kind)


def _available(db: Any) -> bool:
    """False while the pool has marked the database unavailable."""
    return bool(getattr(db, "available", True))


def _log_failure(failure: Failure, message: str, **fields: Any) -> None:
    """A failure is a bug (logged with its traceback) unless the database was unavailable,
    which the pool reports once: then one warning line (rate-limited like any repeat)."""
    if failure.check(DatabaseUnavailable):
        log.warn(message + ": {error}", error=failure.value, **fields)
    else:
        log.failure(message, failure, **fields)
