"""The manhole: refused beyond loopback, password required, a working console over telnet."""

from __future__ import annotations

from twisted.conch import telnet
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mozpool.config import ConfigError
from mozpool.manhole import check_endpoint, make_manhole_factory


class EndpointChecks(SynchronousTestCase):
    def test_loopback_allowed(self) -> None:
        for e in ("tcp:2222:interface=127.0.0.1", "telnet:tcp:0:interface=127.0.0.1",
                  "ssh:tcp6:2222:interface=\\:\\:1", "unix:/tmp/manhole.sock", "tcp:2222:interface=localhost"):
            check_endpoint(e, allow_remote=False)

    def test_remote_refused_unless_allowed(self) -> None:
        for e in ("tcp:2222", "tcp:2222:interface=0.0.0.0", "telnet:tcp:2222:interface=10.1.2.3",
                  # read as Twisted reads them: the last interface= wins, a positional one counts
                  "tcp:2222:interface=127.0.0.1:interface=0.0.0.0", "tcp:2222:0.0.0.0",
                  "tcp6:2222:interface=\\:\\:1:interface=\\:\\:", "tcp:port=2222:interface=0.0.0.0"):
            self.assertRaises(ConfigError, check_endpoint, e, False)
            check_endpoint(e, allow_remote=True)

    def test_unsupported_endpoint(self) -> None:
        self.assertRaises(ConfigError, check_endpoint, "ssl:2222:interface=127.0.0.1", False)
        self.assertRaises(ConfigError, check_endpoint, "tcp:notaport:interface=127.0.0.1", False)

    def test_password_required(self) -> None:
        self.assertRaises(ConfigError, make_manhole_factory, "ssh", "admin", "", {})


class Collect(telnet.TelnetProtocol):
    """A telnet client that lets the server echo (as telnet(1) does) and collects output."""

    def enableRemote(self, option: bytes) -> bool:
        return True

    def enableLocal(self, option: bytes) -> bool:
        return True

    def __init__(self) -> None:
        self.data = b""
        self.waiting: list[tuple[bytes, defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for item in list(self.waiting):
            if item[0] in self.data:
                self.waiting.remove(item)
                item[1].callback(None)

    def expect(self, marker: bytes) -> "defer.Deferred[None]":
        d: defer.Deferred[None] = defer.Deferred()
        if marker in self.data:
            d.callback(None)
        else:
            self.waiting.append((marker, d))
        return d.addTimeout(10, reactor)


class TelnetConsole(TestCase):
    async def login(self, password: bytes) -> Collect:
        namespace = {"answer": 41}
        port = reactor.listenTCP(0, make_manhole_factory("telnet", "admin", "s3cret", namespace), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        transport = await protocol.ClientCreator(reactor, telnet.TelnetTransport, Collect).connectTCP(
            "127.0.0.1", port.getHost().port
        )
        self.addCleanup(transport.loseConnection)
        client = transport.protocol
        await client.expect(b"Username: ")
        client.transport.write(b"admin\r\n")
        await client.expect(b"Password: ")
        client.transport.write(password + b"\r\n")
        return client

    async def test_console_evaluates_in_namespace(self) -> None:
        client = await self.login(b"s3cret")
        await client.expect(b">>> ")
        client.transport.write(b"answer + 1\r\n")
        await client.expect(b"42")
        self.assertIn(b"42", client.data)

    async def test_wrong_password_refused(self) -> None:
        client = await self.login(b"wrong")
        await client.expect(b"Authentication failed")
        client.data = b""
        client.transport.write(b"admin\r\n")  # asked again; a round trip also ends the echo negotiation
        await client.expect(b"Password: ")
        self.assertNotIn(b">>> ", client.data)
