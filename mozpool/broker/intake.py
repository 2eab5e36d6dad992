"""Request creation in bulk (issue 17): the creations of ``any`` requests that arrive while a
batch is in the database wait, and go together in the next one -- one transaction and about ten
statements for up to :data:`BATCH` of them, instead of three or four transactions and about
fifteen statements each.

A batch inserts its requests in one multi-row INSERT and gives them their first look for a
device together (the entry of ``finding_device``, in bulk:
:func:`mozpool.broker.selection.claim_fresh`; its claims are one guarded INSERT).  For those that
claimed a device it then writes what the request machine would have written for ``new``
--find_device--> ``finding_device`` --device_claimed--> the table's next state: their state in
one UPDATE, and each request's log lines, history entries and journal entries.  The targets and
the behaviour's log line come from the machine's table (:func:`mozpool.broker.machine.planned`),
never from here; tests/broker/test_intake.py checks both ways write the same rows.

A request the bulk look leaves (one waiting behind others, one preferring a pristine device or
a holder of its reusable image, one with no sample left) gets its own look
(:func:`mozpool.broker.selection.find_now`) in the same batch; one that still claims nothing is
left in ``new``, untouched, and its machine takes it from there as for a named request.  The bulk
path is only the common case of a burst: any other outcome keeps the machine's one way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mozpool import liveness
from mozpool.broker import machine, queries, selection
from mozpool.broker.interfaces import RequestSpec
from mozpool.db import catalog, history
from mozpool.db.errors import Conflict
from mozpool.db.gathered import Gathered
from mozpool.db.pool import Cursor, Database
from mozpool.db.requests import note_claim
from mozpool.statemachine import queries as machine_rows
from mozpool.statemachine.core import MachineRunner, Row

#: Creations in one transaction at most, for a server claiming alone (its row locks are held
#: until it commits).
BATCH = 48
#: ... and at least, however many servers share the pool.
LEAST = 8
#: Batches in the database at once.
LANES = 6


def batch_size(servers: int) -> int:
    """The most creations a batch takes while ``servers`` are alive.  Servers creating at once
    claim from one pool, and two batches collide in proportion to the product of their sizes: a
    collision makes one wait for the other to commit (one database server), or lose
    certification and run again whole (Galera).  Each server takes its share of the batch.
    Measured with bench/scale.py and bench/pool.py (README, "Where the layers meet")."""
    return max(LEAST, BATCH // max(1, servers))


#: The creation's first operation, and the outcome of the look done in bulk, as the request
#: machine's table names them.
CREATED, FIND, CLAIMED = "new", "find_device", "device_claimed"


@dataclass(frozen=True)
class _Creation:
    spec: RequestSpec
    expires: str
    text: str
    created: str
    draws: list[float]


@dataclass(frozen=True)
class Created:
    """One creation's outcome: the new request, and the device it claimed (None: nothing was
    claimed in bulk; its machine goes on from ``new``)."""

    row: Row
    device: str | None
    #: the lines written to its log, for the daemon's log
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Plan:
    """What the table says the first operation of a request that claims a device writes."""

    looking: str
    claimed: str
    counters: str
    now: str
    precise: str
    timeout: str | None
    dead_before: str | None


class Intake:
    """Creates ``any`` requests in batches for one server's request runner."""

    def __init__(self, db: Database, runner: MachineRunner, server_fqdn: str) -> None:
        self.runner = runner
        self.server_fqdn = server_fqdn
        self.batches: Gathered[_Creation, Created] = Gathered(db, self._serve, BATCH, LANES)
        #: how many servers are alive (the tap hands the heartbeat's count)
        self.servers_alive: Callable[[], int] = lambda: 1

    async def create(self, spec: RequestSpec, expires: str, text: str, created: str,
                     draws: Sequence[float]) -> Created:
        """Insert a request for ``any`` device logged with ``text``, once its batch has
        committed; its deadline is set and its lines echoed to the daemon's log."""
        item = _Creation(spec, expires, text, created, list(draws))
        self.batches.most = batch_size(self.servers_alive())
        try:
            made = await self.batches.submit(item)
        except Conflict:
            # The batch lost to concurrent work each time it ran, and was rolled back whole:
            # this creation goes again, alone.
            alone = (await self.batches.db.runInteraction(self._serve([item])))[0]
            if isinstance(alone, Exception):
                raise alone
            made = alone
        for line in made.lines:
            self.runner.echo(made.row, line)
        if made.device is not None:
            self.runner.arm(made.row.key, self.runner.delay(made.row.state))
        return made

    def _serve(self, batch: Sequence[_Creation]) -> Callable[[Cursor], Sequence[Created | Exception]]:
        plan, observers = self._plan(), tuple(self.runner.observers)
        return lambda c: create_batch(c, self.server_fqdn, batch, plan, observers)

    def _plan(self) -> _Plan:
        looking, _ = machine.planned(CREATED, FIND)
        claimed, _ = machine.planned(looking, CLAIMED, "")
        runner = self.runner
        return _Plan(
            looking, claimed, json.dumps({looking: 1}), runner.now(), runner.now_precise(),
            runner.deadline_in(runner.delay(claimed)), liveness.dead_before(runner.clock, runner.time_scale),
        )


def create_batch(
    c: Cursor, server: str, batch: Sequence[_Creation], plan: _Plan, observers: Sequence[Any]
) -> list[Created | Exception]:
    """The batch's requests inserted in one statement and given their first looks in bulk
    (:func:`mozpool.broker.selection.claim_fresh`; a request it leaves gets its own look,
    :func:`mozpool.broker.selection.find_now`), then the state of those that claimed a device,
    all in one UPDATE, and what each of their transitions records."""
    images, server_id = _images(c, server, {item.spec.image for item in batch})
    # The outcome of each creation, in the batch's order; an image gone since the API looked it
    # up fails its creation alone.
    out: list[Created | Exception] = [
        ValueError(f"unknown image {item.spec.image}") for item in batch]
    known = [(i, item) for i, item in enumerate(batch) if item.spec.image in images]
    ids = queries.insert_requests(c, server, server_id, [
        queries.NewRequest("any", item.spec, images[item.spec.image][0], item.expires, item.text, item.created)
        for _, item in known], plan.now)
    fresh: list[selection.Fresh] = []
    for request_id, (_, item) in zip(ids, known):
        image_id, reusable, hardware = images[item.spec.image]
        info = selection.RequestInfo(
            request_id, "any", item.spec.environment or "any", item.spec.image, image_id,
            item.spec.boot_config or "{}", reusable, hardware, item.spec.priority)
        fresh.append(selection.Fresh(info, tuple(item.draws)))
    looks = selection.claim_fresh(c, fresh, plan.now, plan.dead_before)
    claims: list[int] = []
    for (i, item), f in zip(known, fresh):
        request_id = f.info.id
        claimed = looks.get(request_id, selection.Claimed(None))
        if claimed.device is None:  # its own look, after any device it lost
            _, found = selection.find_now(c, request_id, f.draws, plan.now, plan.dead_before, False, claimed.lost_ids)
            claimed = selection.Claimed(found.claimed.device, claimed.lost + found.claimed.lost)
        if claimed.device is None:
            out[i] = Created(Row(request_id, str(request_id), CREATED), None, (item.text,))
            continue
        claims.append(request_id)
        lines = _record(c, server, request_id, claimed, plan, observers)
        row = Row(request_id, str(request_id), plan.claimed, {plan.looking: 1}, plan.timeout)
        out[i] = Created(row, claimed.device.name, (item.text, *lines))
    if claims:
        # By the primary key only: a scan would lock the rows of a concurrent batch (a deadlock).
        c.execute(
            f"UPDATE requests{' FORCE INDEX (PRIMARY)' if c.mysql else ''} SET state = ?, state_timeout = ?,"
            f" state_counters = ?, assigned_at = ? WHERE id IN ({', '.join('?' * len(claims))})",
            [plan.claimed, plan.timeout, plan.counters, plan.now, *claims],
        )
    return out


def _images(c: Cursor, server: str, names: set[str]) -> tuple[dict[str, tuple[int, bool, tuple[int, ...]]], int]:
    """name -> (id, reusable, hardware types with a PXE config) of the images named, and this
    server's id, in one SELECT."""
    rows = c.execute(
        "SELECT i.name, i.id, i.can_reuse, (SELECT GROUP_CONCAT(p.hardware_type_id) FROM image_pxe_configs p"
        " WHERE p.image_id = i.id), (SELECT id FROM imaging_servers WHERE fqdn = ?) FROM images i"
        f" WHERE i.name IN ({', '.join('?' * len(names))})", [server, *sorted(names)]).fetchall()
    found = {r[0]: (int(r[1]), bool(r[2]), tuple(sorted(selection.id_list(r[3])))) for r in rows}
    server_id = rows[0][4] if rows else None
    return found, int(server_id) if server_id is not None else catalog.server_id(c, server)


def _record(
    c: Cursor, server: str, request_id: int, claimed: selection.Claimed, plan: _Plan, observers: Sequence[Any]
) -> tuple[str, ...]:
    """The log lines, history entries and journal entries of the two transitions, as
    :meth:`mozpool.statemachine.core.Machine.goto` records them (the second is fed by
    ``finding_device``'s entry action, after its counter went to 1); the lines, for the
    daemon's log.  tests/broker/test_intake.py holds the two ways to the same rows."""
    device = claimed.device
    assert device is not None
    _, said = machine.planned(plan.looking, CLAIMED, device.name)
    if any(level in ("warn", "error") for _, level in said):
        raise RuntimeError("a claim's behaviour logs a warning: it needs the machine's own path")
    held = [machine.lost_line(name) for name in claimed.lost] + [message for message, _ in said]
    looking, entered = f"entering state {plan.looking}", f"entering state {plan.claimed}"
    note_claim(c, request_id, None)  # the first transition is the moment before the claim
    machine_rows.record_state(
        c, "request", request_id, plan.looking, plan.now, [looking], CREATED,
        history.Entry(history.REQUEST, request_id, plan.precise, CREATED, plan.looking, FIND, server), observers,
    )
    note_claim(c, request_id, device.id)
    machine_rows.record_state(
        c, "request", request_id, plan.claimed, plan.now, [entered], plan.looking,
        history.Entry(history.REQUEST, request_id, plan.precise, plan.looking, plan.claimed, CLAIMED, server,
                      {"counter": plan.looking, "count": 1}),
        observers, held=[("statemachine", line, plan.now) for line in held],
    )
    return (looking, *held, entered)
