"""``GET /api/events``: the pool's changes as Server-Sent Events.

One :class:`ChangeFeed` per process follows the shared change journal (``mozpool.db.changes``)
with one poll for all subscribers, so the stream shows every server's devices.  It hands each
change to the :class:`EventHub`, which numbers it, encodes it once, keeps the newest ones for
``Last-Event-ID`` replays and writes it to every subscriber whose filter matches.

Event ids are this process's own counter, not the journal's ids: journal ids become visible
out of order (concurrent transactions, Galera's interleaved auto-increments), and an SSE id
must only grow.  The counter starts at the start time in milliseconds, so an id from an earlier
run of the daemon (or from another server) is never mistaken for one of ours: it falls outside
the window and the client is told to ``reset``.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

from twisted.application.internet import TimerService
from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer, IReactorTime
from mozpool.logconfig import Logger
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from zope.interface import implementer

from mozpool.db import changes
from mozpool.db.pool import Database

log = Logger()

#: Events kept for ``Last-Event-ID`` replays.
REPLAY_WINDOW = 10_000
#: Seconds between keep-alive comments (proxies drop connections silent for about a minute).
KEEPALIVE_INTERVAL = 15.0
#: Bytes a subscriber may leave unread (written while its connection pushes back) before it is
#: dropped: a slow or vanished client must not hold memory.
MAX_BACKLOG = 1 << 20
#: Seconds between polls of the journal.
POLL_INTERVAL = 0.25
#: How long a journal id seen missing is asked for again before it counts as rolled back.
HOLE_SECONDS = 15.0
#: Missing ids remembered at most (the newest are kept).
MAX_HOLES = 500
#: The client's reconnection delay, in ms.
RETRY_MS = 3000

#: The types a stream can carry: the journal's kinds, and ``reset`` (replay impossible).
RESET = "reset"
TYPES = changes.KINDS + (RESET,)
#: Journal kinds for the pool view alone, never published.
_VIEW_ONLY = frozenset({changes.DEVICE_ROW, changes.RELOAD})


class Event:
    """One published event.  Its wire form is encoded when a stream first needs it: in a burst
    with no stream open (1,000 requests allocated) encoding every event cost a fifth of the
    reactor's time."""

    __slots__ = ("id", "type", "data", "_wire")

    def __init__(self, event_id: int, event_type: str, data: Mapping[str, Any]) -> None:
        self.id = event_id
        self.type = event_type
        self.data = data
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        """The event as written on the wire."""
        if self._wire is None:
            self._wire = encode(self.id, self.type, self.data)
        return self._wire


def encode(event_id: int | None, event_type: str, data: Mapping[str, Any]) -> bytes:
    """One SSE message.  JSON never contains a raw newline, so ``data:`` is one line."""
    text = json.dumps(data if isinstance(data, dict) else dict(data), separators=(",", ":"))
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event_type}\ndata: {text}\n\n".encode("utf-8")


@dataclass(frozen=True)
class EventFilter:
    """Which events a subscriber wants; an empty set means all of that dimension."""

    devices: frozenset[str] = frozenset()
    requests: frozenset[int] = frozenset()
    types: frozenset[str] = frozenset()

    def matches(self, event: Event) -> bool:
        if self.types and event.type not in self.types and event.type != RESET:
            return False
        if self.devices and event.data.get("device") not in self.devices:
            return False
        if self.requests and event.data.get("request") not in self.requests:
            return False
        return True


@implementer(IPushProducer)
class Subscriber:
    """One open stream.  Registered as its request's producer, so it learns when the client
    stops reading; what it writes meanwhile is counted, and past :data:`MAX_BACKLOG` the
    client is dropped."""

    def __init__(self, hub: "EventHub", request: IRequest, wanted: EventFilter) -> None:
        self.hub = hub
        self.request = request
        self.wanted = wanted
        self.paused = False
        self.backlog = 0
        self.closed = False

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.paused:
            self.backlog += len(data)
            if self.backlog > self.hub.max_backlog:
                log.info("dropping an event-stream client that stopped reading ({n} bytes behind)", n=self.backlog)
                self.hub.dropped += 1
                self.close()
                return
        self.request.write(data)

    def close(self) -> None:
        """End the stream from our side."""
        if self.closed:
            return
        self.closed = True
        self.hub.unsubscribe(self)
        transport = getattr(self.request.channel, "transport", None) if hasattr(self.request, "channel") else None
        if transport is not None:
            transport.abortConnection()
        else:
            self.request.finish()

    # IPushProducer
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        self.closed = True
        self.hub.unsubscribe(self)


class EventHub:
    """Numbers, keeps and fans out events; see the module docstring for the ids."""

    def __init__(
        self,
        clock: IReactorTime,
        window: int = REPLAY_WINDOW,
        keepalive: float = KEEPALIVE_INTERVAL,
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        self.clock = clock
        self.keepalive_interval = keepalive
        self.max_backlog = max_backlog
        self.last_id = int(clock.seconds() * 1000)
        self.recent: deque[Event] = deque(maxlen=window)
        self.subscribers: set[Subscriber] = set()
        #: in-process consumers of every event (the request queue's wake-up, the pool view):
        #: called with (type, data) as each event is published; must not raise
        self.listeners: list[Callable[[str, Mapping[str, Any]], None]] = []
        #: counters for /metrics
        self.published = 0
        self.dropped = 0
        self._keepalive: task.LoopingCall | None = None

    def publish(self, event_type: str, data: Mapping[str, Any]) -> Event:
        self.last_id += 1
        self.published += 1
        event = Event(self.last_id, event_type, data)
        self.recent.append(event)
        for listener in self.listeners:
            try:
                listener(event_type, data)
            except Exception:
                log.failure("event listener {listener!r} failed", listener=listener)
        for sub in list(self.subscribers):
            if sub.wanted.matches(event):
                sub.send(event.wire)
        return event

    def missed(self, after: int) -> list[Event] | None:
        """The events since ``after``, or None when that id is not one this window can answer
        for (too old, from another run, or never issued)."""
        if after == self.last_id:
            return []
        oldest = self.recent[0].id if self.recent else self.last_id + 1
        if after < oldest - 1 or after > self.last_id:
            return None
        return [e for e in self.recent if e.id > after]

    def subscribe(self, request: IRequest, wanted: EventFilter, last_event_id: int | None) -> Subscriber:
        """Start a stream: headers, the retry delay, any replay, then live events."""
        sub = Subscriber(self, request, wanted)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")  # nginx: do not buffer the stream
        request.registerProducer(sub, True)
        preamble = [f"retry: {RETRY_MS}\n\n".encode("ascii")]
        if last_event_id is not None:
            missed = self.missed(last_event_id)
            if missed is None:
                preamble.append(encode(self.last_id, RESET, {}))
            else:
                preamble += [e.wire for e in missed if wanted.matches(e)]
        request.write(b"".join(preamble))
        self.subscribers.add(sub)
        request.notifyFinish().addBoth(lambda _: self.unsubscribe(sub))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def keepalive(self) -> None:
        for sub in list(self.subscribers):
            sub.send(b": keep-alive\n\n")

    def start(self) -> None:
        if self._keepalive is None:
            self._keepalive = task.LoopingCall(self.keepalive)
            self._keepalive.clock = self.clock
            self._keepalive.start(self.keepalive_interval, now=False)

    def stop(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None
        for sub in list(self.subscribers):
            sub.closed = True
            self.unsubscribe(sub)
            sub.request.unregisterProducer()
            sub.request.finish()


class EventStream(Resource):
    """The resource one ``GET /api/events`` renders: it never finishes by itself."""

    isLeaf = True

    def __init__(self, hub: EventHub, wanted: EventFilter, last_event_id: int | None) -> None:
        super().__init__()
        self.hub = hub
        self.wanted = wanted
        self.last_event_id = last_event_id

    def render_GET(self, request: IRequest) -> Any:
        self.hub.subscribe(request, self.wanted, self.last_event_id)
        return server.NOT_DONE_YET

    def render_HEAD(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        return b""


class IChangeFollower(Protocol):
    """What the feed hands each poll's changes to besides the hub: the pool view."""

    async def follow(self, found: list[changes.Change], gap: bool) -> None:
        """Take the changes of one poll (possibly none); ``gap``: some may have been missed
        (a hole given up, the feed's start), so read everything again.  Raises when the
        database could not be read; the follower keeps what it still has to read."""


class ChangeFeed(TimerService):
    """Follows the change journal for this process: one poll every ``interval`` for every
    subscriber, each change published to the hub and handed to the ``view``.

    Ids the journal skipped are remembered as holes and asked for again for
    :data:`HOLE_SECONDS`: on MySQL a transaction that took its id earlier may commit later.
    A hole given up may be a change missed (or a rolled-back transaction: no way to tell), so
    the view is told of a gap.  Polls never overlap: the timer and :meth:`catch_up` share one."""

    def __init__(
        self, db: Database, hub: EventHub, clock: IReactorTime, interval: float = POLL_INTERVAL,
        view: IChangeFollower | None = None,
    ) -> None:
        # TimerService waits for each tick's Deferred; a tick never fails, so the loop never dies.
        super().__init__(interval, lambda: self.catch_up().addErrback(lambda _: None))
        self.clock = clock
        self.db = db
        self.hub = hub
        self.view = view
        #: the highest journal id read; None until the first poll says where the journal ends
        self.position: int | None = None
        #: journal id -> when it was first seen missing
        self.holes: dict[int, float] = {}
        self._failing = False
        #: changes may have been missed since the view last read everything
        self._gap = True
        self._polling = False
        self._waiters: list[defer.Deferred[None]] = []
        #: the error of the last poll, None when it read the journal (and the view its rows)
        self.last_error: BaseException | None = None
        #: when a poll last succeeded (clock seconds), None before the first
        self.last_success: float | None = None

    def catch_up(self) -> "defer.Deferred[None]":
        """Fires once a poll begun after this call has ended, so what the journal held at the
        call has reached the hub and the view; fails as that poll failed.  Calls made during a
        poll share the next one."""
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(waiter)
        if not self._polling:
            defer.Deferred.fromCoroutine(self._drain())
        return waiter

    async def _drain(self) -> None:
        self._polling = True
        try:
            while self._waiters:
                waiters, self._waiters = self._waiters, []
                await self.poll()
                error = self.last_error
                for w in waiters:
                    if error is None:
                        w.callback(None)
                    else:
                        w.errback(error)
        finally:
            self._polling = False

    def startService(self) -> None:
        self.hub.start()
        super().startService()

    def stopService(self) -> Any:
        stopped = super().stopService()
        self.hub.stop()
        return stopped

    async def poll(self) -> int:
        """Read and publish what is new, and hand it to the view; how many events were
        published.  (Errors are logged once per outage and kept in :attr:`last_error`.)"""
        taken: list[changes.Change] = []
        try:
            if self.position is None:
                self.position, missing = await self.db.runInteraction(changes.start_at, MAX_HOLES)
                now = self.clock.seconds()
                self.holes = {i: now for i in missing}
                self._gap = True
            total = 0
            while True:
                before = self.position
                found = await self.db.runInteraction(changes.read_after, before, list(self.holes))
                total += self._take(found, taken)
                if sum(1 for ch in found if ch.id > before) < changes.READ_BATCH:
                    break  # a full batch means there may be more
            if self.view is not None:
                gap, self._gap = self._gap, False
                try:
                    await self.view.follow(taken, gap)
                except BaseException:
                    self._gap = self._gap or gap  # the view keeps what it had to read, not a gap
                    raise
        except Exception as e:
            if not self._failing:
                log.warn("event feed cannot read the change journal ({error}); retrying", error=e)
            self._failing = True
            self.last_error = e
            return 0
        if self._failing:
            log.info("event feed reading the change journal again")
            self._failing = False
        self.last_error = None
        self.last_success = self.clock.seconds()
        return total

    def _take(self, found: Iterable[changes.Change], taken: list[changes.Change] | None = None) -> int:
        assert self.position is not None
        now = self.clock.seconds()
        published = 0
        for ch in found:
            if ch.id in self.holes:
                del self.holes[ch.id]
            elif ch.id > self.position:
                if ch.id - self.position - 1 > MAX_HOLES:
                    self._gap = True  # more missing ids than are remembered
                for missing in range(max(self.position + 1, ch.id - MAX_HOLES), ch.id):
                    self.holes[missing] = now
                self.position = ch.id
            else:
                continue  # already published
            if taken is not None:
                taken.append(ch)
            if ch.kind in _VIEW_ONLY:
                continue
            self.hub.publish(ch.kind, ch.data)
            published += 1
        for hole, seen in list(self.holes.items()):
            if now - seen > HOLE_SECONDS:
                del self.holes[hole]
                self._gap = True
        if len(self.holes) > MAX_HOLES:
            for hole in sorted(self.holes)[: len(self.holes) - MAX_HOLES]:
                del self.holes[hole]
            self._gap = True
        return published
