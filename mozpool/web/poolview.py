"""The pool in memory (issue 17): every device, the requests that are open or hold a device, and
the imaging servers, kept current by the change feed that drives /api/events
(:class:`mozpool.web.events.ChangeFeed`), so the device list, its details, the pool summary,
``state/?cache=1`` and the UI's device tables are answered without reading the pool again.

The database stays the truth.  The journal only says *which* rows changed; the view reads those
rows again (one query per poll for all of them), so it never computes a value the database
would not hold.  Every server's writes are journalled in the shared database, so each server's
view follows the whole pool.  It reads everything again:

- at start (and after a restart), before its first answer;
- after a gap in the feed: a journal id given up as missing may have been a change;
- on a ``reload`` change (a fixture loaded many devices at once);
- every :data:`REFRESH_SECONDS`, against a write path that forgot to journal (an older daemon on
  the same database, a hand-made ``UPDATE``): a difference found then is logged.

A read waits for a poll of the journal begun after it arrived (:meth:`PoolView.sync`), so it sees
every change committed before it, as the database read it replaces did; concurrent reads share
that poll.  ``state/?cache=1`` is a cached answer by contract (spec 4.4) and does not wait.

Bodies are kept encoded: each device's details as JSON bytes (encoded again only when its row or
its server's liveness changes), joined into the list when it is asked for after a change.
"""

from __future__ import annotations

import json
import math
from typing import AbstractSet, Any, Callable, Iterator, TypeVar

from twisted.internet.interfaces import IReactorTime

from mozpool import liveness
from mozpool.db import changes, devices
from mozpool.db.pool import Cursor, Database
from mozpool.db.summary import category, report
from mozpool.logconfig import Logger
from mozpool.web import queries

log = Logger()

#: Seconds between full reads that check the view against the database.
REFRESH_SECONDS = 300.0
#: Least seconds between two full reads for gaps (on Galera every write leaves holes).
GAP_REBUILD_SECONDS = 5.0
#: How old the view may be (since the feed last read the journal) for ``state/?cache=1`` to be
#: answered from it while the database cannot answer (mozpool.web.statecache's rule).
STALE_SECONDS = 60.0
#: The nominal lifetime of a ``state/?cache=1`` answer (its Cache-Control and Expires).
STATE_TTL = 5.0

_KEYS = devices.DETAIL_KEYS
_ID, _NAME, _SERVER, _RELAY, _STATE, _COMMENTS, _ENV, _IMAGE, _REQUEST = (
    _KEYS.index(k) for k in ("id", "name", "imaging_server", "relay_info", "state", "comments", "environment",
                             "image", "request_id")
)
#: where a view row keeps its server's last heartbeat (read with the row; see DeviceEntry)
_LAST_SEEN = len(_KEYS)
#: the device's stored failure summary (issue 15), which the summary's failed devices carry
_FAILURE = _KEYS.index("failure")
_HWTYPE, _SERVER_ID = (-len(devices.VIEW_EXTRA) + devices.VIEW_EXTRA.index(k)
                        for k in ("hardware_type", "imaging_server_id"))

T = TypeVar("T")


class DeviceEntry:
    """One device: its row as :func:`mozpool.db.devices.view_rows` reads it, and its details
    encoded for the server liveness they were encoded with."""

    __slots__ = ("row", "fragment", "fragment_down")

    def __init__(self, row: tuple) -> None:
        # The row's own last_seen is left out of comparisons: the heartbeat moves it without a
        # journalled change, and the view keeps the servers' heartbeats apart.
        self.row = row[:_LAST_SEEN] + (None,) + row[_LAST_SEEN + 1:]
        self.fragment: bytes | None = None
        self.fragment_down: str | None = None

    @property
    def name(self) -> str:
        return str(self.row[_NAME])

    @property
    def state(self) -> str:
        return str(self.row[_STATE])

    @property
    def request_id(self) -> int | None:
        value = self.row[_REQUEST]
        return None if value is None else int(value)

    @property
    def server_id(self) -> int:
        return int(self.row[_SERVER_ID])

    def encoded(self, down: str | None, dead_before: str) -> bytes:
        """The device's ``list/?details`` object as JSON; ``down``: its server's last heartbeat
        if that server is dead."""
        if self.fragment is None or self.fragment_down != down:
            row = self.row[:_LAST_SEEN] + (down,) + self.row[_LAST_SEEN + 1:]
            self.fragment = json.dumps(devices.detail(row, dead_before if down is not None else None)).encode("utf-8")
            self.fragment_down = down
        return self.fragment


class PoolView:
    """See the module docstring.  Fed by :meth:`follow` (the feed's :class:`IChangeFollower`);
    :meth:`attach` gives it the feed that :meth:`sync` waits on."""

    def __init__(self, db: Database, clock: IReactorTime, time_scale: float = 1.0,
                 refresh: float = REFRESH_SECONDS) -> None:
        self.db = db
        self.clock = clock
        self.time_scale = time_scale
        self.refresh = refresh
        self.feed: Any = None
        #: device id -> entry
        self.devices: dict[int, DeviceEntry] = {}
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        #: a device came, went or was renamed: the name index is made again when next read
        self._names_dirty = False
        #: request id -> (state, server id), for open requests and those holding a device
        self.requests: dict[int, tuple[str, int]] = {}
        #: request id -> the device it holds
        self.held: dict[int, int] = {}
        #: server id -> (fqdn, last heartbeat)
        self.servers: dict[int, tuple[str, str | None]] = {}
        #: grows with every change to a device or request
        self.version = 0
        self.built = False
        #: full reads so far, and the devices a periodic one found different from the view
        self.builds = 0
        self.corrected = 0
        self._built_at = -math.inf
        self._servers_at = -math.inf
        self._stale = True
        self._reload = False
        self._pending_devices: set[int] = set()
        self._pending_requests: set[int] = set()
        self._names_body: tuple[int, bytes] | None = None
        self._list_body: tuple[Any, bytes] | None = None
        self._summary: tuple[Any, bytes] | None = None
        self._state_bodies: dict[str, bytes] = {}

    def attach(self, feed: Any) -> None:
        """The feed (``mozpool.web.events.ChangeFeed``) this view follows and syncs with."""
        self.feed = feed
        feed.view = self

    # --- following the journal ---------------------------------------------------------------

    async def follow(self, found: list[changes.Change], gap: bool) -> None:
        """Take one poll's changes: read the rows they name again, or everything after a gap."""
        for ch in found:
            if ch.kind == changes.RELOAD:
                self._reload = True
            if ch.device_id is not None:
                self._pending_devices.add(ch.device_id)
            if ch.request_id is not None:
                self._pending_requests.add(ch.request_id)
        if gap:
            self._stale = True
        now = self.clock.seconds()
        if (not self.built or self._reload or now - self._built_at >= self.refresh
                or (self._stale and now - self._built_at >= GAP_REBUILD_SECONDS)):
            await self.rebuild()
        elif self._pending_devices or self._pending_requests or now - self._servers_at >= self._server_interval():
            await self._read_pending()

    def _server_interval(self) -> float:
        """Heartbeats are read five times per heartbeat interval, so a dead server shows within
        a fifth of an interval of what the database would say."""
        return liveness.HEARTBEAT_INTERVAL * self.time_scale / 5

    async def rebuild(self) -> None:
        """Read every device, request and server again, in one transaction."""
        started = self.clock.seconds()
        periodic = self.built and not self._stale and not self._reload
        pending = (set(self._pending_devices), set(self._pending_requests))
        flags = (self._stale, self._reload)
        self._stale = self._reload = False
        try:
            rows, reqs, servers = await self.db.runInteraction(_read_all)
        except BaseException:
            self._stale, self._reload = flags[0] or not self.built, flags[1]
            raise
        self._pending_devices -= pending[0]
        self._pending_requests -= pending[1]
        explained = pending[0] | {self.held[r] for r in pending[1] if r in self.held}
        differing = self._install_all(rows, reqs, explained, pending[1])
        self.servers = servers
        self._servers_at = started
        self._built_at = started
        self.builds += 1
        if periodic and differing:
            self.corrected += differing
            log.warn("pool view: {n} devices differed from the database (a write that was not journalled); "
                     "read again", n=differing)
        self.built = True

    async def _read_pending(self) -> None:
        device_ids = set(self._pending_devices)
        request_ids = set(self._pending_requests)
        # A released device is named by no change: it is the one the request held.
        device_ids |= {self.held[r] for r in request_ids if r in self.held}
        servers_due = self.clock.seconds() - self._servers_at >= self._server_interval()
        started = self.clock.seconds()

        def read(c: Cursor) -> tuple[list[tuple], list[tuple], Any, set[int]]:
            reqs = queries.view_requests(c, sorted(request_ids)) if request_ids else []
            wanted = device_ids | {r[3] for r in reqs if r[3] is not None}
            rows = devices.view_rows(c, sorted(wanted)) if wanted else []
            servers = queries.view_servers(c) if servers_due else None
            return rows, reqs, servers, wanted - {int(r[_ID]) for r in rows}

        rows, reqs, servers, gone = await self.db.runInteraction(read)
        self._pending_devices -= device_ids
        self._pending_requests -= request_ids
        for request_id in request_ids - {r[0] for r in reqs}:
            self._drop_request(request_id)
        for r in reqs:
            self._put_request(r)
        for device_id in gone:
            self._drop_device(device_id)
        for row in rows:
            self._put_device(row)
        if servers is not None:
            self.servers = servers
            self._servers_at = started

    # --- keeping the maps --------------------------------------------------------------------

    def _install_all(self, rows: list[tuple], reqs: list[tuple], explained: AbstractSet[int] = frozenset(),
                     claims: AbstractSet[int] = frozenset()) -> int:
        """Replace the devices and requests; how many devices differed for no journalled change
        (``explained``: devices changes named; ``claims``: requests they named).  Entries of
        unchanged rows are kept, with their encoded details."""
        old = self.devices
        fresh: dict[int, DeviceEntry] = {}
        differing = 0
        for row in rows:
            device_id = int(row[_ID])
            entry = DeviceEntry(row)
            kept = old.get(device_id)
            if kept is not None and kept.row == entry.row:
                entry = kept
            elif device_id not in explained and entry.request_id not in claims:
                differing += 1
            fresh[device_id] = entry
        differing += len(old.keys() - fresh.keys() - explained)
        self.devices = fresh
        self._names_dirty = True
        self.held = {e.request_id: i for i, e in fresh.items() if e.request_id is not None}
        self.requests = {r[0]: (r[1], r[2]) for r in reqs}
        self.version += 1
        return differing

    def _put_device(self, row: tuple) -> None:
        device_id = int(row[_ID])
        entry = DeviceEntry(row)
        old = self.devices.get(device_id)
        if old is not None and old.row == entry.row:
            return
        if old is not None:
            self._unlink(device_id, old)
        if old is None or old.name != entry.name:
            self._names_dirty = True
        self.devices[device_id] = entry
        if entry.request_id is not None:
            self.held[entry.request_id] = device_id
        self.version += 1

    def _drop_device(self, device_id: int) -> None:
        old = self.devices.pop(device_id, None)
        if old is not None:
            self._unlink(device_id, old)
            self._names_dirty = True
            self.version += 1

    def _unlink(self, device_id: int, entry: DeviceEntry) -> None:
        if entry.request_id is not None and self.held.get(entry.request_id) == device_id:
            del self.held[entry.request_id]

    def _put_request(self, r: tuple) -> None:
        request_id, state, server_id, device_id = r
        if state == "closed" and device_id is None:
            self._drop_request(request_id)
            return
        if self.requests.get(request_id) != (state, server_id):
            self.requests[request_id] = (state, server_id)
            self.version += 1

    def _drop_request(self, request_id: int) -> None:
        if self.requests.pop(request_id, None) is not None:
            self.version += 1

    # --- reading -----------------------------------------------------------------------------

    async def sync(self) -> None:
        """Wait until the view holds every change committed before the call (see the module
        docstring); fails as the journal read failed (DatabaseUnavailable: the API's 503)."""
        if self.feed is not None:
            await self.feed.catch_up()
        else:
            await self.follow([], False)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(view, *args)`` once the view is in sync."""
        await self.sync()
        return fn(self, *args)

    def _index(self) -> None:
        if self._names_dirty:
            self._ids = {e.name: i for i, e in self.devices.items()}
            self._names = sorted(self._ids)
            self._names_dirty = False

    @property
    def ids(self) -> dict[str, int]:
        """Device name -> id."""
        self._index()
        return self._ids

    @property
    def names(self) -> list[str]:
        """Every device name, sorted by code point (as both back-ends' binary collations)."""
        self._index()
        return self._names

    def entries(self) -> Iterator[DeviceEntry]:
        """Every device, in name order."""
        devices_, ids = self.devices, self.ids
        return (devices_[ids[name]] for name in self.names)

    def _dead(self, dead_before: str) -> dict[int, str]:
        """{server id: last heartbeat} of the servers silent since before ``dead_before``."""
        return {sid: seen for sid, (_, seen) in self.servers.items() if seen is not None and seen < dead_before}

    def dead_before(self) -> str:
        return liveness.dead_before(self.clock, self.time_scale)

    def names_body(self) -> bytes:
        """``list/``'s body, as ``json.dumps`` of the database path writes it."""
        if self._names_body is None or self._names_body[0] != self.version:
            self._names_body = (self.version, json.dumps({"devices": self.names}).encode("utf-8"))
        return self._names_body[1]

    def details_body(self) -> bytes:
        """``list/?details``'s body, byte for byte the database path's."""
        dead_before = self.dead_before()
        dead = self._dead(dead_before)
        key = (self.version, tuple(sorted(dead.items())))
        if self._list_body is None or self._list_body[0] != key:
            parts = [e.encoded(dead.get(e.server_id), dead_before) for e in self.entries()]
            self._list_body = (key, b'{"devices": [' + b", ".join(parts) + b"]}")
        return self._list_body[1]

    def summary_body(self, generated_at: str) -> bytes:
        """``pool/summary``'s body, byte for byte the database path's."""
        dead_before = self.dead_before()
        dead = self._dead(dead_before)
        key = (self.version, tuple(sorted(dead.items())))
        if self._summary is None or self._summary[0] != key:
            self._summary = (key, json.dumps(self.summary(dead_before)).encode("utf-8"))
        return b'{"generated_at": ' + json.dumps(generated_at).encode("utf-8") + b", " + self._summary[1][1:]

    def summary(self, dead_before: str | None) -> dict[str, Any]:
        """mozpool.db.summary.pool_summary's report, from memory."""
        servers = self.servers
        rows = ((e.name, e.state, e.row[_HWTYPE], e.row[_SERVER], e.row[_ENV], e.row[_COMMENTS], e.request_id,
                 e.row[_FAILURE]) for e in self.entries())
        counts: dict[int, int] = {}
        for e in self.devices.values():
            counts[e.server_id] = counts.get(e.server_id, 0) + 1
        server_list = [{"fqdn": fqdn, "last_seen": seen, "devices": counts.get(sid, 0)}
                       for sid, (fqdn, seen) in sorted(servers.items(), key=lambda s: s[1][0])]
        return report(rows, server_list, dead_before)

    def usable(self) -> bool:
        """Built, and the feed read the journal within :data:`STALE_SECONDS`."""
        if not self.built:
            return False
        last = getattr(self.feed, "last_success", None) if self.feed is not None else self._built_at
        return last is not None and self.clock.seconds() - last < STALE_SECONDS

    def state_of(self, name: str) -> str | None:
        """A device's state as the view holds it (no waiting), None when unknown here."""
        device_id = self.ids.get(name)
        return None if device_id is None else self.devices[device_id].state

    def state_now(self, name: str) -> str | None:
        """What ``state/?cache=1`` answers at once: the device's state, or None (unknown here,
        or the view too old to answer for) to go the usual way."""
        if self._names_dirty:
            self._index()
        device_id = self._ids.get(name)
        if device_id is None or not self.usable():
            return None
        return self.devices[device_id].row[_STATE]  # type: ignore[no-any-return]

    def state_body(self, state: str) -> bytes:
        """``{"state": ...}`` encoded once per state name."""
        body = self._state_bodies.get(state)
        if body is None:
            body = self._state_bodies[state] = json.dumps({"state": state}).encode("utf-8")
        return body

    def state_expires(self) -> float:
        """When the current ``state/?cache=1`` answers go stale: the end of this
        :data:`STATE_TTL` window, so caches in front keep them at most that long."""
        return (math.floor(self.clock.seconds() / STATE_TTL) + 1) * STATE_TTL

    # --- the UI's device tables (mozpool.web.ui.viewqueries) ----------------------------------

    def ui_row(self, entry: DeviceEntry) -> dict[str, Any]:
        """A device as mozpool.web.ui.queries' tables show it."""
        row = entry.row
        request_id = entry.request_id
        request = self.requests.get(request_id) if request_id is not None else None
        return {
            "name": entry.name, "state": entry.state, "category": category(entry.state, request_id is not None),
            "hardware_type": row[_HWTYPE] or "unknown", "environment": row[_ENV], "image": row[_IMAGE],
            "imaging_server": row[_SERVER], "request_id": request_id,
            "request_state": None if request is None else request[0], "comments": row[_COMMENTS],
            "relay_info": row[_RELAY],
        }

    def raw_hardware_type(self, entry: DeviceEntry) -> str | None:
        """The device's hardware type, None when it has none."""
        return entry.row[_HWTYPE]

    def snapshot(self) -> dict[str, Any]:
        """Everything the view holds as plain data, for comparing with a fresh read."""
        return {
            "devices": {i: e.row for i, e in self.devices.items()},
            "names": list(self.names),
            "requests": dict(self.requests),
            "held": dict(self.held),
        }


def _read_all(c: Cursor) -> tuple[list[tuple], list[tuple], dict[int, tuple[str, str | None]]]:
    return devices.view_rows(c), queries.view_requests(c), queries.view_servers(c)

