"""A MozpoolAPI over a real database with two imaging servers, driven through StubTreq."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import defer, reactor, task
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer
from twisted.web.resource import IResource, Resource

from mozpool.db import logs, schema
from mozpool.db.fixtures import load_fixture
from mozpool.db.pool import Cursor, Database
from mozpool.timeutil import dbnow
from mozpool.web.api import MozpoolAPI
from mozpool.web.events import ChangeFeed, EventHub
from mozpool.web.poolview import PoolView
from tests.support.dbtest import DatabaseTest

A = "a.example.com"
B = "b.example.com:8010"
#: 2013-04-02T17:05:11 UTC
EPOCH = 1364922311
JSON_TYPE = "application/json; charset=utf-8"


class _FlushOnFinish(Resource):
    """Pumps the in-memory connection as soon as an asynchronous answer is finished, so tests
    can await StubTreq calls answered from the database's threads."""

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self.inner = inner
        self.flushers: list[Any] = []

    def render(self, request: Any) -> Any:
        request.notifyFinish().addBoth(lambda _: reactor.callLater(0, self.flush))
        return self.inner.render(request)

    def flush(self) -> None:
        for f in self.flushers:
            f()


@implementer(IBodyProducer)
class _WholeBody:
    """Writes the whole body at once, so one pump delivers the request however large."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.body)
        return defer.succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class Answer:
    def __init__(self, code: int, headers: Headers, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if not values else values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class APITest(DatabaseTest):
    """Mixin: ``self.api`` is server A's API; the database holds A's panda-0001..0003 and
    B's bpanda-0001..0002 (relay boards localhost-20001 for A, localhost-50001 for B)."""

    fqdn = A

    def setUp(self) -> Any:
        return defer.ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.db = self.makeDatabase()
        await schema.create_schema(self.db)
        self.clock = task.Clock()
        self.clock.advance(EPOCH)
        await load_fixture(self.db, A, 3, dbnow(self.clock))
        await load_fixture(self.db, B, 2, dbnow(self.clock), prefix="bpanda", relay_base_port=50001)
        self.api = self.makeAPI()

    async def makeView(self) -> PoolView:
        """Server A's pool view, synced and kept current by a change feed (``self.feed``, on
        ``self.hub``) as the daemon wires them."""
        self.hub = EventHub(self.clock)
        self.feed = ChangeFeed(self.db, self.hub, self.clock)
        view = PoolView(self.db, self.clock)
        view.attach(self.feed)
        await view.sync()
        return view

    def makeAPI(self, db: Database | None = None, **kw: Any) -> MozpoolAPI:
        api = MozpoolAPI(db or self.db, self.fqdn, self.clock, **kw)
        self.front = _FlushOnFinish(api.resource())
        self.stub = StubTreq(self.front)
        self.agent = RequestTraversalAgent(self.front)
        self.front.flushers = [self.stub.flush, self.agent.flush]
        return api

    async def call(
        self,
        method: str,
        path: str | bytes,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One call with the raw request target ``path``; ``body`` bytes, or JSON-encoded."""
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
        target = path if isinstance(path, bytes) else path.encode("utf-8")
        hdrs = Headers({k.encode(): [v.encode("latin-1")] for k, v in (headers or {}).items()})
        producer = _WholeBody(body) if body is not None else None
        d = self.agent.request(method.encode("ascii"), b"http://" + A.encode() + target, hdrs, producer)
        self.agent.flush()
        response = await d
        content = defer.Deferred.fromCoroutine(_read(response))
        self.agent.flush()
        data = await content
        answer = Answer(response.code, response.headers, data)
        assert response.code != 500, f"500 for {method} {path!r}: {data!r}"  # never a bug
        return answer

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        answer = await self.call(method, path, body, **kw)
        self.assertEqual(answer.code, 200, answer.body)  # type: ignore[attr-defined]
        self.assertEqual(answer.header("content-type"), JSON_TYPE)  # type: ignore[attr-defined]
        return answer.json()

    async def error(self, code: int, method: str, path: str | bytes, body: Any = None, **kw: Any) -> Answer:
        answer = await self.call(method, path, body, **kw)
        self.assertEqual(answer.code, code, answer.body)  # type: ignore[attr-defined]
        self.assertEqual(answer.header("content-type"), JSON_TYPE)  # type: ignore[attr-defined]
        got = answer.json()
        if code != 302:
            self.assertIsInstance(got.get("error"), str)  # type: ignore[attr-defined]
            self.assertTrue(got["error"])  # type: ignore[attr-defined]
        return answer

    # --- seeding -------------------------------------------------------------------------------

    async def add_request(
        self, server: str = A, device: str | None = None, state: str = "ready", image: str = "android",
        expires: str = "2013-04-02 18:05:11", boot_config: str = "{}", environment: str = "any",
    ) -> int:
        def q(c: Cursor) -> int:
            sid = c.scalar("SELECT id FROM imaging_servers WHERE fqdn = ?", (server,))
            iid = c.scalar("SELECT id FROM images WHERE name = ?", (image,))
            c.execute(
                "INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id,"
                " boot_config, state, state_counters, state_timeout, environment)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, '{}', NULL, ?)",
                (sid, device or "any", "tester@example.com", expires, iid, boot_config, state, environment),
            )
            rid = c.lastrowid
            if device is not None:
                did = c.scalar("SELECT id FROM devices WHERE name = ?", (device,))
                c.execute("INSERT INTO device_requests (request_id, device_id) VALUES (?, ?)", (rid, did))
            return int(rid)

        return await self.db.runInteraction(q)

    async def add_log(self, kind: str, name_or_id: Any, ts: str, message: str, source: str = "statemachine") -> None:
        def q(c: Cursor) -> None:
            owner = name_or_id
            if kind == "device":
                owner = c.scalar("SELECT id FROM devices WHERE name = ?", (name_or_id,))
            logs.add_log(c, kind, int(owner), source, message, ts)

        await self.db.runInteraction(q)

    async def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        return await self.db.runInteraction(lambda c: c.execute(statement, params).fetchall())


async def _read(response: Any) -> bytes:
    import treq

    return await treq.content(response)
