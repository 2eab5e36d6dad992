"""TLS: the API on an ``ssl:`` endpoint, and this server's outgoing calls verify certificates."""

from __future__ import annotations

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

from mozpool.endpoints import listening_interface, tls_policy
from tests.support.tls import make_ca


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        return b"hello"


class OutgoingVerification(TestCase):
    async def setUp(self) -> None:
        self.key, self.cert, self.ca = make_ca(self.mktemp())
        endpoint = serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}")
        self.port = await endpoint.listen(server.Site(Hello()))
        self.addCleanup(self.port.stopListening)
        self.url = f"https://127.0.0.1:{self.port.getHost().port}/"

    def client(self, ca: str | None) -> HTTPClient:
        pool = HTTPConnectionPool(reactor, persistent=False)
        return HTTPClient(Agent(reactor, contextFactory=tls_policy(ca), pool=pool))

    async def test_trusted_ca_is_accepted(self) -> None:
        response = await self.client(self.ca).get(self.url, timeout=10)
        self.assertEqual(await treq.content(response), b"hello")

    async def test_unknown_ca_is_refused(self) -> None:
        with self.assertRaises(Exception) as caught:
            await self.client(None).get(self.url, timeout=10)
        self.assertIn("certificate verify failed", repr(caught.exception))

    def test_unreadable_ca_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate")
        self.assertRaises(ValueError, tls_policy, path)


class Interfaces(TestCase):
    def test_listening_interface(self) -> None:
        self.assertEqual(listening_interface("ssl:8443:interface=127.0.0.1:privateKey=k:certKey=c"), "127.0.0.1")
        self.assertEqual(listening_interface("ssl:8443:privateKey=k"), "")
        self.assertEqual(listening_interface("tcp:80:interface=10.0.0.1:interface=127.0.0.1"), "127.0.0.1")
        self.assertIsNone(listening_interface("unix:/tmp/sock"))
        self.assertRaises(ValueError, listening_interface, "tcp:nope")

    def test_auth_default_follows_the_endpoint(self) -> None:
        from mozpool.config import load_config

        def mode(endpoint: str) -> str:
            return load_config(None, {"http_endpoint": endpoint}).effective_auth_mode

        self.assertEqual(mode("ssl:8443:privateKey=k:certKey=c"), "required")
        self.assertEqual(mode("ssl:8443:interface=127.0.0.1:privateKey=k:certKey=c"), "open")
        self.assertEqual(mode("unix:/run/mozpool.sock"), "open")
