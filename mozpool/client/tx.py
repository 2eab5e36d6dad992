"""The Twisted client: every call of :class:`~mozpool.client.base.BaseClient` returns a Deferred,
made with treq on the reactor given, each bounded in time on that reactor's clock::

    client = MozpoolClient(["http://imaging1:8010"], reactor=reactor)
    async with client.device("any", image="android", duration=3600) as dev:
        await run_tests(dev.fqdn)                 # returned on exit, also when this raises

What is sent and how answers are read is :mod:`mozpool.client.api`, which server is tried when
is :mod:`mozpool.client.plans`, as for the blocking client (:mod:`mozpool.client.sync`).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Callable, Iterable

from twisted.internet import defer, error as neterror, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web import _newclient
from twisted.web.client import HTTPConnectionPool

from mozpool.client import api, config, plans
from mozpool.client.base import DEFAULT_WAIT, BaseClient, Device, ProgressCallback
from mozpool.client.plans import POLL_INTERVAL, Attempt, Context, Pause, Reply, Unreachable
from mozpool.client.sse import Event, SSEParser

#: An event stream silent this long (three missed keep-alives) is taken for dead and reopened.
STREAM_IDLE = 45.0
#: Seconds before reopening an event stream that ended.
REOPEN_DELAY = 1.0

#: Failures that mean the call never reached the server.
_NOT_SENT = (neterror.ConnectError, neterror.ConnectingCancelledError, _newclient.RequestNotSent)


def _default_http(reactor: Any, pool: Any, ca_certs: str | None) -> Any:
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    from mozpool.endpoints import tls_policy

    return HTTPClient(Agent(reactor, contextFactory=tls_policy(ca_certs), pool=pool))


class MozpoolClient(BaseClient):
    """The MozPool API over a list of servers, on ``reactor``.  Arguments left out come from the
    environment or ``~/.config/mozpool/client.ini`` (:mod:`mozpool.client.config`).

    ``http``: a treq ``HTTPClient`` (or anything with its ``request`` method), e.g. a
    ``StubTreq`` in tests; by default one over an Agent on ``reactor`` with a persistent pool.
    ``rng``: the ``random.Random`` that orders the servers."""

    def __init__(self, servers: str | Iterable[str] | None = None, *, reactor: Any, http: Any = None,
                 token: str | None = None, timeout: float | None = None, attempt_timeout: float | None = None,
                 assignee: str | None = None, ca_certs: str | None = None, config_file: str | None = None,
                 settings: config.ClientConfig | None = None, rng: Any = None) -> None:
        settings = settings or config.load(servers, token, timeout, attempt_timeout, assignee, ca_certs, config_file)
        super().__init__(settings, Context(settings, reactor.seconds, rng))
        self.reactor = reactor
        #: this client's own connection pool (None when ``http`` was given)
        self.pool: HTTPConnectionPool | None = None
        if http is None:
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            http = _default_http(reactor, self.pool, settings.ca_certs)
        self.http = http

    def close(self) -> defer.Deferred[None]:
        """Close the connections this client keeps open; fires when they are closed."""
        return self.pool.closeCachedConnections() if self.pool is not None else defer.succeed(None)

    # --- running plans ----------------------------------------------------------------------

    def _run(self, plan: plans.Plan[Any], emit: Callable[[Any], None] | None = None) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._drive(plan, emit))

    async def _drive(self, plan: plans.Plan[Any], emit: Callable[[Any], None] | None) -> Any:
        """The Twisted twin of :func:`mozpool.client.sync.drive`: a cancellation (or a
        callback's error) is thrown into the plan, so its clean-up runs."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = plans.advance(plan, value, error)
            except plans.Finished as done:
                return done.result
            value, error = None, None
            try:
                if isinstance(step, Attempt):
                    value = await self._perform(step)
                elif isinstance(step, Pause):
                    await task.deferLater(self.reactor, step.seconds, lambda: None)
                elif emit is not None:
                    emit(step.value)
            except BaseException as e:
                error = e

    async def _perform(self, attempt: Attempt) -> Reply | Unreachable:
        """One exchange, answer and body, cancelled after ``attempt.timeout`` seconds."""
        exchange = defer.Deferred.fromCoroutine(self._exchange(attempt))
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            exchange.cancel()

        timer: IDelayedCall = self.reactor.callLater(attempt.timeout, expire)
        try:
            return await exchange
        except Exception as e:
            if not timed_out and _is_a(e, defer.CancelledError, neterror.ConnectingCancelledError):
                raise defer.CancelledError() from e  # the caller cancelled: not a server's fault
            sent = not _is_a(e, *_NOT_SENT)
            if timed_out:
                return Unreachable(plans.no_answer(attempt.timeout), sent=sent)
            return Unreachable(_reason(e), sent=sent)
        finally:
            if timer.active():
                timer.cancel()

    async def _exchange(self, attempt: Attempt) -> Reply:
        response = await self.http.request(attempt.method, attempt.url, data=attempt.body, headers=attempt.headers,
                                           allow_redirects=False, unbuffered=attempt.stream)
        headers = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                   for k, v in response.headers.getAllRawHeaders()}
        if attempt.stream and response.code == 200:
            return Reply(response.code, headers, stream=response)
        return Reply(response.code, headers, await response.content())

    # --- the context manager ----------------------------------------------------------------

    def device(self, device: str = "any", *, image: str, duration: int, environment: str | None = None,
               boot_config: dict[str, Any] | None = None, assignee: str | None = None,
               priority: int | None = None, queue_timeout: int | None = None,
               timeout: float = DEFAULT_WAIT, on_progress: ProgressCallback | None = None,
               interval: float = POLL_INTERVAL) -> "_Held":
        """``async with client.device(...) as dev``: request a device, wait until it is ready,
        hand it over (:class:`~mozpool.client.base.Device`; its ``renew`` returns a Deferred),
        and return it when the block ends, also when it raises.  ``priority`` and
        ``queue_timeout`` go to the server (see :meth:`BaseClient.request`)."""
        return _Held(self, plans.acquire(self.context, device, image, duration, environment=environment,
                                         boot_config=boot_config, assignee=assignee, priority=priority,
                                         queue_timeout=queue_timeout, timeout=timeout, interval=interval),
                     on_progress)

    # --- the event stream -------------------------------------------------------------------

    def events(self, on_event: Callable[[Event], None], devices: Iterable[str] = (), requests: Iterable[int] = (),
               types: Iterable[str] = (), last_event_id: int | None = None) -> defer.Deferred[None]:
        """Call ``on_event`` with each of the pool's events as it happens, until the Deferred
        is cancelled (or no server answers).  A dropped or silent stream is reopened where it
        left off; :class:`errors.NotFound` for a server without an event stream."""
        return defer.Deferred.fromCoroutine(self._follow(on_event, tuple(devices), tuple(requests), tuple(types),
                                                         last_event_id))

    async def _follow(self, on_event: Callable[[Event], None], devices: tuple[str, ...], requests: tuple[int, ...],
                      types: tuple[str, ...], last_event_id: int | None) -> None:
        parser = SSEParser()
        parser.last_id = last_event_id
        while True:
            reply = await self._run(plans.exchange(self.context, api.events(devices, requests, types, parser.last_id)))
            reader = _StreamReader(parser, on_event, self.reactor)
            reply.stream.deliverBody(reader)
            try:
                await reader.done
            except defer.CancelledError:
                reader.stop()
                raise
            await task.deferLater(self.reactor, REOPEN_DELAY, lambda: None)


class _Held:
    """The asynchronous context manager of :meth:`MozpoolClient.device`."""

    def __init__(self, client: MozpoolClient, plan: plans.Plan[plans.Handover],
                 on_progress: ProgressCallback | None) -> None:
        self.client = client
        self.plan = plan
        self.on_progress = on_progress
        self.handover: plans.Handover | None = None

    async def __aenter__(self) -> Device:
        self.handover = await self.client._run(self.plan, self.on_progress)
        return Device(self.client, self.handover)

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self.handover is not None
        if error is None:
            await self.client.return_request(self.handover.request)
        else:
            await self.client._run(plans.release_after_failure(self.client.context, self.handover.request, error))


class _StreamReader(Protocol):
    """Feeds an event-stream body to the parser; ``done`` fires when the body ends, or after
    :data:`STREAM_IDLE` seconds of silence (the connection is then dropped)."""

    def __init__(self, parser: SSEParser, on_event: Callable[[Event], None], clock: IReactorTime) -> None:
        self.parser = parser
        self.on_event = on_event
        self.clock = clock
        self.done: defer.Deferred[None] = defer.Deferred()
        self.watchdog: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.watchdog = self.clock.callLater(STREAM_IDLE, self.stop)

    def dataReceived(self, data: bytes) -> None:
        if self.watchdog is not None and self.watchdog.active():
            self.watchdog.reset(STREAM_IDLE)
        for event in self.parser.feed(data):
            self.on_event(event)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.watchdog is not None and self.watchdog.active():
            self.watchdog.cancel()
        if not self.done.called:
            self.done.callback(None)

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def _is_a(e: BaseException, *kinds: type[BaseException]) -> bool:
    """``e`` is one of ``kinds``, or a failed response whose every reason is."""
    if isinstance(e, _newclient.ResponseNeverReceived) and e.reasons:
        return all(f.check(*kinds) for f in e.reasons)
    return isinstance(e, kinds)


def _reason(e: BaseException) -> str:
    """One line for why a server was not reached."""
    if isinstance(e, neterror.ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, neterror.DNSLookupError):
        return "unknown host"
    if isinstance(e, _newclient.ResponseNeverReceived):
        why = "; ".join(str(f.value) for f in e.reasons if str(f.value))
        return f"no answer ({why})" if why else "closed the connection without answering"
    if isinstance(e, neterror.ConnectError):
        return f"cannot connect ({e.__class__.__name__})"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
