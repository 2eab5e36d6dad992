"""LifeGuard as the HTTP API and the tap see it: :class:`LifeGuard` (``ILifeGuard``) and the
service that runs its timeout driver.

Wiring, in the tap::

    lifeguard = LifeGuard(db, reactor, hardware, fqdn, time_scale, http_client=treq_client,
                          request_events=broker.request_event)
    lifeguard.makeService().setServiceParent(top)
    api = MozpoolAPI(..., lifeguard=lifeguard)
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from mozpool.logconfig import Logger
from zope.interface import implementer

from mozpool.bmm.interfaces import IDeviceHardware
from mozpool.db.pool import Database
from mozpool.errors import UnknownObject
from mozpool.httpcalls import TreqLike
from mozpool.lifeguard import queries
from mozpool.lifeguard.interfaces import ILifeGuard, StateMismatch
from mozpool.lifeguard.health import HealthMonitor, HealthService, HealthSettings, Probe
from mozpool.lifeguard.machine import TRANSIENT, DeviceKind
from mozpool.lifeguard.results import NOTIFY_TIMEOUT, ImagingResults, RequestEvents
from mozpool.statemachine.core import MachineRunner, TimeoutDriver

log = Logger()


@implementer(ILifeGuard)
class LifeGuard:
    """The device machines of this server."""

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        hardware: IDeviceHardware,
        server_fqdn: str,
        time_scale: float = 1.0,
        http_client: TreqLike | None = None,
        request_events: RequestEvents | None = None,
        notify_timeout: float = NOTIFY_TIMEOUT,
        health: HealthSettings | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.server_fqdn = server_fqdn
        self.results = ImagingResults(clock, server_fqdn, http_client, request_events, notify_timeout)
        #: fault isolation by blast radius (issue 15); None: each device is judged alone
        self.health: HealthMonitor | None = None
        if health is not None and health.enabled and probe is not None:
            self.health = HealthMonitor(db, clock, server_fqdn, health, probe, self._post, time_scale)
        self.kind = DeviceKind(
            hardware, self.results, self.health,
            held_timeout=None if health is None or self.health is None else health.quarantine_window,
        )
        self.runner = MachineRunner(db, clock, self.kind, server_fqdn, time_scale)
        self.driver = TimeoutDriver(self.runner)

    def _post(self, name: str, event: str, args: Any = None) -> Any:
        return self.runner.post(name, event, args)

    @property
    def request_events(self) -> RequestEvents | None:
        return self.results.request_events

    @request_events.setter
    def request_events(self, value: RequestEvents | None) -> None:
        """Settable after construction, when the broker is built after LifeGuard."""
        self.results.request_events = value

    def device_event(self, name: str, event: str, body: dict[str, Any]) -> "defer.Deferred[None]":
        return defer.Deferred.fromCoroutine(self._device_event(name, event, body))

    async def _device_event(self, name: str, event: str, body: dict[str, Any]) -> None:
        if not await self.runner.handle_event(name, event, dict(body or {})):
            raise UnknownObject(f"no such device {name}")

    def quarantine_status(self) -> "defer.Deferred[dict[str, Any] | None]":
        if self.health is None:
            return defer.succeed(None)
        return defer.Deferred.fromCoroutine(self.health.quarantine_status())

    def state_change(self, name: str, old: str, new: str) -> "defer.Deferred[None]":
        return defer.Deferred.fromCoroutine(self._state_change(name, old, new))

    async def _state_change(self, name: str, old: str, new: str) -> None:
        changed = await self.runner.state_change(name, old, new)
        if changed is None:
            raise UnknownObject(f"no such device {name}")
        if not changed:
            current = await self.runner.current_state(name)
            raise StateMismatch(name, current or "unknown", old)

    async def resume(self) -> list[str]:
        """Re-enter devices a crash left in a transient state (they have no deadline to wake them)."""
        found = await self.db.runInteraction(queries.transient_devices, self.server_fqdn, TRANSIENT)
        resumed = []
        for name, state in found:
            try:
                if await self.runner.state_change(name, state, state):
                    resumed.append(name)
            except Exception:
                log.failure("resuming {device} in {state} failed", device=name, state=state)
        return resumed

    def makeService(self) -> "LifeGuardService":
        return LifeGuardService(self)


class LifeGuardService(MultiService):
    """Runs the timeout driver; at start-up, first resumes transient devices (R-1)."""

    def __init__(self, lifeguard: LifeGuard) -> None:
        super().__init__()
        self.lifeguard = lifeguard
        self.setName("lifeguard")
        lifeguard.driver.setServiceParent(self)
        if lifeguard.health is not None:
            HealthService(lifeguard.health).setServiceParent(self)
        self._resuming: defer.Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        self._resuming = defer.Deferred.fromCoroutine(self.lifeguard.resume())
        self._resuming.addErrback(lambda f: log.failure("resuming transient devices failed", f))

    def stopService(self) -> "defer.Deferred[Any]":
        for d in list(self.lifeguard.results.inflight):
            d.cancel()
        waits = [defer.maybeDeferred(super().stopService)]
        if self._resuming is not None:
            waits.append(self._resuming)
        return defer.gatherResults(waits, consumeErrors=True)
