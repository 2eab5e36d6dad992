"""The real Site on loopback: bodies are JSON even when labelled multipart or form-encoded."""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from mozpool.web.site import make_site
from tests.support.dbtest import on_both_backends
from tests.support.polling import until
from tests.web.support import APITest


class Site(APITest):
    async def test_multipart_label_is_still_json(self) -> None:
        port = reactor.listenTCP(0, make_site(self.api), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"
        for ctype in ("multipart/form-data; boundary=xx", "application/x-www-form-urlencoded"):
            response: Any = await treq.post(
                base + "/api/device/panda-0001/set-comments/", data=b'{"comments": "via ' + ctype.encode() + b'"}',
                headers={"Content-Type": ctype}, reactor=reactor, persistent=False,
            )
            body = await response.json()
            self.assertEqual((response.code, body), (200, {}))
        rows = await self.sql("SELECT comments FROM devices WHERE name = 'panda-0001'")
        self.assertEqual(rows, [("via application/x-www-form-urlencoded",)])
        response = await treq.get(base + "/api/device/list/?details", reactor=reactor, persistent=False)
        self.assertEqual(len((await response.json())["devices"]), 5)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"])


    async def raw(self, head: bytes, chunks: list[bytes], settle_at: int) -> tuple[bytes, int]:
        """Send ``head`` then ``chunks`` (stopping when the server hangs up); what came back, and
        how many chunks were sent before the answer arrived.  Before chunk number ``settle_at`` the
        client waits (up to 10 s) for an answer, so a busy machine cannot make the server look as if
        it had read further than it needed to."""
        port = reactor.listenTCP(0, make_site(self.api), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = _Collect()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        client.transport.write(head)
        sent = 0
        for index, chunk in enumerate(chunks):
            await deferLater(0.001)
            if index == settle_at:
                await until(lambda: client.received or client.lost.called, "the server's answer")
            if client.received or client.lost.called:
                break
            client.transport.write(chunk)
            sent += 1
        await client.lost
        return client.received, sent

    async def test_declared_large_body_refused_before_it_is_sent(self) -> None:
        head = (b"POST /api/device/panda-0001/set-comments/ HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 1048577\r\n\r\n")
        answer, sent = await self.raw(head, [b"x" * 65536] * 17, settle_at=0)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
        self.assertIn(b'{"error": "request body larger than 1048576 bytes"}', answer)
        self.assertEqual(sent, 0, "answered from the headers alone")

    async def test_chunked_body_cut_off_past_the_limit(self) -> None:
        head = (b"POST /api/device/panda-0001/set-comments/ HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
        answer, sent = await self.raw(head, [chunk] * 64, settle_at=17)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
        self.assertLessEqual(sent, 18, "cut off once past 1 MiB, not at the end of 4 MiB")
        rows = await self.sql("SELECT comments FROM devices WHERE name = 'panda-0001'")
        self.assertEqual(rows, [(None,)])

    async def test_body_at_the_limit_still_served(self) -> None:
        body = b'{"comments": "' + b"y" * 100 + b'"}'
        padded = body + b" " * (1048576 - len(body))
        response: Any = await treq.post(
            await self.base() + "/api/device/panda-0001/set-comments/", data=padded, persistent=False
        )
        self.assertEqual(response.code, 200, await response.content())

    async def base(self) -> str:
        port = reactor.listenTCP(0, make_site(self.api), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"


class _Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


SiteSQLite = on_both_backends(Site)[0]
