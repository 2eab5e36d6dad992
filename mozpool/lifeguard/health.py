"""Fault isolation by blast radius (issue 15): power controllers and imaging servers are health
objects too, so a hung relay board or a bad image does not fail every device it touches.

- **Power controllers** (ProXR relay boards, PDUs behind pdudaemon).  A device's power failure
  makes LifeGuard probe its controller (the relay test); a controller becomes ``suspect`` when
  two such probes a probe interval apart fail too (the failure of ``board_failures`` distinct devices within
  ``board_window`` seconds forces a probe at once), when two periodic checks in a row fail, or
  when ``board_failures`` devices behind it -- and behind no other controller of this server --
  fail to PXE-boot.  While it is suspect its devices' power
  failures are not counted against them (the machine's ``board_at_fault`` rows: the device waits
  in ``board_suspect``), idle devices behind it stop being offered, and the owning server probes
  it (the relay test) with exponential backoff.  When it answers, its devices are re-tested and
  come back by themselves.
- **This imaging server**: at most ``quarantine_cap`` automatic quarantines (entries into a
  ``failed_`` state) per ``quarantine_window`` seconds; past the cap a device goes to ``held``
  instead, so one bad image or network event cannot fail half the lab.

Every duration is nominal and multiplied by ``time_scale``.  The health of a controller is its
``relay_boards`` row (mozpool.db.health); evidence of recent failures is kept in memory.
"""

from __future__ import annotations

import configparser
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from mozpool.bmm.interfaces import DeviceInfo
from mozpool.bmm.power import controller_of
from mozpool.db import health
from mozpool.db.errors import DatabaseUnavailable
from mozpool.db.pool import Database
from mozpool.logconfig import Logger
from mozpool.timeutil import dbnow, deadline_text

log = Logger()

#: (controller) -> a Deferred firing with a truthy result when the controller answers (a
#: PowerResult: its ``reason`` says why not); ``IPowerControl.test_controller``.
Probe = Callable[[str], Any]
#: (device, event, args): queue an event for one of this server's devices.
Post = Callable[[str, str, Any], Any]

#: Nominal seconds between the monitor's ticks (due probes, periodic checks, device sweeps).
TICK_INTERVAL = 10.0


@dataclass(frozen=True)
class HealthSettings:
    """``[health]`` of the configuration; durations in nominal seconds."""

    #: false: every device is judged alone, as in the original
    enabled: bool = True
    #: distinct devices behind one controller failing in its power or PXE path ...
    board_failures: int = 3
    #: ... within this many seconds make it suspect
    board_window: float = 600.0
    #: first probe of a suspect controller after this long; the wait doubles after each failed
    #: probe, up to probe_max_interval
    probe_interval: float = 30.0
    probe_max_interval: float = 600.0
    #: every healthy controller of this server is checked this often (0: only on evidence)
    check_interval: float = 300.0
    #: automatic quarantines (entries into failed_*) this server makes per window, at most ...
    quarantine_cap: int = 5
    #: ... per this many seconds; past the cap devices are held, and retested after the window
    #: (an install that fails takes a device 10-15 minutes: the window spans a burst of them)
    quarantine_window: float = 1800.0

    @classmethod
    def from_config(cls, parser: configparser.ConfigParser) -> "HealthSettings":
        """The ``[health]`` section; ValueError names a bad key."""
        values: dict[str, Any] = {}
        if parser.has_section("health"):
            known = {f.name: f for f in fields(cls)}
            for key, raw in parser.items("health"):
                if key not in known:
                    raise ValueError(f"[health] {key}: unknown key (known: {', '.join(sorted(known))})")
                try:
                    if key == "enabled":
                        values[key] = parser.getboolean("health", key)
                    elif known[key].type in ("int", int):
                        values[key] = int(raw)
                    else:
                        values[key] = float(raw)
                except ValueError:
                    raise ValueError(f"[health] {key}: not a valid value: {raw!r}") from None
        settings = cls(**values)
        if settings.board_failures < 1 or settings.quarantine_cap < 0:
            raise ValueError("[health] board_failures must be at least 1 and quarantine_cap at least 0")
        for name in ("board_window", "probe_interval", "probe_max_interval", "quarantine_window"):
            if not getattr(settings, name) > 0:
                raise ValueError(f"[health] {name} must be more than 0")
        if settings.check_interval < 0:
            raise ValueError("[health] check_interval must be 0 (off) or more")
        return settings


def conclusive(reason: str | None) -> bool:
    """Whether a power failure (or a probe's) says the controller did not answer, rather than
    that the operation never reached it (cancelled, still queued, or a state's timeout)."""
    if reason is None:
        return False
    return reason != "cancelled" and "still queued" not in reason


class HealthMonitor:
    """This server's view of its controllers' health and of its quarantine cap.

    The device machine asks it (``DeviceHealth`` in mozpool.lifeguard.machine); its tick probes
    suspect controllers and tells devices when theirs changed."""

    def __init__(
        self, db: Database, clock: IReactorTime, server: str, settings: HealthSettings, probe: Probe,
        post: Post, time_scale: float = 1.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.server = server
        self.settings = settings
        self.probe = probe
        self.post = post
        self.time_scale = time_scale
        #: controller -> recent (time, device, what) of power-path and PXE-path failures
        self._power: dict[str, deque[tuple[float, str, str]]] = {}
        self._pxe: dict[str, deque[tuple[float, str, str]]] = {}
        #: times of the automatic quarantines granted within the window (None: not read yet)
        self._grants: deque[float] | None = None
        #: controller -> the probe in flight
        self._probing: dict[str, defer.Deferred[Any]] = {}
        #: controller -> when it was last probed, and periodic checks failed in a row
        self._last_probe: dict[str, float] = {}
        self._check_failures: dict[str, int] = {}
        #: controller -> the probes confirming a device's evidence (two, a probe interval apart)
        self._confirming: dict[str, defer.Deferred[None]] = {}
        #: controller -> the evidence a probe in flight will cite if it fails
        self._why: dict[str, str] = {}
        #: verdicts of confirmed probes still being written
        self._judging: set[defer.Deferred[Any]] = set()
        #: figures for /metrics and the tests: suspicions raised, probes made
        self.suspicions = 0
        self.probes = 0

    # -- time ------------------------------------------------------------------------------------

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def now(self) -> float:
        return self.clock.seconds()

    def _backoff(self, failed: int) -> float:
        s = self.settings
        return self.scaled(min(s.probe_interval * 2 ** min(failed, 30), s.probe_max_interval))

    # -- what the device machine asks --------------------------------------------------------------

    async def _board_of(self, device: DeviceInfo) -> health.Board | None:
        controller = controller_of(device.relay_info)
        if controller is None:
            return None
        return await self.db.runInteraction(health.board, controller)

    async def board_suspect(self, device: DeviceInfo) -> bool:
        """The device's controller is suspect now (nothing recorded)."""
        board = await self._board_of(device)
        return board is not None and board.suspect

    async def board_reason(self, device: DeviceInfo) -> str:
        board = await self._board_of(device)
        if board is None or not board.suspect:
            return ""
        return f"{board.name}: {board.reason}" if board.reason else board.name

    async def power_failure(self, device: DeviceInfo, what: str, reason: str | None = "") -> bool:
        """Record a power-path failure; True when the device's controller is (now) suspect.

        Only a failure the controller caused is evidence against it: the driver's ``reason``
        says so.  A state timeout (``reason`` None), an operation cancelled or one that timed out
        still queued behind others on the board (many devices cycling at once) only makes
        LifeGuard probe the controller."""
        board = await self._board_of(device)
        if board is None:
            return False  # no controller we know of: the device is judged alone
        if board.suspect:
            return True
        if not conclusive(reason):
            self._probe_soon(board.fqdn, f"{device.name}: {what} did not finish")
            return False
        seen = self._remember(self._power, board.fqdn, device.name, what)
        if len(seen) >= self.settings.board_failures:
            # Several devices: the board is the likely cause; a probe that fails too settles it
            # (a glitch that hit a few devices at once, with the board answering, does not).
            self._probe_soon(board.fqdn, f"{len(seen)} devices behind it failed in its power path within "
                                         f"{self.settings.board_window:g} s ({', '.join(sorted(seen))})", force=True)
        else:
            self._probe_soon(board.fqdn, f"{device.name}: {what} failed ({reason or 'no reason given'})")
        return False

    async def pxe_failure(self, device: DeviceInfo, what: str) -> bool:
        """Record a PXE-path failure; True when the device's controller is (now) suspect.  Only
        failures concentrated behind one controller blame it: when devices behind several of this
        server's controllers fail to boot, the cause is wider (an image, the network) and the
        quarantine cap is what protects the lab."""
        board = await self._board_of(device)
        if board is None:
            return False
        if board.suspect:
            return True
        seen = self._remember(self._pxe, board.fqdn, device.name, what)
        failing = [fqdn for fqdn in self._pxe if self._recent(self._pxe, fqdn)]
        if len(seen) >= self.settings.board_failures and failing == [board.fqdn]:
            await self.suspect(board.fqdn, f"{len(seen)} devices behind it failed to PXE-boot within "
                                           f"{self.settings.board_window:g} s, devices behind other controllers "
                                           f"did not: {', '.join(sorted(seen))}")
            return True
        return False

    def _recent(self, evidence: dict[str, deque[tuple[float, str, str]]], fqdn: str) -> set[str]:
        """The distinct devices of ``fqdn``'s evidence within the window (older evidence dropped)."""
        seen = evidence.get(fqdn)
        if not seen:
            return set()
        cutoff = self.now() - self.scaled(self.settings.board_window)
        while seen and seen[0][0] < cutoff:
            seen.popleft()
        return {device for _, device, _ in seen}

    def _remember(self, evidence: dict[str, deque[tuple[float, str, str]]], fqdn: str, device: str,
                  what: str) -> set[str]:
        evidence.setdefault(fqdn, deque()).append((self.now(), device, what))
        return self._recent(evidence, fqdn)

    async def may_quarantine(self, device: str, state: str) -> bool:
        """Take one of this server's automatic quarantines for the window; False past the cap."""
        grants = await self._current_grants()
        if len(grants) >= self.settings.quarantine_cap:
            log.warn("{device}: not quarantined in {state}: {reason}", device=device, state=state,
                     reason=self._hold_text(len(grants)))
            return False
        grants.append(self.now())
        return True

    async def _current_grants(self) -> deque[float]:
        window = self.scaled(self.settings.quarantine_window)
        if self._grants is None:
            # After a restart, the journal says how many the window already holds.
            since = dbnow(self.clock, -window)
            count = await self.db.runInteraction(health.quarantines_since, self.server, since)
            if self._grants is None:
                self._grants = deque([self.now()] * count)
        cutoff = self.now() - window
        while self._grants and self._grants[0] < cutoff:
            self._grants.popleft()
        return self._grants

    def _hold_text(self, count: int) -> str:
        s = self.settings
        return (f"{count} automatic quarantines on {self.server} within {s.quarantine_window:g} s reached the cap of "
                f"{s.quarantine_cap}: the cause is likely wider than this device (an image, the network)")

    async def hold_reason(self) -> str:
        return self._hold_text(len(await self._current_grants()))

    async def quarantine_status(self) -> dict[str, Any]:
        """This server's cap and how much of it the window holds (for the API)."""
        s = self.settings
        return {"imaging_server": self.server, "quarantines": len(await self._current_grants()),
                "cap": s.quarantine_cap, "window": s.quarantine_window}

    # -- suspect and healthy -----------------------------------------------------------------------

    async def suspect(self, fqdn: str, reason: str) -> bool:
        """Make a controller suspect (once) and stop offering its idle devices."""
        board = await self.db.runInteraction(health.board, fqdn)
        if board is None or board.suspect:
            return False
        flapping = board.since is not None and board.since >= dbnow(self.clock, -self.scaled(self.settings.board_window))
        failed = int(board.counters.get("probes", 0)) if flapping else 0
        changed = await self.db.runInteraction(
            health.set_health, fqdn, health.SUSPECT, dbnow(self.clock), reason,
            deadline_text(self.now() + self._backoff(failed)), {"probes": failed},
        )
        if not changed:
            return False
        self.suspicions += 1
        log.warn("power controller {board} is suspect: {reason}", board=board.name, reason=reason)
        await self._tell(fqdn, "board_suspected", ("ready",))
        return True

    async def healthy(self, fqdn: str, reason: str) -> bool:
        """A suspect controller answers again: its waiting devices are re-tested."""
        board = await self.db.runInteraction(health.board, fqdn)
        if board is None or not board.suspect:
            return False
        changed = await self.db.runInteraction(
            health.set_health, fqdn, health.OK, dbnow(self.clock), reason, None, dict(board.counters),
        )
        self._power.pop(fqdn, None)
        self._pxe.pop(fqdn, None)
        if changed:
            log.info("power controller {board} answers again: {reason}", board=board.name, reason=reason)
            await self._tell(fqdn, "board_ok", ("board_suspect",))
        return changed

    async def _tell(self, fqdn: str, event: str, states: tuple[str, ...]) -> int:
        """Post ``event`` to this server's devices behind ``fqdn`` in ``states``."""
        found = await self.db.runInteraction(health.devices_behind, fqdn, self.server, states)
        told = 0
        for name, _, relay_info, _ in found:
            if controller_of(relay_info) == fqdn:
                self.post(name, event, None)
                told += 1
        return told

    # -- probes ------------------------------------------------------------------------------------

    def _probe_soon(self, fqdn: str, why: str, force: bool = False) -> None:
        """After a device's power failure: probe its (healthy) controller, unless that is under
        way or (without ``force``: enough evidence) was done within a probe interval."""
        if force or fqdn not in self._why:
            self._why[fqdn] = why  # the strongest evidence so far is what a verdict cites
        last = self._last_probe.get(fqdn)
        recent = last is not None and self.now() - last < self.scaled(self.settings.probe_interval)
        if fqdn in self._confirming or (recent and not force):
            return
        d = defer.Deferred.fromCoroutine(self._confirm(fqdn, why))
        self._confirming[fqdn] = d
        d.addErrback(_logged, "probing {board} after a power failure", board=fqdn)
        d.addBoth(lambda result: (self._confirming.pop(fqdn, None), result)[1])

    async def _confirm(self, fqdn: str, why: str) -> None:
        """Two probes a probe interval apart must both fail (not just time out in the board's queue)
        before the evidence is believed: a single-connection board busy for a moment is not
        suspect."""
        reason = ""
        for attempt in range(2):
            if attempt:
                await task.deferLater(self.clock, self.scaled(self.settings.probe_interval), lambda: None)
            ok, reason = await self._probe(fqdn)
            if ok or not conclusive(reason):
                self._why.pop(fqdn, None)
                return
        evidence = self._why.pop(fqdn, why)
        verdict = defer.Deferred.fromCoroutine(
            self.suspect(fqdn, f"{evidence}, and it did not answer 2 probes: {reason}"))
        self._judging.add(verdict)
        verdict.addBoth(lambda result: (self._judging.discard(verdict), result)[1])
        await verdict

    def idle(self) -> "defer.Deferred[None]":
        """Fires once every verdict of confirmed probes has been written (tests)."""

        async def wait() -> None:
            while self._judging:
                await defer.DeferredList(list(self._judging), consumeErrors=True)

        return defer.Deferred.fromCoroutine(wait())

    def _probe(self, fqdn: str) -> "defer.Deferred[tuple[bool, str]]":
        """Probe a controller once: (answered, why not)."""
        self.probes += 1
        self._last_probe[fqdn] = self.now()
        d = defer.maybeDeferred(self.probe, fqdn)

        def answered(result: Any) -> tuple[bool, str]:
            return bool(result), str(getattr(result, "reason", "") or "no answer")

        def failed(f: Failure) -> tuple[bool, str]:
            return False, f.getErrorMessage()

        d.addCallbacks(answered, failed)
        self._probing[fqdn] = d

        def done(result: Any) -> Any:
            if self._probing.get(fqdn) is d:
                del self._probing[fqdn]
            return result

        d.addBoth(done)
        return d

    async def probe_due(self) -> None:
        """Probe this server's suspect controllers whose time has come; back off after a failure."""
        for board in await self.db.runInteraction(health.due_probes, self.server, deadline_text(self.now())):
            if board.fqdn in self._probing:
                continue
            ok, reason = await self._probe(board.fqdn)
            if ok:
                await self.healthy(board.fqdn, f"answered a probe after {board.counters.get('probes', 0)} failed")
                continue
            failed = int(board.counters.get("probes", 0)) + (1 if conclusive(reason) else 0)
            log.info("power controller {board} still suspect: probe {n} failed ({reason})", board=board.name,
                     n=failed, reason=reason)
            await self.db.runInteraction(
                health.set_health, board.fqdn, health.SUSPECT, dbnow(self.clock), board.reason,
                deadline_text(self.now() + self._backoff(failed)), {"probes": failed},
            )

    async def check_healthy(self) -> None:
        """Periodic check of this server's healthy controllers: a board that hangs while its devices
        are idle is found too; two failed checks in a row make it suspect."""
        interval = self.scaled(self.settings.check_interval)
        if not interval:
            return
        for board in await self.db.runInteraction(health.boards, self.server):
            if board.suspect or board.fqdn in self._probing:
                continue
            failures = self._check_failures.get(board.fqdn, 0)
            wait = self.scaled(self.settings.probe_interval) if failures else interval
            last = self._last_probe.setdefault(board.fqdn, self.now())
            if self.now() - last < wait:
                continue
            ok, reason = await self._probe(board.fqdn)
            if ok:
                self._check_failures.pop(board.fqdn, None)
            elif not conclusive(reason):
                continue  # busy, not silent: check again at the next interval
            elif failures + 1 >= 2:
                self._check_failures.pop(board.fqdn, None)
                await self.suspect(board.fqdn, f"two checks in a row failed: {reason}")
            else:
                self._check_failures[board.fqdn] = failures + 1

    async def sweep(self) -> None:
        """Tell this server's devices what they may have missed (a restart, another server's
        verdict): re-test those waiting for a controller that is healthy again, and stop offering
        idle ones behind a suspect controller."""
        waiting = await self.db.runInteraction(health.devices_in_state, self.server, "board_suspect")
        suspect = {b.fqdn for b in await self.db.runInteraction(health.boards, None, True)}
        for name, relay_info in waiting:
            if controller_of(relay_info) not in suspect:
                self.post(name, "board_ok", None)
        for fqdn in sorted(suspect):
            for name, _, relay_info, request_id in await self.db.runInteraction(
                health.devices_behind, fqdn, self.server, ("ready",)
            ):
                if request_id is None and controller_of(relay_info) == fqdn:
                    self.post(name, "board_suspected", None)

    async def tick(self) -> None:
        for step in (self.probe_due, self.check_healthy, self.sweep):
            try:
                await step()
            except DatabaseUnavailable as e:
                log.warn("health: {step} skipped: {error}", step=step.__name__, error=e)
                return
            except Exception:
                log.failure("health: {step} failed", step=step.__name__)

    def cancel_probes(self) -> None:
        for d in [*self._confirming.values(), *self._probing.values()]:
            d.cancel()


def _logged(f: Failure, message: str, **fields: Any) -> None:
    log.failure(message, f, **fields)


class HealthService(Service):
    """Runs the monitor's tick every (scaled) :data:`TICK_INTERVAL`, on the monitor's clock."""

    name = "health"

    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor
        self._loop: task.LoopingCall | None = None
        self._tick: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._start_tick)
        self._loop.clock = self.monitor.clock
        self._loop.start(self.monitor.scaled(TICK_INTERVAL), now=False)

    def _start_tick(self) -> None:
        if self._tick is not None:
            return  # the last one still runs (a slow probe): skip one
        self._tick = defer.ensureDeferred(self.monitor.tick())
        self._tick.addBoth(self._done)

    def _done(self, result: Any) -> None:
        self._tick = None

    def stopService(self) -> "defer.Deferred[None]":
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.monitor.cancel_probes()
        if self._tick is None:
            return defer.succeed(None)
        return self._tick.addErrback(lambda _: None)
