"""A machine's Automat table as data: for each state, the inputs it accepts, where each goes and
the rule (the transition's behaviour) that runs, so the explain endpoint (mozpool.health.explain)
says what a machine waits for and what its timeout will do from the table itself, not from a
second description of it.

Automat keeps the table of a built ``TypeMachine`` in ``__automat_automaton__`` (what its own
``asDigraph`` reads); that attribute is the one thing here that is not public API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Inputs that are not events: ``persisted``/``state`` answer the state's name.
NOT_EVENTS = ("persisted", "state")


@dataclass(frozen=True)
class Row:
    """One accepted (state, input) of the table."""

    state: str
    input: str
    target: str
    #: when the input comes: its docstring's first paragraph in the machine's inputs Protocol
    when: str
    #: what the transition's behaviour does: its docstring's first paragraph, or its name
    does: str

    def public(self) -> dict[str, str]:
        return {"input": self.input, "to": self.target, "when": self.when, "does": self.does}


def _first_line(thing: Any) -> str:
    """The first paragraph of ``thing``'s docstring, on one line."""
    doc = (getattr(thing, "__doc__", None) or "").strip()
    return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())


def _does(outputs: Any) -> str:
    words = []
    for output in outputs:
        method = getattr(output, "method", output)
        name = getattr(method, "__name__", "")
        if name in ("", "output", "goto", "<lambda>", "constant"):
            continue
        doc = _first_line(method)
        words.append(doc if doc and name.startswith("_") else name.lstrip("_"))
    return "; ".join(w for w in words if w)


def rows(machine: Any, inputs: Any = None) -> dict[str, dict[str, Row]]:
    """state -> input -> :class:`Row` of a built Automat ``TypeMachine``; ``inputs`` is its
    inputs Protocol, whose docstrings say when each input comes."""
    automaton = machine.__automat_automaton__
    table: dict[str, dict[str, Row]] = {}
    for state, given, target, outputs in automaton.allTransitions():
        if given in NOT_EVENTS:
            continue
        source, to = getattr(state, "name", str(state)), getattr(target, "name", str(target))
        when = _first_line(getattr(inputs, given, None)) if inputs is not None else ""
        table.setdefault(source, {})[given] = Row(source, given, to, when, _does(outputs))
    return table
