"""The Automat table itself, read against state-machines.md 2.3 (with issue 14's queue) without a
database: every (state, input) pair the table accepts and the state it goes to."""

from __future__ import annotations

import inspect
from typing import Any

from automat import NoTransition
from twisted.trial.unittest import SynchronousTestCase

from mozpool.broker import machine

CLOSABLE = ("new", "finding_device", "contact_lifeguard", "contacting_lifeguard", "pending", "ready", "expired")

#: (state, input) -> target: the whole table, as the spec and issue 14 describe it.
EXPECTED: dict[tuple[str, str], str] = {
    **{(s, "close"): "closed" for s in CLOSABLE},
    **{(s, "expire"): "closed" for s in CLOSABLE},
    ("new", "find_device"): "finding_device",
    ("finding_device", "device_claimed"): "contact_lifeguard",
    ("finding_device", "device_offered"): "finding_device",
    ("finding_device", "timeout"): "finding_device",
    ("finding_device", "device_held"): "closed",
    ("finding_device", "impossible"): "failed_device_not_found",
    ("finding_device", "server_unreachable"): "failed_device_not_found",
    ("finding_device", "device_broken"): "failed_bad_device",
    ("finding_device", "queue_timed_out"): "failed_device_busy",
    ("contact_lifeguard", "timeout"): "contacting_lifeguard",
    ("contacting_lifeguard", "lifeguard_contacted"): "pending",
    ("contacting_lifeguard", "lifeguard_refused"): "contacting_lifeguard",
    ("contacting_lifeguard", "timeout"): "contacting_lifeguard",
    ("contacting_lifeguard", "contact_given_up"): "failed_device_not_found",
    ("contacting_lifeguard", "device_gone"): "finding_device",
    ("contacting_lifeguard", "device_prepared"): "ready",
    ("pending", "imaging_complete"): "ready",
    ("pending", "bad_image"): "finding_device",
    ("pending", "bad_image_again"): "failed_bad_image",
    ("pending", "bad_device"): "finding_device",
    ("pending", "bad_device_named"): "failed_bad_device",
    ("pending", "unexpected_result"): "finding_device",
    ("pending", "timeout"): "pending",
    ("pending", "imaging_overdue"): "finding_device",
}

INPUTS = [name for name in vars(machine.RequestInputs) if not name.startswith("_") and name != "state"]


class _M:
    """Stands in for the persisted machine: anything called gives a coroutine we close unrun."""

    def __getattr__(self, name: str) -> Any:
        async def nothing(*a: Any, **kw: Any) -> None:
            return None

        return nothing


def _kind() -> machine.RequestKind:
    return machine.RequestKind(contact=lambda *a: None, rng=None)  # type: ignore[arg-type]


class TableShape(SynchronousTestCase):
    def transitions(self) -> dict[tuple[str, str], str]:
        found = {}
        for state, typed in machine.STATES.items():
            for name in INPUTS:
                inputs = machine.RequestMachine(machine.RequestCore(_M(), _kind()), typed)  # type: ignore[arg-type]
                params = inspect.signature(getattr(machine.RequestInputs, name)).parameters
                args = ["x"] * (len(params) - 1)
                try:
                    step = getattr(inputs, name)(*args)
                except NoTransition:
                    continue
                step.close()
                found[(state, name)] = inputs.state()
        return found

    def test_exactly_the_table(self) -> None:
        self.assertEqual(self.transitions(), EXPECTED)

    def test_reentering_rows_are_rows(self) -> None:
        for state, name in machine.REENTERING:
            self.assertEqual(EXPECTED[(state, name)], state)

    def test_every_state_restores_by_name(self) -> None:
        for state, typed in machine.STATES.items():
            inputs = machine.RequestMachine(machine.RequestCore(_M(), _kind()), typed)  # type: ignore[arg-type]
            self.assertEqual(inputs.state(), state)

    def test_timeouts_of_2_3(self) -> None:
        self.assertEqual(
            {s: t for s, t in machine.TIMEOUTS.items() if t is not None},
            {"finding_device": 60, "contact_lifeguard": 0, "contacting_lifeguard": 30, "pending": 60},
        )
        self.assertEqual(tuple(machine.TIMEOUTS), tuple(machine.STATES))
        self.assertEqual(machine.RequestKind.unknown_state, "expired")

    def test_final_states_accept_nothing(self) -> None:
        for state in machine.FAILED_STATES + ("closed",):
            self.assertEqual([k for k in EXPECTED if k[0] == state], [])
