"""The Broker: MozPool's request layer behind :class:`mozpool.broker.interfaces.IBroker`, and the
service that drives its timeouts and expiry.

The HTTP API has validated input and resolved ownership before it calls here; the Broker owns
the request rows of this server and feeds their machine.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel

from mozpool.logconfig import Logger
from twisted.python.failure import Failure
from twisted.web import client as webclient
from zope.interface import implementer

from mozpool import liveness
from mozpool.broker import lifeguard, queries, queue, selection
from mozpool.broker.intake import Intake
from mozpool.broker.machine import CONTACT_BOUND, INTERNAL_EVENTS, RequestKind
from mozpool.db import requests as request_rows
from mozpool.db.pool import Database
from mozpool.httpcalls import TreqLike
from mozpool.statemachine.core import Machine, MachineRunner, Row, TimeoutDriver, each_bounded
from mozpool.timeutil import dbnow, deadline_text
from mozpool.broker.interfaces import DeviceHeld, IBroker, RequestSpec

log = Logger()

#: Expired requests handled at once per tick.
EXPIRY_CONCURRENCY = 16


@implementer(IBroker)
class Broker:
    """Creates, renews, returns and drives the requests owned by ``server_fqdn``."""

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        server_fqdn: str,
        time_scale: float = 1.0,
        http_client: TreqLike | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.server_fqdn = server_fqdn
        self.time_scale = time_scale
        self.http = http_client
        self.kind = RequestKind(contact=self._start_contact, rng=rng or random.Random(), contact_bound=CONTACT_BOUND)
        self.runner = MachineRunner(db, clock, self.kind, server_fqdn, time_scale)
        self.intake = Intake(db, self.runner, server_fqdn)
        self.matcher = queue.Matcher(
            db, clock, server_fqdn, self._offer, lambda: liveness.dead_before(clock, time_scale), time_scale
        )
        self.kind.wake_queue = self.matcher.wake
        #: posts to LifeGuard and queued events still running (waited for by :meth:`idle`)
        self._background: set[defer.Deferred[Any]] = set()
        #: the posts alone (cancelled by :meth:`stop`)
        self._contacts: set[defer.Deferred[Any]] = set()
        self._stopping = False

    # --- IBroker ----------------------------------------------------------------------------

    async def _create(self, device: str, spec: RequestSpec) -> dict[str, Any]:
        now = dbnow(self.clock)
        expires = dbnow(self.clock, spec.duration)
        created = (
            f"Request created by {spec.assignee} for {device} with image {spec.image} in environment "
            f"{spec.environment or 'any'}, for {spec.duration} s (until {expires}; created {now})"
        )
        stamp = deadline_text(self.clock.seconds())  # to the millisecond: the queue's order and deadline
        if device == "any":
            # In bulk with the others arriving meanwhile: inserted, and a device claimed when one is free.
            made = await self.intake.create(spec, expires, created, stamp, self.kind.draws())
            row, assigned = made.row, made.device
        else:
            inserted = await self.db.runInteraction(
                queries.insert_request, self.server_fqdn, device, spec, expires, now, created, stamp)
            row, assigned = Row(inserted, str(inserted), "new"), None  # as insert_request wrote it
            self.runner.echo(row, created)
        request_id = row.id
        if assigned is None:  # not claimed in bulk: the machine's first look decides
            try:
                await self.runner.handle_event(row.key, "find_device", created=row)
            finally:
                assigned = self.kind.assigned.pop(request_id, None)
        if assigned is None:  # the look did not run (or failed): read what there is
            public = await self._public(request_id)
        else:
            public = request_rows.public_request(request_rows.new_request(
                request_id, self.server_fqdn, device, spec, expires, assigned))
        holder = self.kind.held.pop(request_id, None)
        if holder is not None:
            raise DeviceHeld(f"device {device} is held by request {holder}", public)
        return public

    def create_request(self, device: str, spec: RequestSpec) -> "defer.Deferred[dict[str, Any]]":
        return defer.Deferred.fromCoroutine(self._create(device, spec))

    async def _public(self, request_id: int) -> dict[str, Any]:
        found = await self.db.runInteraction(request_rows.get_request, request_id)
        assert found is not None
        return request_rows.public_request(found)

    def renew(self, request_id: int, duration: int) -> "defer.Deferred[None]":
        """``expires`` = now + duration; nothing else changes, whatever the state (3.9)."""
        return self.db.runInteraction(queries.set_expires, request_id, dbnow(self.clock, duration))

    def return_request(self, request_id: int) -> "defer.Deferred[None]":
        return self.request_event(request_id, "close", {})

    def request_event(self, request_id: int, event: str, body: dict[str, Any]) -> "defer.Deferred[None]":
        if event in INTERNAL_EVENTS:
            body = {}  # from outside, never with the arguments that make them act
        d = defer.Deferred.fromCoroutine(self.runner.handle_event(str(request_id), event, body))
        return d.addCallback(lambda _: None)

    async def queue_place(self, request_id: int) -> dict[str, Any] | None:
        """Where a waiting request (of any server) stands in the queue (issue 14), as of the
        queue's latest pass, or read now when that pass did not know it; None when it is not
        waiting for a device."""
        place = self.matcher.places.get(request_id)
        if place is None:
            place = (await self.matcher.read_places()).get(request_id)
        return None if place is None else place.public()

    async def _offer(self, request_id: int, device_id: int, device: str) -> bool:
        return await self.runner.handle_event(
            str(request_id), "device_offered", {"device_id": device_id, "device": device})

    # --- driving ----------------------------------------------------------------------------

    async def expire_due(self) -> None:
        """The expiry poll (2.6): this server's requests past ``expires`` that are neither
        closed nor failed get ``expire``."""
        ids = await self.db.runInteraction(queries.expired_request_ids, self.server_fqdn, dbnow(self.clock))

        async def one(request_id: str) -> None:
            try:
                await self.runner.handle_event(request_id, "expire")
            except Exception:
                log.failure("expiring request {id} failed", id=request_id)

        await each_bounded([str(i) for i in ids], EXPIRY_CONCURRENCY, one)
        # The queue is woken by changes; this tick is its safety net for a change it missed.
        self.matcher.wake()

    def contact_bound(self) -> float:
        """The POST's bound follows the real work, whatever the time scale (issue 14):
        contacting_lifeguard's timer never fires before it (RequestKind.min_delay)."""
        return self.kind.contact_bound

    def _track(self, d: "defer.Deferred[Any]") -> "defer.Deferred[Any]":
        self._background.add(d)

        def done(result: Any) -> Any:
            self._background.discard(d)
            return result

        return d.addBoth(done)

    def _start_contact(self, m: Machine, device: selection.Assignment, event: str, body: dict[str, Any]) -> None:
        """Start the please_* POST without waiting for it (the machine's lock is held)."""
        row = m.row
        if self.http is None:
            self._track(defer.Deferred.fromCoroutine(self.runner.log(row, "no HTTP client to reach LifeGuard", "error")))
            return
        d = lifeguard.send_event(self.http, self.clock, self.contact_bound(), device.server, device.name, event, body)

        def accepted(_: int) -> None:
            self._track(self.runner.post(row.key, "lifeguard_contacted"))

        def refused(f: Failure) -> None:
            if self._stopping:
                # Cut off by stop(), whatever the HTTP client made of the cancel (treq's agent:
                # ResponseNeverReceived); the state's timeout resumes the request.
                return None
            reason = _reason(f)
            if not _expected(f):
                log.failure("contacting LifeGuard for request {id}", f, id=row.key, level=LogLevel.warn)
            why = f"LifeGuard did not accept {event} for {device.name}: {reason}; will retry"
            # Tracked on its own, like an acceptance: stopping cuts off the POSTs still in
            # flight, never the machine's handling of an answer that already came.
            self._track(self.runner.post(row.key, "lifeguard_refused", {"why": why}))

        d.addCallbacks(accepted, refused)
        self._contacts.add(d)
        d.addBoth(lambda r: (self._contacts.discard(d), r)[1])
        self._track(d)

    def idle(self) -> "defer.Deferred[None]":
        """Fires when no POST to LifeGuard, no queued event and no pass of the queue is still running."""

        async def wait() -> None:
            while self._background or self.matcher.busy:
                await defer.DeferredList(list(self._background), consumeErrors=True)
                await self.matcher.idle()

        return defer.Deferred.fromCoroutine(wait())

    def stop(self) -> "defer.Deferred[None]":
        """Cancel POSTs in flight; wait for queued events and the queue's pass to finish."""
        self._stopping = True
        for d in list(self._contacts):
            d.cancel()

        async def both() -> None:
            await self.matcher.stop()
            await self.idle()

        return defer.Deferred.fromCoroutine(both())


def _reason(f: Failure) -> str:
    """One line for a failed POST; twisted.web's wrappers (ResponseNeverReceived, ...) carry
    the transport's failures in ``reasons``, and a list of Failures is no message."""
    reasons = getattr(f.value, "reasons", None)
    if reasons:
        return f"{f.type.__name__} ({'; '.join(r.getErrorMessage() or r.type.__name__ for r in reasons)})"
    return f.getErrorMessage() or f.type.__name__


def _expected(f: Failure) -> bool:
    """Refusals and connection-level failures: expected, logged without a traceback."""
    return bool(f.check(
        lifeguard.ContactFailed, defer.TimeoutError, ConnectionError, OSError,
        ierror.ConnectError, ierror.ConnectingCancelledError, ierror.ConnectionLost, ierror.DNSLookupError,
        webclient.ResponseFailed, webclient.RequestTransmissionFailed, webclient.ResponseNeverReceived,
    ))


class BrokerService(MultiService):
    """The request layer's driver: timeouts, then the expiry poll, every tick."""

    def __init__(self, broker: Broker, interval: float | None = None) -> None:
        super().__init__()
        self.broker = broker
        self.driver = TimeoutDriver(broker.runner, extra=broker.expire_due, interval=interval)
        self.driver.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.broker.matcher.stopped = False
        self.broker.matcher.wake()  # requests queued before a restart

    def stopService(self) -> "defer.Deferred[None]":
        stopped = super().stopService()

        async def both() -> None:
            await stopped
            await self.broker.stop()

        return defer.Deferred.fromCoroutine(both())
