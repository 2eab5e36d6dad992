"""``state/?cache=1`` answered at once (MozpoolAPI.cached_state_at_once, issue 17) against the same
call through Klein's route: the same status, body and headers for every caller the route knows
(open and required modes, anonymous reads on or off, tokens, server and boot credentials, the
UI's cookie), every spelling of the ``cache`` flag, unknown devices and a stale view; and which
of them the fast path answers itself."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mozpool.db import tokens
from mozpool.web import auth, metrics, poolview
from tests.support.dbtest import on_both_backends
from tests.web.support import APITest, Answer

STATE = "/api/device/panda-0001/state/?cache=1"


class FastPath(APITest):
    """Server A's API over its pool view, as the daemon builds it."""

    async def _setUp(self) -> None:
        await super()._setUp()
        self.view = await self.makeView()
        self.authority = auth.Authority(self.db, self.clock, auth.OPEN)
        self.authority.cluster_secret = await self.db.runInteraction(tokens.cluster_secret)
        self.api = self.makeAPI(view=self.view, authority=self.authority)
        self.reader = await self.db.runInteraction(tokens.create, "reader-1", "reader", "2013-04-02 17:00:00")
        self.answered: list[bool] = []
        real = self.api.cached_state_at_once

        def recorded(request: Any) -> Any:
            body = real(request)
            self.answered.append(body is not None)
            return body

        self.fast = recorded
        self.api.cached_state_at_once = recorded  # type: ignore[method-assign]

    async def routed(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        """The call through Klein's route (the fast path turned off)."""
        self.api.cached_state_at_once = lambda request: None  # type: ignore[method-assign]
        try:
            return await self.call("GET", path, headers=headers)
        finally:
            self.api.cached_state_at_once = self.fast  # type: ignore[method-assign]

    async def assert_same(self, path: str, headers: dict[str, str] | None = None, *, answered: bool) -> Answer:
        """The route's answer and the fast path's are the same bytes; ``answered``: the fast
        path answered the call itself (else it left it to the route)."""
        routed = await self.routed(path, headers)  # first: a token's lookup is cached by it
        del self.answered[:]
        fast = await self.call("GET", path, headers=headers)
        label = f"{path} {headers}"
        self.assertEqual(self.answered, [answered], label)
        self.assertEqual((fast.code, fast.body), (routed.code, routed.body), label)
        self.assertEqual(_headers(fast), _headers(routed), label)
        return fast

    async def test_the_same_answer_as_the_route(self) -> None:
        self.clock.advance(1.7)  # inside a STATE_TTL window: max-age and Expires both matter
        answer = await self.assert_same(STATE, answered=True)
        self.assertEqual((answer.code, answer.json()), (200, {"state": "new"}))
        self.assertEqual(answer.header("content-type"), "application/json; charset=utf-8")
        self.assertEqual(answer.header("cache-control"), "public, max-age=3")
        self.assertEqual(answer.header("expires"), "Tue, 02 Apr 2013 17:05:15 GMT")
        # every spelling of the flag (present means on, whatever its value), and a trailing-slash-less path
        for query in ("cache", "cache=true", "cache=0", "x=1&cache=1", "cache=1&cache=2"):
            await self.assert_same(f"/api/device/panda-0002/state/?{query}", answered=True)
        await self.assert_same("/api/device/panda-0002/state?cache=1", answered=True)
        # left to the route: no flag, an unknown device (404), an escaped name, a body
        await self.assert_same("/api/device/panda-0001/state/", answered=False)
        self.assertEqual((await self.assert_same("/api/device/nosuch/state/?cache=1", answered=False)).code, 404)
        await self.assert_same("/api/device/panda%2D0001/state/?cache=1", answered=False)

    async def test_callers_in_open_mode(self) -> None:
        secret = self.authority.cluster_secret
        assert secret is not None
        cases = [
            ({"Authorization": f"Bearer {self.reader}"}, 200, True),  # checked, then known from the cache
            ({"Authorization": "Bearer mpt_nonsense"}, 401, False),  # presented, so checked: 401
            ({"Authorization": "Basic dXNlcjpwdw=="}, 401, False),
            ({"Authorization": "Bearer " + tokens.server_token(secret, "b.example.com:8010")}, 200, True),
            ({"Authorization": "Bearer " + tokens.server_token("forged", "b.example.com:8010")}, 401, False),
            ({"Authorization": "Bearer " + tokens.new_token(tokens.BOOT_PREFIX)}, 200, True),
            ({"Cookie": f"mozpool_token={self.reader}"}, 200, True),
            ({"Cookie": "mozpool_token=mpt_revoked"}, 200, True),  # a stale sign-in reads on
            ({"Cookie": "mozpool_token=mps_forged.x"}, 401, False),
            ({"Cookie": "other=1"}, 200, True),
        ]
        for headers, code, answered in cases:
            self.assertEqual((await self.assert_same(STATE, headers, answered=answered)).code, code, headers)

    async def test_callers_with_auth_required(self) -> None:
        self.authority.mode = auth.REQUIRED
        boot = tokens.new_token(tokens.BOOT_PREFIX)
        await self.db.runInteraction(tokens.store_boot_token, "panda-0001", tokens.token_hash(boot))
        for anonymous_read in (True, False):
            self.authority.anonymous_read = anonymous_read
            cases = [
                ({}, 200 if anonymous_read else 401, anonymous_read),
                ({"Authorization": f"Bearer {self.reader}"}, 200, True),
                ({"Authorization": "Bearer mpt_nonsense"}, 401, False),
                ({"Authorization": f"Bearer {boot}"}, 403, False),  # a boot token reads nothing
                ({"Cookie": f"mozpool_token={self.reader}"}, 200, True),  # reads need no CSRF token
                ({"Cookie": "mozpool_token=mpt_revoked"}, 200 if anonymous_read else 401, anonymous_read),
            ]
            for headers, code, answered in cases:
                answer = await self.assert_same(STATE, headers, answered=answered)
                self.assertEqual(answer.code, code, (anonymous_read, headers))
        # a revoked token is refused once its cached lookup expires, on both paths
        await self.db.runInteraction(tokens.revoke, "reader-1", "2013-04-02 17:10:00")
        self.clock.advance(auth.TOKEN_CACHE_SECONDS + 0.1)
        revoked = await self.assert_same(STATE, {"Authorization": f"Bearer {self.reader}"}, answered=False)
        self.assertEqual(revoked.code, 401)

    async def test_a_stale_view_is_left_to_the_route(self) -> None:
        await self.sql("UPDATE devices SET state = 'ready' WHERE name = 'panda-0001'")
        self.assertEqual((await self.assert_same(STATE, answered=True)).json(), {"state": "new"})
        self.clock.advance(poolview.STALE_SECONDS + 1)
        self.assertEqual((await self.assert_same(STATE, answered=False)).json(), {"state": "ready"})

    async def test_metrics_count_both_paths_alike(self) -> None:
        for _ in range(3):
            await self.assert_same(STATE, answered=True)
        text = (await self.call("GET", "/metrics")).body.decode()
        route = 'method="GET",route="/api/device/{device}/state/"'
        self.assertIn(f'mozpool_http_requests_total{{{route},status="200"}} 6', text)
        self.assertIn(f'mozpool_http_request_duration_seconds_bucket{{{route},le="0.005"}} 6', text)
        self.assertIn(f'mozpool_http_request_duration_seconds_count{{{route}}} 6', text)
        await self.call("GET", STATE)
        text = (await self.call("GET", "/metrics")).body.decode()
        self.assertIn(f'mozpool_http_requests_total{{{route},status="200"}} 7', text, "counted after a scrape too")


FastPathSQLite = on_both_backends(FastPath)[0]


class Tally(SynchronousTestCase):
    def test_a_tally_is_folded_in_as_observed_calls(self) -> None:
        tallied, observed = metrics.HTTPMetrics(), metrics.HTTPMetrics()
        counter = tallied.tally("GET", "/r", 200)
        for seconds in (0.0, 0.001, metrics.FIRST_BUCKET):
            counter[0] += 1
            counter[1] += seconds
            observed.observe("GET", "/r", 200, seconds)
        tallied.observe("GET", "/r", 200, 0.2)
        observed.observe("GET", "/r", 200, 0.2)
        self.assertEqual(list(tallied.lines()), list(observed.lines()))
        self.assertEqual(list(tallied.lines()), list(observed.lines()), "folded once")
        unused = metrics.HTTPMetrics()
        unused.tally("GET", "/r", 200)
        self.assertEqual(list(unused.lines()), list(metrics.HTTPMetrics().lines()), "no calls, no lines")


def _headers(answer: Answer) -> dict[bytes, list[bytes]]:
    """Every response header but Date (the wall clock's, not the test's)."""
    return {k: list(v) for k, v in answer.headers.getAllRawHeaders() if k.lower() != b"date"}
