"""Imaging results from a device to the request that claimed it (state-machines.md 1.4).

The result is written on the claim row first, so the request machine's polling finds it even if
the notification is lost; the notification itself is fire-and-forget: in-process for a request of
this server (when the broker gave us its event callable), else one bounded HTTP POST to the
request's server, never retried.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from mozpool.logconfig import Logger

from mozpool.httpcalls import TreqLike, post_following
from mozpool.lifeguard import queries
from mozpool.serverurl import base_url
from mozpool.statemachine.core import Machine

log = Logger()

#: Bound on one notification (connect, answer and body), on the injected clock.
NOTIFY_TIMEOUT = 30.0

#: ``request_events(request_id, event, body)``: the broker's in-process event entry point.
RequestEvents = Callable[[int, str, dict[str, Any]], Any]


class ImagingResults:
    """Sends imaging results; keeps the notifications in flight so a caller can wait for them."""

    def __init__(
        self,
        clock: IReactorTime,
        server_fqdn: str,
        http_client: TreqLike | None = None,
        request_events: RequestEvents | None = None,
        timeout: float = NOTIFY_TIMEOUT,
    ) -> None:
        self.clock = clock
        self.server_fqdn = server_fqdn
        self.http_client = http_client
        self.request_events = request_events
        self.timeout = timeout
        self.inflight: set[defer.Deferred[None]] = set()

    async def send(self, m: Machine, result: str) -> None:
        """Record ``result`` (awaited, inside the machine's operation), then notify (not awaited)."""
        await m.log(f"sending imaging result '{result}' to Mozpool")
        found = await m.db.runInteraction(queries.record_imaging_result, m.id, result)
        if found is None:
            return
        request_id, server = found
        if server is None:
            await m.log(f"request {request_id} has no known imaging server; result not delivered", "warn")
            return
        d = defer.Deferred.fromCoroutine(self._deliver(m, request_id, server, result))
        self.inflight.add(d)
        d.addBoth(self._done, d)

    def _done(self, _: Any, d: "defer.Deferred[None]") -> None:
        self.inflight.discard(d)

    async def drain(self) -> None:
        """Wait for every notification in flight (tests, shutdown); each is bounded."""
        while self.inflight:
            await defer.DeferredList(list(self.inflight), consumeErrors=True)

    async def _deliver(self, m: Machine, request_id: int, server: str, result: str) -> None:
        body = {"imaging_result": result}
        if server == self.server_fqdn and self.request_events is not None:
            try:
                await defer.maybeDeferred(self._call_in_process, request_id, body)
            except Exception as e:
                log.failure("in-process imaging result for request {request_id} failed", request_id=request_id)
                await m.log(f"delivering imaging result to request {request_id} failed: {e}", "warn")
            return
        if self.http_client is None:
            await m.log(f"no HTTP client: imaging result for request {request_id} not delivered", "warn")
            return
        url = f"{base_url(server)}/api/request/{request_id}/event/lifeguard_finished/"
        data = json.dumps(body).encode("utf-8")
        try:
            code, final = await post_following(self.http_client, self.clock, url, data, self.timeout)
        except defer.TimeoutError:
            await m.log(f"imaging result to {url}: no answer within {self.timeout:g} s", "warn")
        except Exception as e:
            await m.log(f"imaging result to {url} failed: {e}", "warn")
        else:
            if code != 200:
                await m.log(f"imaging result to {final}: HTTP {code}", "warn")

    def _call_in_process(self, request_id: int, body: dict[str, Any]) -> Any:
        assert self.request_events is not None
        outcome = self.request_events(request_id, "lifeguard_finished", dict(body))
        if hasattr(outcome, "__await__") and not isinstance(outcome, defer.Deferred):
            return defer.ensureDeferred(outcome)
        return outcome
