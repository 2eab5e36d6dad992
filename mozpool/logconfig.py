"""Where the daemon's log goes, and how much of it: one :class:`Hygiene` filter in front of every
``mozpool`` logger (a level threshold, and repeats rate-limited with a count of what was
suppressed), and optional observers for syslog (RFC 5424) and a JSON lines file.

Modules log through :func:`Logger` instead of ``twisted.logger.Logger`` so that the filter sees
their events before any observer does (twistd installs its own observer after the service is
built, so the filter cannot sit in front of that one).
"""

from __future__ import annotations

import inspect
import re
from string import Formatter
from typing import Any

from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEvent,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.logger import Logger as _TwistedLogger
from zope.interface import implementer

#: Field values that tell messages apart as they are (immutable, and written as they are).
_PLAIN = frozenset({str, int, float, bool, type(None)})
#: Repeats of one message (same namespace, format and level) passed in one window.
REPEATS_PER_WINDOW = 5
WINDOW_SECONDS = 60.0


@implementer(ILogObserver)
class Hygiene:
    """Drops events below ``level``; passes the first :data:`REPEATS_PER_WINDOW` of a repeating
    message per window, counts the rest, and says how many were suppressed when the message
    next appears in a new window (or at :meth:`flush`).  Failures and errors always pass."""

    def __init__(self, downstream: Any = None, level: LogLevel = LogLevel.info, limit_repeats: bool = False) -> None:
        self.downstream = downstream
        self.level = level
        #: on while a daemon runs (off in unit tests, which log the same lines test after test)
        self.limit_repeats = limit_repeats
        #: key -> [window start, passed, suppressed]
        self._windows: dict[tuple[str, Any, str], list[float]] = {}
        #: a format -> the names of the fields it uses
        self._fields: dict[str, tuple[str, ...]] = {}

    def _forward(self, event: dict[str, Any]) -> None:
        (self.downstream or globalLogPublisher)(event)

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < self.level:
            return
        if not self.limit_repeats or level >= LogLevel.error or "log_failure" in event:
            self._forward(event)
            return
        key = (event.get("log_namespace", ""), self._message(event), level.name)
        now = float(event.get("log_time", 0.0))
        window = self._windows.get(key)
        if window is None or now - window[0] >= WINDOW_SECONDS:
            if window is not None and window[2]:
                self._summary(key, level, int(window[2]), now)
            if len(self._windows) > 10_000:
                self._windows.clear()
            self._windows[key] = window = [now, 0, 0]
        if window[1] < REPEATS_PER_WINDOW:
            window[1] += 1
            self._forward(event)
        else:
            window[2] += 1

    def _message(self, event: dict[str, Any]) -> Any:
        """What makes two events the same message: the format and the values of the fields it
        names, when they are plain values (cheaper than formatting every event, and a busy pool
        logs a line per transition); else the formatted text."""
        fmt = event.get("log_format")
        fields = self._field_names(fmt) if isinstance(fmt, str) else None
        if fields is not None:
            values = tuple(event.get(f) for f in fields)
            if all(type(v) in _PLAIN for v in values):
                return (fmt, *values)
        return formatEvent(event)

    def _field_names(self, fmt: str) -> tuple[str, ...] | None:
        """The names of the event fields ``fmt`` uses (None: it does not parse)."""
        fields = self._fields.get(fmt)
        if fields is None:
            try:
                # "{a.b}", "{a[0]}" and twisted.logger's "{a()}" all use the field "a"
                fields = tuple(re.split(r"[.\[(]", name, maxsplit=1)[0] for _, name, _, _ in Formatter().parse(fmt) if name)
            except ValueError:
                return None
            if len(self._fields) > 1000:
                self._fields.clear()
            self._fields[fmt] = fields
        return fields

    def _summary(self, key: tuple[str, Any, str], level: LogLevel, count: int, now: float) -> None:
        namespace, message, _ = key
        if isinstance(message, tuple):  # (format, *values of its fields): formatted again
            fmt, *values = message
            message = formatEvent({"log_format": fmt, **dict(zip(self._field_names(fmt) or (), values))})
        self._forward({
            "log_namespace": namespace, "log_level": level, "log_time": now,
            "log_format": "(suppressed {count} more of: {message})", "count": count, "message": message,
        })

    def flush(self, now: float) -> None:
        """Report every pending count (at shutdown)."""
        for key, window in list(self._windows.items()):
            if window[2]:
                self._summary(key, LogLevel.levelWithName(key[2]), int(window[2]), now)
                window[2] = 0


#: The filter every mozpool logger emits through.
hygiene = Hygiene()


def Logger(namespace: str | None = None) -> _TwistedLogger:
    """A ``twisted.logger.Logger`` for the calling module whose events pass :data:`hygiene`."""
    if namespace is None:
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        namespace = caller.f_globals.get("__name__", "mozpool") if caller is not None else "mozpool"
    return _TwistedLogger(namespace=namespace, observer=hygiene)


def json_observer(path: str) -> Any:
    """One JSON object per line (twisted.logger's own format), for log shippers."""
    handle = open(path, "a", encoding="utf-8")
    observer = jsonFileLogObserver(handle)
    observer.close = handle.close  # type: ignore[attr-defined]
    return observer


def level_named(name: str) -> LogLevel:
    try:
        return LogLevel.levelWithName(name.strip().lower())
    except Exception:
        raise ValueError(f"log level must be one of debug, info, warn, error, critical, not {name!r}") from None
