"""The daemon's log events to syslog as RFC 5424 messages (``[logging] syslog``).

Sending never blocks the reactor and never fails the caller: UDP and the local ``/dev/log``
datagram socket are fire-and-forget (the local socket is connected again when the syslog daemon
restarts or comes late); TCP (RFC 6587 octet counting) reconnects by itself and keeps a bounded
backlog while the server is away, dropping the oldest and counting them.  A
device's or request's lines carry it as structured data: ``[mozpool@32473 device="panda-0003"]``.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from datetime import datetime, timezone
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES = {
    LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3, LogLevel.critical: 2,
}
#: RFC 5612's enterprise number for documentation: an SD-ID of our own that clashes with nobody's.
SD_ID = "mozpool@32473"
#: The event keys that become structured data.
SD_KEYS = ("device", "request", "source", "server")
#: Messages kept for a TCP server that is away.
TCP_BACKLOG = 10_000
#: The largest datagram sent (longer messages are cut).
MAX_DATAGRAM = 8192
#: Seconds before connecting to a local syslog socket that was not there again: the first wait,
#: doubled after each failure up to the second.
UNIX_RETRY = (1.0, 30.0)


def _sd_value(value: Any) -> str:
    text = str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _token(text: str, limit: int) -> str:
    """A header field: printable ASCII without spaces, or the nil value."""
    clean = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return clean or "-"


def structured(event: dict[str, Any]) -> dict[str, str]:
    """The event's device, request and the like (a state machine's line says which it is)."""
    fields = {k: str(event[k]) for k in SD_KEYS if event.get(k) is not None}
    kind, key = event.get("kind"), event.get("key")
    if kind in ("device", "request") and key is not None:
        fields.setdefault(kind, str(key))
    return fields


def format_5424(event: dict[str, Any], facility: int, hostname: str, procid: int) -> bytes:
    severity = SEVERITIES.get(event.get("log_level", LogLevel.info), 6)
    when = datetime.fromtimestamp(float(event.get("log_time", 0.0)), timezone.utc)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    namespace = str(event.get("log_namespace", ""))
    msgid = _token(namespace.rsplit(".", 1)[-1], 32)
    fields = structured(event)
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in fields.items()) + "]" if fields else "-"
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += ": " + failure.getErrorMessage()
    text = " ".join(text.split())  # one line
    head = f"<{facility * 8 + severity}>1 {stamp} {_token(hostname, 255)} mozpool {procid} {msgid} {sd} "
    return (head + text).encode("utf-8")[:MAX_DATAGRAM]


class _Datagrams(protocol.DatagramProtocol):
    """UDP to ``address`` (None: not resolved yet, messages are lost)."""

    def __init__(self, address: Any) -> None:
        self.address = address

    def send(self, data: bytes) -> None:
        if self.transport is not None and self.address is not None:
            try:
                self.transport.write(data, self.address)
            except OSError:
                pass  # the server is away: the message is lost, the daemon carries on

    def connectionRefused(self) -> None:
        pass


class _Connected(protocol.ConnectedDatagramProtocol):
    """One connection of :class:`LocalSocket` (a new one each time: an old port's clean-up runs
    later and must not touch the new one)."""

    noisy = False

    def __init__(self) -> None:
        self.failed = False
        self.refused = False

    def connectionFailed(self, reason: Any) -> None:
        self.failed = True

    def connectionRefused(self) -> None:
        self.refused = True


class LocalSocket:
    """``unix:PATH`` (``/dev/log``): a connected unix datagram socket.  A syslog daemon that
    restarts makes a new socket at PATH, and sends on the old connection are refused: the socket
    is then connected again at once and the message sent once more.  While nobody listens at
    PATH (not started yet, stopped) messages are lost, as over UDP, and connecting is tried again
    after :data:`UNIX_RETRY` seconds, backing off."""

    def __init__(self, reactor: Any, path: str) -> None:
        self.reactor = reactor
        self.path = path
        self.link: _Connected | None = None
        self.port: Any = None
        self.timer: Any = None
        self.wait = UNIX_RETRY[0]
        self.running = False

    def start(self) -> None:
        self.running = True
        self.connect()

    def stop(self) -> Any:
        """Stop retrying and close the socket; a Deferred when a socket is being closed."""
        self.running = False
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        return self._drop()

    def connect(self) -> None:
        self.timer = None
        if not self.running or self.link is not None:
            return
        link = _Connected()
        try:
            port = self.reactor.connectUNIXDatagram(self.path, link)
        except Exception:  # e.g. a path too long for a socket address
            link.failed = True
        if link.failed or link.transport is None:
            if self.timer is None:
                self.timer = self.reactor.callLater(self.wait, self.connect)
                self.wait = min(self.wait * 2, UNIX_RETRY[1])
            return
        self.link, self.port = link, port
        self.wait = UNIX_RETRY[0]

    def send(self, data: bytes) -> None:
        if self.link is None or self._write(data):
            return
        self._drop()  # the syslog daemon restarted (or went away): connect again, and send once more
        self.connect()
        if self.link is not None and not self._write(data):
            self._drop()
            self.connect()

    def _write(self, data: bytes) -> bool:
        """False when the connection is no good any more."""
        link = self.link
        assert link is not None and link.transport is not None
        try:
            link.transport.write(data)
        except OSError:
            return False
        except Exception:
            return True  # too long for the socket: this message is lost, the connection is fine
        return not link.refused

    def _drop(self) -> Any:
        port, self.link, self.port = self.port, None, None
        return port.stopListening() if port is not None else None


class _Stream(protocol.Protocol):
    def __init__(self, sender: "TCPSender") -> None:
        self.sender = sender

    def connectionMade(self) -> None:
        self.sender.connected(self)

    def connectionLost(self, reason: Any) -> None:
        self.sender.disconnected(self)


class TCPSender:
    """Octet-counted messages over a connection that a ClientService keeps up."""

    def __init__(self, reactor: Any, host: str, port: int) -> None:
        self.service = ClientService(
            TCP4ClientEndpoint(reactor, host, port, timeout=10),
            protocol.Factory.forProtocol(lambda: _Stream(self)),
            retryPolicy=lambda attempt: min(2.0 ** attempt, 30.0),
            clock=reactor,
        )
        self.backlog: deque[bytes] = deque(maxlen=TCP_BACKLOG)
        self.dropped = 0
        self.stream: _Stream | None = None

    def send(self, data: bytes) -> None:
        framed = b"%d %s" % (len(data), data)
        if self.stream is not None and self.stream.transport is not None:
            self.stream.transport.write(framed)
            return
        if len(self.backlog) == self.backlog.maxlen:
            self.dropped += 1
        self.backlog.append(framed)

    def connected(self, stream: _Stream) -> None:
        self.stream = stream
        while self.backlog and stream.transport is not None:
            stream.transport.write(self.backlog.popleft())

    def disconnected(self, stream: _Stream) -> None:
        if self.stream is stream:
            self.stream = None


@implementer(ILogObserver)
class SyslogObserver(Service):
    """An observer of the daemon's log that sends every event to a syslog server."""

    def __init__(self, reactor: Any, target: str, facility: str = "local0", hostname: str | None = None) -> None:
        if facility not in FACILITIES:
            raise ValueError(f"unknown syslog facility {facility!r}; one of {', '.join(FACILITIES)}")
        self.reactor = reactor
        self.target = target
        self.facility = FACILITIES[facility]
        self.hostname = hostname or socket.gethostname()
        self.procid = os.getpid()
        self.kind, self.address = parse_target(target)
        self._sender: Any = None
        self._port: Any = None
        self._sending = False

    def startService(self) -> None:
        super().startService()
        if self.kind == "udp":
            host, port = self.address
            self._sender = _Datagrams((host, port))
            self._port = self.reactor.listenUDP(0, self._sender, interface="::" if ":" in host else "")
            if not _is_ip(host):  # a name: sent to once it resolves (messages before are lost)
                self._sender.address = None
                self.reactor.resolve(host).addCallbacks(
                    lambda ip: setattr(self._sender, "address", (ip, port)), lambda f: None)
        elif self.kind == "unix":
            self._sender = LocalSocket(self.reactor, self.address)
            self._sender.start()
        else:
            host, port = self.address
            self._sender = TCPSender(self.reactor, host, port)
            self._sender.service.startService()

    def stopService(self) -> Any:
        super().stopService()
        if self.kind == "tcp" and self._sender is not None:
            return self._sender.service.stopService()
        if self.kind == "unix" and self._sender is not None:
            return self._sender.stop()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening() if hasattr(port, "stopListening") else None
        return None

    def __call__(self, event: dict[str, Any]) -> None:
        if self._sender is None or self._sending:
            return  # not started, or a log line written while sending one
        self._sending = True
        try:
            self._sender.send(format_5424(event, self.facility, self.hostname, self.procid))
        except Exception:
            pass  # logging must never take the daemon down
        finally:
            self._sending = False


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def parse_target(target: str) -> tuple[str, Any]:
    """``unix:/dev/log``, ``udp:HOST:PORT`` or ``tcp:HOST:PORT`` -> (kind, address)."""
    kind, _, rest = target.partition(":")
    if kind == "unix" and rest:
        return "unix", rest
    if kind in ("udp", "tcp"):
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return kind, ("127.0.0.1" if host == "localhost" else host, int(port))
    raise ValueError(f"[logging] syslog must be unix:PATH, udp:HOST:PORT or tcp:HOST:PORT, not {target!r}")
