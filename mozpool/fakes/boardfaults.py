"""Whole-board faults for the simulated pool (issue 15, item 7): ``--fail-board BOARD:MODE[:P]``
and ``[fakes] fail_board``, so an operator can watch fault isolation work.

BOARD is the simulated board's number (1 for the first 32 devices, 2 for the next 32, ...) or
its name (``relay_boards.name``, e.g. ``localhost-40001``, or its address ``localhost:40001``;
a simulated smart plug by its name too).  MODE:

- ``hang``: the board accepts connections and never answers (the relay client's deadlines expire);
- ``dead``: nothing listens on its port (connections are refused);
- ``flaky[:P]``: each connection is dropped unanswered with probability P (default 0.5);
  relay boards only;
- ``ok``: no fault (to clear one at run time).

A fault may last a while only: ``@FROM-UNTIL`` (nominal seconds after the pool starts, scaled
by the time scale like every simulated delay; either end may be left out), e.g.
``--fail-board 1:hang@600-1800`` hangs board 1 ten minutes in and frees it twenty minutes later.

At run time (the manhole's ``fakes.pool``): ``pool.set_board_fault("1", "hang")``, then
``pool.set_board_fault("1", "ok")``.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("hang", "dead", "flaky", "ok")


@dataclass(frozen=True)
class BoardFault:
    board: str
    mode: str
    probability: float = 1.0
    #: nominal seconds after the pool starts (None: from the start / for ever)
    start: float | None = None
    end: float | None = None


def _window(text: str, whole: str) -> tuple[float | None, float | None]:
    first, dash, last = text.partition("-")
    try:
        start = float(first) if first else None
        end = float(last) if last else None
    except ValueError:
        raise ValueError(f"--fail-board: bad @FROM-UNTIL in {whole!r}") from None
    if (start is not None and start < 0) or (start is not None and end is not None and end <= start):
        raise ValueError(f"--fail-board: bad @FROM-UNTIL in {whole!r}")
    if not dash and end is None and start is None:
        raise ValueError(f"--fail-board: bad @FROM-UNTIL in {whole!r}")
    return start, end


def parse_board_fault(text: str) -> BoardFault:
    """``BOARD:MODE[:P][@FROM[-UNTIL]]`` (a board address may hold a colon itself: MODE is the
    last word that is a mode).  ValueError names what is wrong."""
    spec, at, window = text.strip().partition("@")
    start, end = _window(window, text) if at else (None, None)
    parts = spec.split(":")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in MODES:
            board, mode, rest = ":".join(parts[:i]), parts[i], parts[i + 1:]
            break
    else:
        raise ValueError(f"--fail-board wants BOARD:hang|dead|flaky[:P], not {text!r}")
    if not board or len(rest) > 1 or (rest and mode != "flaky"):
        raise ValueError(f"--fail-board wants BOARD:hang|dead|flaky[:P], not {text!r}")
    p = 0.5 if mode == "flaky" else 1.0
    if rest:
        try:
            p = float(rest[0])
        except ValueError:
            raise ValueError(f"--fail-board: bad probability in {text!r}") from None
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"--fail-board: the probability must be within 0..1 in {text!r}")
    return BoardFault(board, mode, p, start, end)


def parse_board_faults(texts: list[str] | str) -> list[BoardFault]:
    """Several, from the command line (a list) or the configuration (separated by commas or spaces)."""
    if isinstance(texts, str):
        texts = [t for t in texts.replace(",", " ").split() if t]
    return [parse_board_fault(t) for t in texts]
