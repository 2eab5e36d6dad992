"""The Automat table itself, read against state-machines.md 2.3 without a database."""

from __future__ import annotations

from typing import Any

from automat import NoTransition
from twisted.trial.unittest import SynchronousTestCase

from mozpool.broker import machine

CLOSABLE = {"new", "finding_device", "contact_lifeguard", "contacting_lifeguard", "pending", "ready", "expired"}

#: (state, input) pairs the spec accepts; every other pair must be refused.
EXPECTED = (
    {(s, "close") for s in CLOSABLE}
    | {(s, "expire") for s in CLOSABLE}
    | {
        ("new", "find_device"),
        ("finding_device", "timeout"),
        ("contact_lifeguard", "timeout"),
        ("contacting_lifeguard", "lifeguard_contacted"),
        ("contacting_lifeguard", "timeout"),
        ("pending", "lifeguard_finished"),
        ("pending", "timeout"),
    }
)

INPUTS = ("find_device", "close", "expire", "lifeguard_contacted", "lifeguard_finished", "timeout")


class _M:
    """Stands in for the persisted machine: anything called gives a coroutine we close unrun."""

    def __getattr__(self, name: str) -> Any:
        async def nothing(*a: Any, **kw: Any) -> None:
            return None

        return nothing


class TableShape(SynchronousTestCase):
    def accepted(self) -> set[tuple[str, str]]:
        kind = machine.RequestKind(contact=lambda *a: None, rng=None)  # type: ignore[arg-type]
        found = set()
        for state, typed in machine.STATES.items():
            for name in INPUTS:
                inputs = machine.RequestMachine(machine.RequestCore(_M(), kind), typed)  # type: ignore[arg-type]
                args = (None,) if name == "lifeguard_finished" else ()
                try:
                    step = getattr(inputs, name)(*args)
                except NoTransition:
                    continue
                step.close()
                found.add((state, name))
        return found

    def test_exactly_the_spec_table(self) -> None:
        self.assertEqual(self.accepted(), EXPECTED)

    def test_every_state_restores_by_name(self) -> None:
        kind = machine.RequestKind(contact=lambda *a: None, rng=None)  # type: ignore[arg-type]
        for state, typed in machine.STATES.items():
            inputs = machine.RequestMachine(machine.RequestCore(_M(), kind), typed)  # type: ignore[arg-type]
            self.assertEqual(inputs.state(), state)

    def test_timeouts_of_2_3(self) -> None:
        self.assertEqual(
            {s: t for s, t in machine.TIMEOUTS.items() if t is not None},
            {"finding_device": 10, "contact_lifeguard": 0, "contacting_lifeguard": 30, "pending": 60},
        )
        self.assertEqual(set(machine.TIMEOUTS), set(machine.STATES))
        self.assertEqual(machine.RequestKind.unknown_state, "expired")
