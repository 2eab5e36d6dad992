"""The twisted.web Site for the API: what the tap should listen with."""

from __future__ import annotations

import io
from typing import Any
import json

from twisted.web import server
from twisted.web.resource import IResource

from mozpool.web.api import JSON_TYPE, MozpoolAPI
from mozpool.web.validate import MAX_BODY


#: How long a refused client's remaining body is read and dropped before the connection closes.
LINGER_SECONDS = 2.0


class BoundedRequest(server.Request):
    """A request whose body is refused as soon as it is known to be too large: from its
    ``Content-Length`` before a byte of it is read, or, chunked, the moment it passes the
    limit.  (twisted.web would spool any body to a temporary file first, so one client could
    fill the disk before the API's 413.)  Bodies within the limit stay in memory."""

    max_body = MAX_BODY
    #: by the time the request is processed its body is known to be within ``max_body`` (the
    #: API's fast path for ``state/?cache=1`` need not look for a 413)
    body_bounded = True
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self.max_body:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
            return
        self.content.write(data)

    def allContentReceived(self) -> None:
        if not self._refused:
            super().allContentReceived()

    def _refuse(self) -> None:
        """Answer 413 at once, then half-close: closing outright while the client is still
        sending makes the kernel answer with a reset, which can destroy the 413 before the
        client reads it.  What the client still sends is read and dropped for
        :data:`LINGER_SECONDS`, then the connection goes."""
        self._refused = True
        body = json.dumps({"error": f"request body larger than {self.max_body} bytes"}).encode("utf-8")
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: " + JSON_TYPE
            + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            self.channel.loseConnection()
            return
        half_close()
        self._linger = self.channel.callLater(LINGER_SECONDS, transport.loseConnection)

    def connectionLost(self, reason: Any) -> None:
        linger = getattr(self, "_linger", None)
        if linger is not None and linger.active():
            linger.cancel()
        super().connectionLost(reason)


def make_site(api: MozpoolAPI, ui: IResource | None = None, access_log: bool = False) -> server.Site:
    """A Site rooted at the API.  Form-encoded and multipart bodies are not parsed by Twisted:
    bodies are JSON whatever their Content-Type (spec 1.3), and a multipart parse failure would
    answer a bare 400 before the API sees the call.

    The per-request access log is off unless asked for: formatting it cost about a fifth of the
    CPU of the cheapest endpoint (bench/api.py), and ``/metrics`` counts every call anyway."""
    site = server.Site(api.resource(ui), requestFactory=BoundedRequest, parsePOSTFormSubmission=False)
    if not access_log:
        site.log = lambda request: None  # type: ignore[method-assign]
    return site


