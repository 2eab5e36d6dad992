"""How the ``mozpool`` command shows things to people: aligned tables, key/value blocks, states
in colour, and a progress line that rewrites itself on a terminal.  Colour only on a terminal
and never with ``$NO_COLOR`` (https://no-color.org); ``--json`` output does not come here."""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable, Iterable, Sequence, TextIO

from mozpool.client.plans import Progress

_RESET = "\x1b[0m"
_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33"}
_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def wants_colour(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    return bool(getattr(stream, "isatty", lambda: False)()) and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


class Style:
    """Paints text when colour is on, leaves it alone when not."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def paint(self, text: str, style: str | None) -> str:
        if not self.colour or style is None:
            return text
        return f"\x1b[{_CODES[style]}m{text}{_RESET}"

    def state(self, state: str | None) -> str:
        """A request's or device's state: green when ready, red when failed, dim when over."""
        text = state or "-"
        if text == "ready":
            return self.paint(text, "green")
        if text.startswith("failed_"):
            return self.paint(text, "red")
        if text in ("closed", "expired", "-"):
            return self.paint(text, "dim")
        return self.paint(text, "yellow")


def width(text: str) -> int:
    """Columns taken on screen: colour escapes take none."""
    return len(_ESCAPE.sub("", text))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], style: Style) -> str:
    """Columns aligned on their widest cell, two spaces apart; the last column is not padded."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [width(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [v + " " * (widths[i] - width(v)) if i < len(values) - 1 else v for i, v in enumerate(values)]
        return "  ".join(padded).rstrip()

    return "\n".join([style.paint(line(list(headers)), "bold")] + [line(r) for r in cells])


def block(pairs: Sequence[tuple[str, Any]], style: Style) -> str:
    """``key  value`` lines, keys aligned."""
    keys = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{style.paint(k.ljust(keys), 'bold')}  {'-' if v is None or v == '' else v}" for k, v in pairs)


def log_line(entry: dict[str, Any], style: Style) -> str:
    source = str(entry.get("source") or "")
    return f"{style.paint(str(entry.get('timestamp') or ''), 'dim')}  {source:<12} {entry.get('message', '')}"


def utc_day(now: float) -> str:
    """``YYYY-MM-DD`` of a POSIX time, in UTC (the API's times are UTC)."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


class ProgressLine:
    """Shows a wait's :class:`Progress` on ``stream``: one line rewritten in place on a
    terminal, a new line per change elsewhere (a CI log).  ``wall`` (POSIX time) tells which
    day it is, so an ETA on another day shows its date."""

    def __init__(self, stream: TextIO, style: Style, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.stream = stream
        self.style = style
        self.clock = clock
        self.wall = wall
        self.started = clock()
        self.in_place = bool(getattr(stream, "isatty", lambda: False)())
        self.open = False

    def show(self, progress: Progress) -> None:
        text = f"[{self.clock() - self.started:5.0f}s] {progress.line(self.style.state, utc_day(self.wall()))}"
        if self.in_place:
            self.stream.write("\r\x1b[K" + text)
            self.open = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False
