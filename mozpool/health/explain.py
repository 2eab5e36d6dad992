"""Explain (issue 15): why a device or a request is in its state, and what happens next.

``GET /api/device/{device}/why/`` and ``/api/request/{id}/why/`` answer, for the person on call:

- ``state`` and ``since`` (the newest transition that changed it);
- ``rule``: the transition that put it there -- from which state, on which input (``cause``), the
  structured ``reason`` recorded with it, a sentence, and the rows of the machine's own Automat
  table that were followed (the input's row, and for a decision the outcome's row);
- ``counters`` with their limits and the count at which the machine gives up;
- ``failure`` (devices) and ``evidence``: the log lines that support it;
- ``next``: the deadline (absolute, and seconds from now), what the timeout will do (the table's
  row and the outcomes it can lead to), and the events the state waits for, with a sentence.

Everything comes from the database (the row, the state history, the logs, the boots) and from
the machines' tables (:mod:`mozpool.statemachine.table`), so any server explains any object.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from mozpool.bmm.interfaces import PowerConfigError
from mozpool.bmm.power import parse_location
from mozpool.broker import machine as requests_machine
from mozpool.db import history
from mozpool.db.pool import Database
from mozpool.errors import UnknownObject
from mozpool.health import queries
from mozpool.health.interfaces import IHealth
from mozpool.health.telemetry import PHASES, BootTelemetry, _seconds
from mozpool.lifeguard import machine as devices_machine
from mozpool.statemachine.table import Row, rows
from mozpool.timeutil import apitime, deadline_text

#: The device machine's table, the inputs that come from outside (events and LifeGuard's
#: notices) and the outcomes the machine gives itself after a decision.
DEVICE_TABLE = rows(devices_machine.DeviceMachine, devices_machine.DeviceInputs)
DEVICE_EXTERNAL = frozenset(devices_machine.EVENTS) | frozenset(getattr(devices_machine, "NOTICES", ()))
DEVICE_OUTCOMES = frozenset(getattr(devices_machine, "OUTCOMES", ()))
REQUEST_TABLE = rows(requests_machine.RequestMachine, requests_machine.RequestInputs)
REQUEST_EXTERNAL = frozenset(requests_machine.EVENTS) | frozenset(getattr(requests_machine, "INTERNAL_EVENTS", ()))
REQUEST_OUTCOMES = frozenset(
    i for inputs in REQUEST_TABLE.values() for i in inputs if i not in REQUEST_EXTERNAL and i != "timeout"
)
#: Events the request kind classifies into outcome inputs before the table sees them:
#: event -> (the state that takes it, the outcomes it becomes).  LifeGuard's result is one.
REQUEST_CLASSIFIED = {
    "lifeguard_finished": ("pending", ("imaging_complete", "bad_image", "bad_image_again", "bad_device",
                                       "bad_device_named", "unexpected_result")),
}


def _device_limits() -> dict[str, tuple[int, int]]:
    """counter -> (limit, the count at which the device gives up: above the limit)."""
    return {name: (limit, limit + 1) for name, limit in devices_machine.LIMITS.items()}


def _request_limits(named: bool) -> dict[str, tuple[int, int]]:
    """counter -> (limit, the count at which the request gives up: at the limit)."""
    m = requests_machine
    found = {"contacting_lifeguard": (m.CONTACT_LIMIT, m.CONTACT_LIMIT), "bad-images": (m.BAD_IMAGE_LIMIT, m.BAD_IMAGE_LIMIT)}
    if not named:
        found["pending"] = (m.ANY_PENDING_LIMIT, m.ANY_PENDING_LIMIT)
    return found


def rule(table: Mapping[str, Mapping[str, Row]], outcomes: frozenset[str], latest: dict[str, Any] | None) -> dict[str, Any] | None:
    """The transition that put the machine in its state, with the table rows it followed."""
    if latest is None:
        return None
    old, new, cause = latest["from"], latest["to"], latest["cause"]
    followed: list[dict[str, str]] = []
    here = table.get(old or "", {})
    first = here.get(cause)
    if first is not None:
        followed.append(first.public())
    if first is None or first.target != new:
        # a decision (or an entry action) answered an outcome, whose row leads on
        followed += [r.public() for i, r in sorted(here.items()) if i in outcomes and r.target == new]
    return {
        "from": old, "to": new, "cause": cause, "at": latest["timestamp"], "server": latest["server"],
        "history_id": latest["id"], "reason": latest["reason"], "rows": followed,
        "text": history.describe(cause, old, latest["reason"]) if old is not None else "created",
    }


def counters(values: Mapping[str, int], limits: Mapping[str, tuple[int, int]], timeout_row: Row | None) -> list[dict[str, Any]]:
    """The machine's counters, and those its timeout would increment, with their limits."""
    names = set(values)
    if timeout_row is not None:
        names |= {n for n in limits if f"incr {n}" in timeout_row.does}
    out = []
    for name in sorted(names):
        limit, fails_at = limits.get(name, (None, None))
        out.append({"name": name, "value": int(values.get(name, 0)), "limit": limit, "gives_up_at": fails_at})
    return out


def next_steps(
    table: Mapping[str, Mapping[str, Row]], external: frozenset[str], outcomes: frozenset[str], state: str,
    deadline: str | None, now: float, classified: Mapping[str, tuple[str, tuple[str, ...]]] | None = None,
) -> dict[str, Any]:
    """What the machine waits for and what its timeout will do, and when."""
    here = table.get(state, {})
    waiting = [r.public() for i, r in sorted(here.items()) if i in external]
    for event, (where, becomes) in sorted((classified or {}).items()):
        if where == state:
            leads = [here[o] for o in becomes if o in here]
            waiting.append({"input": event, "to": " or ".join(sorted({r.target for r in leads})),
                            "when": "; ".join(f"{r.input}: {r.when}" for r in leads),
                            "does": "read as " + ", ".join(r.input for r in leads)})
    timeout_row = here.get("timeout")
    on_timeout: dict[str, Any] | None = None
    if timeout_row is not None:
        then = [r.public() for i, r in sorted(here.items()) if i in outcomes] if timeout_row.target == state else []
        on_timeout = {**timeout_row.public(), "outcomes": then}
    at = _seconds(deadline)
    in_seconds = None if at is None else round(at - now, 3)
    words = []
    events = [w["input"] for w in waiting if not w["input"].startswith("please_")]
    if events:
        words.append("waits for " + ", ".join(events))
    if in_seconds is not None:
        when = f"in {in_seconds:.0f} s" if in_seconds >= 0 else f"overdue by {-in_seconds:.0f} s: the next poll takes it"
        if on_timeout is None:
            words.append(f"its entry action is retried at {history.api_time(deadline)} ({when})")
        else:
            leads = " or ".join(f"{o['input']} → {o['to']}" for o in on_timeout["outcomes"]) or f"→ {on_timeout['to']}"
            does = f" ({on_timeout['does']})" if on_timeout["does"] else ""
            words.append(f"times out at {history.api_time(deadline)} ({when}){does}: {leads}")
    elif not events:
        people = [w["input"] for w in waiting if w["input"].startswith("please_")]
        words.append("no timer: waits for a person" + (f" ({', '.join(people)} or a state change)" if people
                                                        else " (a state change)"))
    else:
        words.append("no timer")
    return {
        "timeout_at": history.api_time(deadline), "in_seconds": in_seconds, "on_timeout": on_timeout,
        "waiting_for": waiting, "summary": "; ".join(words),
    }


def boot_phases(boot: dict[str, Any] | None) -> dict[str, Any] | None:
    """A device's newest boot: its milestones and the seconds each phase took."""
    if boot is None:
        return None
    phases = {}
    for phase, start, end in PHASES:
        a, b = _seconds(boot.get(start)), _seconds(boot.get(end))
        if a is not None and b is not None:
            phases[phase] = round(b - a, 3)
    out = {k: (history.api_time(v) if k not in ("id", "device", "image", "hardware_type", "server", "outcome") else v)
           for k, v in boot.items()}
    return {**out, "phases": phases}


def _controller(relay_info: str | None, boards: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not relay_info:
        return None
    try:
        where = parse_location(relay_info).controller
    except PowerConfigError:
        return {"relay_info": relay_info, "controller": None, "board": None}
    board = next((b for b in boards if b["fqdn"] == where), None)
    return {"relay_info": relay_info, "controller": where, "board": board}


@implementer(IHealth)
class Explainer:
    """The health layer as the API sees it: explanations, and the boot telemetry's summary."""

    def __init__(self, db: Database, clock: IReactorTime, telemetry: BootTelemetry | None = None) -> None:
        self.db = db
        self.clock = clock
        self.telemetry = telemetry or BootTelemetry(db, clock)

    def explain_device(self, name: str) -> "defer.Deferred[dict[str, Any]]":
        return defer.Deferred.fromCoroutine(self._device(name))

    def explain_request(self, request_id: int) -> "defer.Deferred[dict[str, Any]]":
        return defer.Deferred.fromCoroutine(self._request(request_id))

    def boot_summary(self, hours: int) -> "defer.Deferred[dict[str, Any]]":
        return defer.Deferred.fromCoroutine(self.telemetry.summary(hours))

    async def _device(self, name: str) -> dict[str, Any]:
        facts = await self.db.runInteraction(queries.device_facts, name)
        if facts is None:
            raise UnknownObject(f"unknown device {name}")
        stored = facts["state"]
        state = stored if stored in DEVICE_TABLE or stored in devices_machine.TIMEOUTS else "unknown"
        timeout_row = DEVICE_TABLE.get(state, {}).get("timeout")
        changed = facts["changed"]
        return {
            "device": facts["name"],
            "state": stored,
            "read_as": state,
            "since": changed["timestamp"] if changed else None,
            "imaging_server": facts["imaging_server"],
            "request": None if facts["request_id"] is None else {"id": facts["request_id"], "state": facts["request_state"]},
            "image": facts["image"],
            "next_image": facts["next_image"],
            "hardware_type": facts["hardware_type"],
            "power": _controller(facts["relay_info"], facts["boards"]),
            "rule": rule(DEVICE_TABLE, DEVICE_OUTCOMES, facts["latest"]),
            "counters": counters(facts["counters"], _device_limits(), timeout_row),
            "failure": facts["failure"],
            "evidence": facts["evidence"],
            "next": next_steps(DEVICE_TABLE, DEVICE_EXTERNAL, DEVICE_OUTCOMES, state, facts["timeout"],
                               self.clock.seconds()),
            "last_boot": boot_phases(facts["boot"]),
        }

    async def _request(self, request_id: int) -> dict[str, Any]:
        facts = await self.db.runInteraction(queries.request_facts, request_id)
        if facts is None:
            raise UnknownObject(f"unknown request {request_id}")
        stored = facts["state"]
        state = stored if stored in REQUEST_TABLE or stored in requests_machine.TIMEOUTS else "expired"
        named = facts["requested_device"] != "any"
        timeout_row = REQUEST_TABLE.get(state, {}).get("timeout")
        now = self.clock.seconds()
        steps = next_steps(REQUEST_TABLE, REQUEST_EXTERNAL, REQUEST_OUTCOMES, state, facts["timeout"], now,
                           REQUEST_CLASSIFIED)
        expires = _seconds(facts["expires"])
        closable = "expire" in REQUEST_TABLE.get(state, {})
        steps["expires_at"] = apitime(facts["expires"])
        steps["expires_in_seconds"] = None if expires is None else round(expires - now, 3)
        if closable and expires is not None:
            steps["summary"] += f"; expires at {apitime(facts['expires'])} unless renewed, then closed"
        created, wait = facts["queue"]
        start = _seconds(created)
        if state == "finding_device" and start is not None and wait is not None:
            steps["queue_deadline"] = history.api_time(deadline_text(start + wait))
            steps["summary"] += f"; gives up waiting for a device at {steps['queue_deadline']} (its queue_timeout)"
        changed = facts["changed"]
        return {
            "request": facts["id"],
            "state": stored,
            "read_as": state,
            "since": changed["timestamp"] if changed else None,
            "imaging_server": facts["imaging_server"],
            "requested_device": facts["requested_device"],
            "image": facts["image"],
            "environment": facts["environment"],
            "device": None if facts["device"] is None else {
                "name": facts["device"], "state": facts["device_state"], "imaging_result": facts["imaging_result"]},
            "rule": rule(REQUEST_TABLE, REQUEST_OUTCOMES, facts["latest"]),
            "counters": counters(facts["counters"], _request_limits(named), timeout_row),
            "evidence": facts["evidence"],
            "next": steps,
        }
