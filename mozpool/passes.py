"""Work done in passes whenever something may have changed: the request queue's matching and the
warm pool's imaging both run this way."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mozpool.logconfig import Logger

log = Logger()


class Passes:
    """Runs :meth:`step` when woken.  Passes never overlap: a wake-up during a pass runs one more
    pass after it, however many wake-ups came; a failing pass is logged and the next wake-up runs
    again."""

    #: what a pass is called in the log
    what = "pass"

    def __init__(self) -> None:
        self._running: defer.Deferred[None] | None = None
        self._again = False
        self.stopped = False
        self.passes = 0

    async def step(self) -> bool:
        """One pass; True when another should follow at once."""
        raise NotImplementedError

    def wake(self, *_: Any) -> None:
        if self.stopped:
            return
        if self._running is not None:
            self._again = True
            return
        self._running = defer.Deferred.fromCoroutine(self._loop())

    async def _loop(self) -> None:
        try:
            while not self.stopped:
                self._again = False
                self.passes += 1
                try:
                    more = await self.step()
                except Exception as e:
                    log.warn("{what} failed: {error}", what=self.what, error=e)
                    more = False
                if not (self._again or more):
                    break
        finally:
            self._running = None

    @property
    def busy(self) -> bool:
        return self._running is not None

    def idle(self) -> "defer.Deferred[None]":
        async def wait() -> None:
            while self._running is not None:
                await self._running

        return defer.Deferred.fromCoroutine(wait())

    def stop(self) -> "defer.Deferred[None]":
        self.stopped = True
        return self.idle()
