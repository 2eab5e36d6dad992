"""A broker on a real test database with a recording HTTP client and a task.Clock."""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet import defer, task
from twisted.web.http_headers import Headers

from mozpool.broker.interfaces import RequestSpec
from mozpool.broker.service import Broker
from mozpool.db import fixtures, logs
from mozpool.statemachine.core import TimeoutDriver
from tests.support.dbtest import DatabaseTest

T0 = 1795694400.0  # 2026-11-26 12:00:00 UTC
HERE = "a.example.com"
OTHER = "b.example.com"


class FakeResponse:
    def __init__(self, code: int, location: str | None = None) -> None:
        self.code = code
        self.headers = Headers({b"location": [location.encode()]} if location else {})
        self.drained = False

    def content(self) -> "defer.Deferred[bytes]":
        self.drained = True
        return defer.succeed(b"{}")


class FakeHTTP:
    """treq-like: records every POST; answers from ``answers`` (in order), else ``default``.

    An answer is a status code, ``(302, location)``, an exception (a transport failure), or a
    Deferred the test fires (or never fires, to exercise the timeout)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answers: list[Any] = []
        self.default: Any = 200

    def post(self, url: str, data: Any = None, **kwargs: Any) -> "defer.Deferred[Any]":
        self.calls.append({"url": url, "body": json.loads(data), "headers": kwargs.get("headers"),
                           "allow_redirects": kwargs.get("allow_redirects", True)})
        answer = self.answers.pop(0) if self.answers else self.default
        if isinstance(answer, defer.Deferred):
            return answer
        if isinstance(answer, BaseException):
            return defer.fail(answer)
        if isinstance(answer, tuple):
            return defer.succeed(FakeResponse(*answer))
        return defer.succeed(FakeResponse(answer))

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """(url, body) of each call."""
        return [(c["url"], c["body"]) for c in self.calls]


class BrokerTest(DatabaseTest):
    """Four ready pandas on HERE (panda-0001/3 in 'prod', 0002/4 in 'staging'), nothing held."""

    devices = 4
    seed = 0

    async def setUp(self) -> None:
        await super().setUp()
        self.clock = task.Clock()
        self.clock.advance(T0)
        await fixtures.load_fixture(self.db, HERE, self.devices, "2026-11-26 12:00:00")
        await self.db.query("UPDATE devices SET state = 'ready', state_timeout = NULL")
        await self.db.query(
            "INSERT INTO images (name, boot_config_keys, can_reuse, hidden, has_sut_agent)"
            " VALUES ('reusable', '[\"b2gbase\"]', 1, 0, 0)"
        )
        self.http = FakeHTTP()
        self.broker = self.makeBroker()
        self.driver = TimeoutDriver(self.broker.runner, extra=self.broker.expire_due, interval=10)

    def makeBroker(self, seed: int | None = None) -> Broker:
        broker = Broker(self.db, self.clock, HERE, 1.0, self.http, random.Random(self.seed if seed is None else seed))
        self.addCleanup(broker.stop)  # type: ignore[attr-defined]
        return broker

    # --- driving ----------------------------------------------------------------------------

    async def create(self, device: str = "any", image: str = "android", environment: str = "any",
                     boot_config: str = "{}", duration: int = 3600) -> dict[str, Any]:
        created = await self.broker.create_request(
            device, RequestSpec("tester@example.com", duration, image, environment, boot_config)
        )
        await self.broker.idle()
        return created

    async def tick(self, seconds: float = 0) -> None:
        self.clock.advance(seconds)
        await self.driver.tick()
        await self.broker.idle()

    async def event(self, request_id: int, event: str, body: dict[str, Any] | None = None) -> None:
        await self.broker.request_event(request_id, event, body or {})
        await self.broker.idle()

    async def to_pending(self, **kw: Any) -> int:
        """A request that holds a device and has had its please_* accepted."""
        rid = (await self.create(**kw))["id"]
        await self.tick(0)  # contact_lifeguard has a 0 s timeout
        self.assertEqual(await self.state(rid), "pending")  # type: ignore[attr-defined]
        return int(rid)

    # --- looking ----------------------------------------------------------------------------

    async def row(self, request_id: int) -> tuple[str, dict[str, int], str | None]:
        state, counters, timeout = (await self.db.query(
            "SELECT state, state_counters, state_timeout FROM requests WHERE id = ?", (request_id,)))[0]
        return state, json.loads(counters), timeout

    async def state(self, request_id: int) -> str:
        return (await self.row(request_id))[0]

    async def counters(self, request_id: int) -> dict[str, int]:
        return (await self.row(request_id))[1]

    async def public(self, request_id: int) -> dict[str, Any]:
        """The request object as the API shows it now."""
        return await self.broker._public(request_id)

    async def claimed(self, request_id: int) -> str | None:
        rows = await self.db.query(
            "SELECT d.name FROM device_requests dr JOIN devices d ON d.id = dr.device_id WHERE dr.request_id = ?",
            (request_id,))
        return rows[0][0] if rows else None

    async def claims(self) -> list[tuple[int, str]]:
        rows = await self.db.query(
            "SELECT dr.request_id, d.name FROM device_requests dr JOIN devices d ON d.id = dr.device_id"
            " ORDER BY dr.request_id")
        return [(int(r[0]), r[1]) for r in rows]

    async def messages(self, request_id: int) -> list[str]:
        entries = await self.db.runInteraction(logs.get_log, "request", request_id, "2099-01-01 00:00:00")
        return [e["message"] for e in entries]

    async def set_result(self, request_id: int, result: str) -> None:
        await self.db.query("UPDATE device_requests SET imaging_result = ? WHERE request_id = ?", (result, request_id))

    async def set_device(self, name: str, **columns: Any) -> None:
        for column, value in columns.items():
            if column == "image":
                await self.db.query(
                    "UPDATE devices SET image_id = (SELECT id FROM images WHERE name = ?) WHERE name = ?", (value, name))
            else:
                await self.db.query(f"UPDATE devices SET {column} = ? WHERE name = ?", (value, name))
