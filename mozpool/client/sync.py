"""The blocking client, for plain scripts and CI harnesses::

    from mozpool.client.sync import Client

    with Client(servers=["http://imaging1:8010"]).device("any", image="android", duration=3600) as dev:
        run_tests(dev.fqdn)                       # returned on exit, also when this raises

It runs in the caller's process and thread: each call is a blocking ``http.client`` exchange
with socket timeouts, so it starts no thread and needs no reactor.  (The daemon's no-threads,
no-blocking rule is about the daemon's reactor; a script that calls a blocking client chose to
block.)  What is sent and how answers are read is :mod:`mozpool.client.api`, which server is
tried when is :mod:`mozpool.client.plans`, as for the Twisted client.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import time
from typing import Any, Callable, Generator, Iterable, Iterator, TypeVar
from urllib.parse import urlsplit

from mozpool.client import api, config, errors, plans
from mozpool.client.base import DEFAULT_WAIT, BaseClient, Device, ProgressCallback
from mozpool.client.plans import POLL_INTERVAL, Attempt, Context, Pause, Reply, Unreachable
from mozpool.client.sse import Event, SSEParser

T = TypeVar("T")

#: An event stream silent this long (three missed keep-alives) is taken for dead and reopened.
STREAM_IDLE = 45.0
#: Seconds before reopening an event stream the server closed.
REOPEN_DELAY = 1.0

Connect = Callable[[str, str, float], http.client.HTTPConnection]


def drive(plan: plans.Plan[T], perform: Callable[[Attempt], Reply | Unreachable],
          pause: Callable[[float], None]) -> Generator[Any, None, T]:
    """Run a plan with blocking ``perform`` and ``pause``, yielding what it emits; returns its
    result.  An exception raised while performing an instruction (^C during a wait), or thrown
    into this generator at an emitted value, is thrown into the plan, so its clean-up (returning
    a request) runs."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plans.advance(plan, value, error)
        except plans.Finished as done:
            return done.result  # type: ignore[no-any-return]
        value, error = None, None
        try:
            if isinstance(step, Attempt):
                value = perform(step)
            elif isinstance(step, Pause):
                pause(step.seconds)
            else:
                yield step.value
        except BaseException as e:
            error = e


class Client(BaseClient):
    """The MozPool API over a list of servers, one blocking call at a time.  Arguments left out
    come from the environment or ``~/.config/mozpool/client.ini`` (:mod:`mozpool.client.config`).

    ``connect(scheme, netloc, timeout)`` makes the ``http.client`` connection (tests pass a fake);
    ``sleep`` waits between two polls of a request."""

    def __init__(self, servers: str | Iterable[str] | None = None, *, token: str | None = None,
                 timeout: float | None = None, attempt_timeout: float | None = None, assignee: str | None = None,
                 ca_certs: str | None = None, config_file: str | None = None,
                 settings: config.ClientConfig | None = None, rng: Any = None, connect: Connect | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        settings = settings or config.load(servers, token, timeout, attempt_timeout, assignee, ca_certs, config_file)
        super().__init__(settings, Context(settings, clock, rng))
        self._connect = connect or self._connection
        self._sleep = sleep
        self._clock = clock
        self._tls: ssl.SSLContext | None = None

    # --- running plans ----------------------------------------------------------------------

    def _run(self, plan: plans.Plan[Any], emit: Callable[[Any], None] | None = None) -> Any:
        steps = drive(plan, self._perform, self._sleep)
        error: BaseException | None = None
        while True:
            try:
                emitted = steps.throw(error) if error is not None else next(steps)
            except StopIteration as stop:
                return stop.value
            error = None
            if emit is not None:
                try:
                    emit(emitted)
                except BaseException as e:
                    error = e

    def _connection(self, scheme: str, netloc: str, timeout: float) -> http.client.HTTPConnection:
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context(cafile=self.config.ca_certs)
            return http.client.HTTPSConnection(netloc, timeout=timeout, context=self._tls)
        if scheme == "http":
            return http.client.HTTPConnection(netloc, timeout=timeout)
        raise ValueError(f"not an http or https URL: {scheme}://{netloc}")

    def _perform(self, attempt: Attempt) -> Reply | Unreachable:
        """One exchange, all of it (connecting, sending, reading) within ``attempt.timeout``."""
        deadline = self._clock() + attempt.timeout
        parts = urlsplit(attempt.url)
        try:
            conn = self._connect(parts.scheme, parts.netloc, attempt.timeout)
            conn.connect()
        except (OSError, http.client.HTTPException, ValueError) as e:
            return Unreachable(_reason(e, attempt.timeout))
        sock = conn.sock  # the response keeps using it after http.client lets go of it
        keep_open = False
        try:
            _bound(sock, deadline, self._clock)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request(attempt.method, target, body=attempt.body, headers=attempt.headers)
            _bound(sock, deadline, self._clock)
            response = conn.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            if attempt.stream and response.status == 200:
                keep_open = True
                return Reply(response.status, headers, stream=_Stream(conn, sock, response, self._clock))
            chunks = []
            while True:
                _bound(sock, deadline, self._clock)
                chunk = response.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return Reply(response.status, headers, b"".join(chunks))
        except (OSError, http.client.HTTPException) as e:
            return Unreachable(_reason(e, attempt.timeout), sent=True)
        finally:
            if not keep_open:
                conn.close()

    # --- the context manager ----------------------------------------------------------------

    @contextlib.contextmanager
    def device(self, device: str = "any", *, image: str, duration: int, environment: str | None = None,
               boot_config: dict[str, Any] | None = None, assignee: str | None = None,
               priority: int | None = None, queue_timeout: int | None = None,
               timeout: float = DEFAULT_WAIT, on_progress: ProgressCallback | None = None,
               interval: float = POLL_INTERVAL) -> Iterator[Device]:
        """Request a device, wait until it is ready, hand it over, and return it when the block
        ends, also when it raises (a failure to return it then is added to that exception's
        notes rather than hiding it).  ``timeout`` bounds the wait for ready; ``priority`` and
        ``queue_timeout`` go to the server (see :meth:`BaseClient.request`)."""
        handover = self.request_ready(device, image, duration, environment=environment, boot_config=boot_config,
                                      assignee=assignee, priority=priority, queue_timeout=queue_timeout,
                                      timeout=timeout, on_progress=on_progress, interval=interval)
        try:
            yield Device(self, handover)
        except BaseException as e:
            self._run(plans.release_after_failure(self.context, handover.request, e))
            raise
        self.return_request(handover.request)

    # --- streams ----------------------------------------------------------------------------

    def events(self, devices: Iterable[str] = (), requests: Iterable[int] = (), types: Iterable[str] = (),
               last_event_id: int | None = None, timeout: float | None = None) -> Iterator[Event]:
        """The pool's events as they happen (README "Following the pool live"), for ``timeout``
        seconds (None: until the caller stops).  A dropped or silent stream is reopened where it
        left off.  The stream is opened before this returns, so nothing after the call is
        missed; :class:`errors.NotFound` for a server without an event stream."""
        devices, requests, types = tuple(devices), tuple(int(r) for r in requests), tuple(types)
        deadline = None if timeout is None else self._clock() + timeout
        parser = SSEParser()
        parser.last_id = last_event_id

        def open_stream() -> "_Stream":
            call = api.events(devices, requests, types, parser.last_id)
            reply: Reply = self._run(plans.exchange(self.context, call))
            return reply.stream  # type: ignore[no-any-return]

        def read(stream: _Stream) -> Iterator[Event]:
            while True:
                try:
                    for chunk in stream.chunks(deadline):
                        yield from parser.feed(chunk)
                finally:
                    stream.close()
                left = None if deadline is None else deadline - self._clock()
                if left is not None and left <= 0:
                    return
                self._sleep(REOPEN_DELAY if left is None else min(REOPEN_DELAY, left))
                stream = open_stream()

        return read(open_stream())

    def follow_log(self, name: str, limit: int = 100, timeout: float | None = None,
                   interval: float = POLL_INTERVAL) -> Iterator[dict[str, Any]]:
        """A device's latest ``limit`` log entries, then each new one as it is written, for
        ``timeout`` seconds (None: until the caller stops).  Follows the event stream where the
        server has one and polls the log otherwise (an older server)."""
        deadline = None if timeout is None else self._clock() + timeout
        try:
            stream: Iterator[Event] | None = self.events(devices=[name], types=["device_log"], timeout=timeout)
        except errors.NotFound:
            stream = None  # opened first, so no entry falls between the log and the stream
        entries: list[dict[str, Any]] = self.device_log(name, limit=limit)

        def follow() -> Iterator[dict[str, Any]]:
            after = max((int(e["id"]) for e in entries), default=None)
            yield from entries
            if stream is None:
                yield from drive(plans.poll_log(self.context, name, after, interval, deadline),
                                 self._perform, self._sleep)
                return
            for event in stream:
                entry = plans.log_entry(event)
                if entry is not None and (after is None or entry["id"] > after):
                    after = entry["id"]
                    yield entry

        return follow()


class _Stream:
    """An open event-stream response, read as it arrives."""

    def __init__(self, conn: http.client.HTTPConnection, sock: Any, response: http.client.HTTPResponse,
                 clock: Callable[[], float]) -> None:
        self.conn = conn
        self.sock = sock
        self.response = response
        self.clock = clock

    def chunks(self, deadline: float | None) -> Iterator[bytes]:
        """What arrives, until the server ends the stream, it stays silent for
        :data:`STREAM_IDLE` seconds, or ``deadline`` passes."""
        while True:
            idle = STREAM_IDLE if deadline is None else min(STREAM_IDLE, deadline - self.clock())
            if idle <= 0:
                return
            self.sock.settimeout(idle)
            try:
                data = self.response.read1(65536)
            except (OSError, http.client.HTTPException):
                return
            if not data:
                return
            yield data

    def close(self) -> None:
        self.response.close()
        self.conn.close()


def _bound(sock: Any, deadline: float, clock: Callable[[], float]) -> None:
    """What is left of the exchange's time becomes the socket's timeout for its next step."""
    left = deadline - clock()
    if left <= 0:
        raise TimeoutError("timed out")
    if sock is not None:
        sock.settimeout(left)


def _reason(e: BaseException, timeout: float) -> str:
    """One line for why a server was not reached."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError):
        return plans.no_answer(timeout)
    if isinstance(e, socket.gaierror):
        return f"unknown host ({e.strerror})"
    if isinstance(e, ssl.SSLError):
        return f"TLS failed ({e.reason or e})"
    if isinstance(e, http.client.RemoteDisconnected):
        return "closed the connection without answering"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
