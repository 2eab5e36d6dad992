"""The real Site on loopback: bodies are JSON even when labelled multipart or form-encoded."""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import reactor

from mozpool.web.site import makeSite
from tests.support.dbtest import on_both_backends
from tests.web.support import APITest


class Site(APITest):
    async def test_multipart_label_is_still_json(self) -> None:
        port = reactor.listenTCP(0, makeSite(self.api), interface="127.0.0.1")
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


SiteSQLite = on_both_backends(Site)[0]
