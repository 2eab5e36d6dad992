"""One inventory sync run (spec bmm-protocols 7): take the lease, fetch everything, read the
database, plan, check the failsafes, apply one change per transaction, give the lease back.

Used by ``mozpool-inventorysync`` and by the daemon's timer (:mod:`mozpool.inventory.service`).
Every step either completes or stops the run with :class:`SyncAborted` and its reason; nothing
is changed unless the fetch was complete.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import KW_ONLY, dataclass, field
from datetime import timedelta
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mozpool.db.errors import Conflict
from mozpool.db.pool import Database
from mozpool.inventory import lease, queries
from mozpool.inventory.filesource import FileInventory
from mozpool.inventory.http import JSONGetter, bounded, http_client
from mozpool.inventory.model import InventoryError, InventorySource, LeaseHeld, SyncAborted
from mozpool.inventory.mozilla import MozillaInventory
from mozpool.inventory.netbox import NetBoxInventory, auth_header
from mozpool.inventory.plan import ChangeSet, plan
from mozpool.inventory.rules import select
from mozpool.inventory.settings import InventorySettings
from mozpool.logconfig import Logger
from mozpool.timeutil import dbnow, dbtime, utcnow

log = Logger()

#: the whole run's bound, fetch and changes together (spec 7.1: 10 minutes)
RUN_BOUND = 600.0
#: the lease outlives the run's bound by this much, for clocks that differ between servers
LEASE_MARGIN = 60.0
LEASE_NAME = "inventory-sync"

#: ``report(kind, line)``: kind is "system" (downloaded/skipped), "note", "change" or "summary"
Report = Callable[[str, str], None]


def make_source(settings: InventorySettings, reactor: Any, http: Any = None) -> InventorySource:
    """The configured source; ``http`` (a treq client) defaults to a verified one of our own."""
    if settings.source == "file":
        return FileInventory(settings.path)
    http = http if http is not None else http_client(reactor, settings.ca_certs)
    if settings.source == "netbox":
        return NetBoxInventory(
            JSONGetter(http, reactor, headers=auth_header(settings.token)), settings.url, settings.filter,
            relay_field=settings.relay_field, imaging_server_field=settings.imaging_server_field,
            interface=settings.interface, domain=settings.domain, power_field=settings.power_field,
        )
    auth = (settings.username, settings.password) if settings.username else None
    return MozillaInventory(JSONGetter(http, reactor, auth=auth), settings.url, settings.filter, settings.api)


def new_holder(who: str) -> str:
    """A lease holder's name: who, this process, and a nonce so no two runs share one."""
    return f"{who} pid {os.getpid()} {secrets.token_hex(4)}"


_PAST = {"insert": "inserted", "update": "updated", "delete": "deleted"}


def summary(changes: ChangeSet) -> str:
    """One line for the log: what was listed and what changed."""
    parts = [f"{len(changes.kept)} devices listed, {len(changes.skipped)} systems skipped"]
    for table, label in (("device", "devices"), ("relay_board", "relay boards")):
        parts.append(label + " " + ", ".join(f"{changes.count(table, a)} {_PAST[a]}" for a in _PAST))
    return "; ".join(parts)


@dataclass
class Sync:
    """One run's collaborators and options."""

    db: Database
    source: InventorySource
    clock: IReactorTime
    _: KW_ONLY
    ignore_re: str = ""
    ship_it: bool = False
    dry_run: bool = False
    #: the lease holder's name; None: run without the lease (a dry run)
    holder: str | None = None
    report: Report = field(default=lambda kind, line: None)
    bound: float = RUN_BOUND

    async def run(self) -> ChangeSet:
        """The change set applied (or, dry, what would be); SyncAborted when the run stopped."""
        deadline = self.clock.seconds() + self.bound
        if self.holder is not None:
            until = dbtime(utcnow(self.clock) + timedelta(seconds=self.bound + LEASE_MARGIN))
            try:
                other = await self.db.runInteraction(lease.take, LEASE_NAME, self.holder, dbnow(self.clock), until)
            except Conflict:
                other = lease.Holder("another server (taking it at this moment)", until)
            if other is not None:
                raise LeaseHeld(f"another inventory sync is running ({other.holder}, until {other.expires} UTC)")
        try:
            return await self._run(deadline)
        finally:
            if self.holder is not None:
                try:
                    await self.db.runInteraction(lease.release, LEASE_NAME, self.holder)
                except Exception:
                    log.failure("could not release the inventory sync's lease; it expires by itself")

    async def _fetch(self, deadline: float) -> list[Any]:
        try:
            return await bounded(self.source.fetch(), max(0.0, deadline - self.clock.seconds()), self.clock)
        except defer.TimeoutError:
            raise SyncAborted(f"{self.source.describe()} was not read within {self.bound:g} s; nothing changed") from None
        except InventoryError as e:
            raise SyncAborted(f"reading {self.source.describe()} failed: {e}; nothing changed") from None

    async def _run(self, deadline: float) -> ChangeSet:
        systems = await self._fetch(deadline)
        selection = select(systems, self.source.field_names, self.ignore_re)
        for d in selection.devices:
            self.report("system", f"{d.fqdn} downloaded.")
        for s in selection.skipped:
            self.report("system", f"{s.hostname} SKIPPED - {s.reason}")
        # Read the database only now: a long fetch holds no snapshot or connection (7.5).
        db_devices, db_boards = await self.db.runInteraction(queries.dump)
        changes = plan(db_devices, db_boards, selection)
        for note in changes.notes:
            self.report("note", note)
        reason = changes.abort_reason(self.ship_it)
        if self.dry_run:
            for change in changes.changes:
                self.report("change", change.describe())
            self.report("summary", f"dry run, nothing changed: {summary(changes)}")
            if reason:
                raise SyncAborted(reason)
            return changes
        if reason:
            raise SyncAborted(reason)
        await self._apply(changes, deadline)
        self.report("summary", summary(changes))
        return changes

    async def _apply(self, changes: ChangeSet, deadline: float) -> None:
        """Each change in its own transaction.  A failure stops the run: what was applied
        stays, and the next run converges from there (7.5)."""
        todo = changes.changes
        for done, change in enumerate(todo):
            if self.clock.seconds() > deadline:
                raise SyncAborted(f"the run passed its {self.bound:g} s bound after {done} of {len(todo)} changes; "
                                  "the next run goes on from there")
            try:
                try:
                    await self.db.runInteraction(queries.apply_change, change, dbnow(self.clock))
                except Conflict:
                    # Another server inserted a shared row (an imaging server, a hardware type)
                    # this transaction could not see yet: once more, in a new one.
                    await self.db.runInteraction(queries.apply_change, change, dbnow(self.clock))
            except defer.CancelledError:
                raise
            except Exception as e:
                raise SyncAborted(f"{change.describe()} failed after {done} of {len(todo)} changes were applied: {e}; "
                                  "the next run goes on from there") from e
            self.report("change", change.describe())
