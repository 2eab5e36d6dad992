"""Reading a Server-Sent Events stream (``GET /api/events``) incrementally: bytes in, events out,
whatever the chunking.  No I/O, so both clients use it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """One event: ``id`` (None when the event had none), ``type`` and its decoded ``data`` (the
    text itself when it is not JSON)."""

    id: int | None
    type: str
    data: Any


class SSEParser:
    """The event-stream format of the HTML standard, as far as the pool's stream uses it:
    ``id``, ``event``, ``data`` (several lines joined), comments and ``retry`` ignored."""

    def __init__(self) -> None:
        self._pending = b""
        self._fields: dict[str, str] = {}
        self._data: list[str] = []
        #: the id of the last event seen: what a reconnect sends as ``Last-Event-ID``
        self.last_id: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        self._pending += chunk
        out: list[Event] = []
        while True:
            cut = _line_end(self._pending)
            if cut is None:
                return out
            line, self._pending = self._pending[: cut[0]], self._pending[cut[1]:]
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                out.append(event)

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name in ("id", "event"):
            self._fields[name] = value
        return None

    def _dispatch(self) -> Event | None:
        fields, data = self._fields, self._data
        self._fields, self._data = {}, []
        event_id: int | None = None
        if fields.get("id", "").isdigit():
            event_id = self.last_id = int(fields["id"])
        if not data:
            return None  # a block without data (e.g. only ``retry:``) is no event
        text = "\n".join(data)
        try:
            decoded: Any = json.loads(text)
        except ValueError:
            decoded = text
        return Event(event_id, fields.get("event") or "message", decoded)


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """(end of the first line, start of the next) for ``\\n``, ``\\r\\n`` or ``\\r``; None if
    the buffer holds no complete line (a lone trailing ``\\r`` may yet be a ``\\r\\n``)."""
    n, r = buffer.find(b"\n"), buffer.find(b"\r")
    if n < 0 and r < 0:
        return None
    if r < 0 or 0 <= n < r:
        return n, n + 1
    if r + 1 == len(buffer):
        return None
    return (r, r + 2) if buffer[r + 1: r + 2] == b"\n" else (r, r + 1)
