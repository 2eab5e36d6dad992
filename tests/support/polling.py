"""Waiting on the running reactor for something that happens on real sockets and timers."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import reactor, task
from twisted.trial.unittest import FailTest


async def until(condition: Callable[[], Any], what: str, within: float = 10.0, step: float = 0.01) -> None:
    """Poll ``condition`` every ``step`` s until it holds; fail after ``within`` s.  Loopback
    events (and a simulated device's timers) arrive late on a busy machine: a test waits for
    the event itself, bounded, never for a fixed time."""
    give_up = reactor.seconds() + within
    while not condition():
        if reactor.seconds() > give_up:
            raise FailTest(f"gave up after {within:g} s waiting for {what}")
        await task.deferLater(reactor, step, lambda: None)
