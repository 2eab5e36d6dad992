"""The change journal: one row per change others may want to follow (a state change, a log
line, a claim or release, an operator's edit), written in the same transaction as the change.

Every server writes to it and every server reads it, so one server's event stream shows the
whole pool (``mozpool.web.events``).  Readers go by id; ids of concurrent transactions on
MySQL become visible out of order (and Galera leaves gaps by design), so :func:`read_after`
also re-asks for ids a reader saw missing ("holes") until they appear or are given up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from mozpool.db.pool import Cursor, Pending
from mozpool.timeutil import apitime

#: The kinds of change, which are also the event types of /api/events.
DEVICE_STATE = "device_state"
REQUEST_STATE = "request_state"
REQUEST_DEVICE = "request_device"
DEVICE_LOG = "device_log"
REQUEST_LOG = "request_log"
DEVICE_COMMENTS = "device_comments"
DEVICE_ENVIRONMENT = "device_environment"
#: A power controller's health changed (issue 15: ``ok`` <-> ``suspect``, and why).
BOARD_HEALTH = "board_health"
KINDS = (DEVICE_STATE, REQUEST_STATE, REQUEST_DEVICE, DEVICE_LOG, REQUEST_LOG, DEVICE_COMMENTS, DEVICE_ENVIRONMENT,
         BOARD_HEALTH)

#: Kinds for the in-memory pool view only (mozpool.web.poolview), never sent to /api/events:
#: ``device_row``, a device's row changed in a way no kind above says (its image, its relay,
#: ...): read it again; ``reload``, many rows changed at once (a fixture): read everything again.
DEVICE_ROW = "device_row"
RELOAD = "reload"

#: Rows one read returns at most; a reader that gets this many reads again at once.
READ_BATCH = 1000


def record(
    c: Cursor, kind: str, ts: str, *, device_id: int | None = None, request_id: int | None = None, **data: Any
) -> None:
    """Journal one change (inside the transaction that makes it)."""
    c.insert_later(_INSERT, (ts, kind, device_id, request_id, json.dumps(data, separators=(",", ":"))))


def record_pending(
    c: Cursor, kind: str, ts: str, data: Callable[[], Mapping[str, Any]], *,
    device_id: int | None = None, request_id: int | None = None,
) -> None:
    """:func:`record` of a change whose data is known only when the held-back rows are written
    (a log line's id): ``data()`` is called then, in the journal's order."""
    c.insert_later(_INSERT, (ts, kind, device_id, request_id, Pending(
        lambda: json.dumps(data(), separators=(",", ":")))))


_INSERT = "INSERT INTO changes (ts, kind, device_id, request_id, data) VALUES (?, ?, ?, ?, ?)"


@dataclass(frozen=True)
class Change:
    id: int
    kind: str
    #: the event's JSON object: the stored fields plus device, request, imaging_server and ts
    data: Mapping[str, Any]
    #: the rows the change names (the device's row may be gone: then ``data`` has no device)
    device_id: int | None = None
    request_id: int | None = None


class ChangeData(Mapping[str, Any]):
    """A change's event object, made from its row when first read.  Most changes are log lines
    that only the pool view follows, and it reads the ids alone: parsing every change's JSON in
    the database thread took two fifths of that thread in a burst of allocations on SQLite."""

    __slots__ = ("_row", "_made")

    def __init__(self, row: tuple) -> None:
        self._row = row
        self._made: dict[str, Any] | None = None

    def _data(self) -> dict[str, Any]:
        if self._made is None:
            _, kind, ts, device, server, request_id, text, _ = self._row
            data: dict[str, Any] = {}
            if device is not None:
                data["device"] = device
                data["imaging_server"] = server
            elif kind == REQUEST_DEVICE:
                data["device"] = None  # the claim was dropped
            if request_id is not None:
                data["request"] = int(request_id)
            try:
                stored = json.loads(text)
            except ValueError:
                stored = {}
            if isinstance(stored, dict):
                data.update(stored)
            data.setdefault("ts", apitime(str(ts)))
            self._made = data
        return self._made

    def says(self, key: str, value: str) -> bool:
        """Whether the stored ``key`` is ``value``; the object is made only when its text could
        say so (the queue asks this of every change, and most say something else)."""
        if self._made is None and json.dumps(value) not in str(self._row[6]):
            return False
        return bool(self._data().get(key) == value)

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def __repr__(self) -> str:
        return repr(self._data())


_READ_SQL = (
    "SELECT c.id, c.kind, c.ts, d.name, s.fqdn, c.request_id, c.data, c.device_id FROM changes c"
    " LEFT JOIN devices d ON d.id = c.device_id"
    " LEFT JOIN imaging_servers s ON s.id = d.imaging_server_id"
)


def _change(row: tuple) -> Change:
    change_id, kind, _, _, _, request_id, _, device_id = row
    return Change(
        int(change_id), kind, ChangeData(row),
        None if device_id is None else int(device_id), None if request_id is None else int(request_id),
    )


def read_after(c: Cursor, after: int, holes: Iterable[int] = ()) -> list[Change]:
    """Changes with an id past ``after`` (at most :data:`READ_BATCH`), and those of ``holes``
    that have appeared since, in id order."""
    rows = c.execute(_READ_SQL + f" WHERE c.id > ? ORDER BY c.id LIMIT {READ_BATCH}", (after,)).fetchall()
    wanted = sorted(holes)
    if wanted:
        marks = ", ".join("?" * len(wanted))
        rows += c.execute(_READ_SQL + f" WHERE c.id IN ({marks})", wanted).fetchall()
    changes = [_change(r) for r in rows]
    changes.sort(key=lambda ch: ch.id)
    return changes


def last_id(c: Cursor) -> int:
    """The newest change's id (0 for none): where a reader that wants no history starts."""
    return int(c.scalar("SELECT MAX(id) FROM changes") or 0)


def start_at(c: Cursor, window: int) -> tuple[int, list[int]]:
    """Where a reader that wants no history starts: the newest id, and the ids of the last
    ``window`` not (yet) there -- a transaction that took one may still commit."""
    last = last_id(c)
    present = {int(r[0]) for r in c.execute("SELECT id FROM changes WHERE id > ?", (last - window,)).fetchall()}
    return last, [i for i in range(max(last - window + 1, 1), last + 1) if i not in present]


def purge_before(c: Cursor, cutoff: str, batch: int) -> int:
    """Delete up to ``batch`` changes older than ``cutoff``; how many went."""
    ids = [r[0] for r in c.execute(f"SELECT id FROM changes WHERE ts < ? LIMIT {int(batch)}", (cutoff,)).fetchall()]
    if ids:
        c.execute(f"DELETE FROM changes WHERE id IN ({', '.join('?' * len(ids))})", ids)
    return len(ids)
