"""Authentication and roles: the rule table covers every route, each role against each endpoint
family with auth required, token lifecycle, server and per-boot device credentials, the UI's
cookie with CSRF, audit lines, and the mode defaults."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mozpool.db import tokens
from mozpool.web import api, auth
from tests.support.dbtest import on_both_backends
from tests.web.fakes import FakeBMM, FakeBroker, FakeLifeGuard
from tests.web.support import APITest

GOOD = {"assignee": "tester@example.com", "duration": 3600, "image": "android"}
REQUEST = {"id": 1, "requested_device": "any", "assignee": "tester@example.com", "expires": "2013-04-02T18:05:11",
           "environment": "any", "image": "android", "boot_config": "{}", "assigned_device": "",
           "url": "http://a.example.com/api/request/1/"}


class RuleTable(SynchronousTestCase):
    def test_every_route_has_a_rule(self) -> None:
        """A new route without a rule fails here (and would answer 500 otherwise)."""
        routes = {(template, method) for template, methods in api.ROUTES for method in methods}
        self.assertEqual(routes - set(auth.RULES), set(), "routes without a rule")
        self.assertEqual(set(auth.RULES) - routes, set(), "rules without a route")

    def test_reads_and_writes(self) -> None:
        for (template, method), rule in auth.RULES.items():
            if template in api.REDIRECTING:
                self.assertFalse(rule.reads, f"{method} {template} acts on an owned object")
            if rule.own_request:
                self.assertIn("{id}", template)
            if rule.device_boot:
                self.assertIn("{device}", template)

    def test_default_mode(self) -> None:
        for host in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"):
            self.assertEqual(auth.default_mode(host), auth.OPEN, host)
        for host in ("0.0.0.0", "::", "", "10.0.0.5", "imaging1.example.com"):
            self.assertEqual(auth.default_mode(host), auth.REQUIRED, host)


class Roles(APITest):
    """Auth required, with one token per role and recording collaborators."""

    async def _setUp(self) -> None:
        await super()._setUp()
        self.broker, self.lifeguard, self.bmm = FakeBroker(), FakeLifeGuard(), FakeBMM()
        self.broker.result = REQUEST
        self.authority = auth.Authority(self.db, self.clock, auth.REQUIRED)
        self.authority.cluster_secret = await self.db.runInteraction(tokens.cluster_secret)
        self.api = self.makeAPI(broker=self.broker, lifeguard=self.lifeguard, bmm=self.bmm, authority=self.authority)
        self.token: dict[str, str] = {}
        for role in tokens.ROLES:
            self.token[role] = await self.db.runInteraction(tokens.create, f"{role}-1", role, "2013-04-02 17:00:00")
        self.token["user2"] = await self.db.runInteraction(tokens.create, "user-2", "user", "2013-04-02 17:00:00")

    def as_(self, who: str | None) -> dict[str, str]:
        return {} if who is None else {"Authorization": f"Bearer {self.token.get(who, who)}"}

    async def status(self, who: str | None, method: str, path: str, body: Any = None) -> int:
        return (await self.call(method, path, body, headers=self.as_(who))).code

    async def test_each_role_against_each_family(self) -> None:
        rid = await self.add_request(device="panda-0001")
        families = [
            # (method, path, body, least role that may)
            ("GET", "/api/device/list/", None, None),
            ("GET", "/api/events?type=nonsense", None, "skip"),  # (validated after auth: 400 for all)
            ("GET", f"/api/request/{rid}/status/", None, None),
            ("GET", "/metrics", None, None),
            # health (issue 15): reads like any other
            ("GET", "/api/device/panda-0001/history/", None, None),
            ("GET", f"/api/request/{rid}/history/", None, None),
            ("GET", "/api/device/panda-0001/why/", None, None),
            ("GET", f"/api/request/{rid}/why/", None, None),
            ("GET", "/api/pool/boots/", None, None),
            ("GET", "/api/health/", None, None),
            ("GET", "/api/relay/localhost-20001/health/", None, None),
            ("POST", "/api/device/any/request/", GOOD, "user"),
            ("POST", f"/api/request/{rid}/renew/", {"duration": 60}, "operator"),  # another's request
            ("POST", f"/api/request/{rid}/event/close/", {}, "operator"),
            ("POST", "/api/device/panda-0001/event/please_self_test/", {}, "operator"),
            ("POST", "/api/device/panda-0001/state-change/ready/to/locked_out/", None, "operator"),
            ("POST", "/api/device/panda-0001/power-cycle/", {}, "operator"),
            ("GET", "/api/device/panda-0001/power-off/", None, "operator"),
            ("POST", "/api/device/panda-0001/clear-pxe/", None, "operator"),
            ("GET", "/api/device/panda-0001/ping/", None, "operator"),
            ("GET", "/api/relay/localhost-20001/test/", None, "operator"),
            ("POST", "/api/device/panda-0001/set-comments/", {"comments": "x"}, "operator"),
            ("POST", "/api/device/panda-0001/set-environment/", {"environment": "prod"}, "operator"),
            ("GET", "/api/token/list/", None, "admin"),
            ("POST", "/api/token/create/", {"name": "new", "role": "reader"}, "admin"),
        ]
        for method, path, body, least in families:
            if least == "skip":
                continue
            for who in (None, *tokens.ROLES):
                code = await self.status(who, method, path, body)
                if least is None or (who is not None and tokens.role_at_least(who, least)):
                    self.assertNotIn(code, (401, 403), f"{who} {method} {path}")
                elif who is None:
                    self.assertEqual(code, 401, f"anonymous {method} {path}")
                else:
                    self.assertEqual(code, 403, f"{who} {method} {path}")
            if least == "admin":
                await self.call("POST", "/api/token/new/revoke/", headers=self.as_("admin"))

    async def test_bad_credentials_are_401(self) -> None:
        for header in ("Bearer mpt_nonsense", "Bearer ", "Basic dXNlcjpwdw==", "bearer"):
            answer = await self.call("POST", "/api/device/panda-0001/set-comments/", {"comments": "x"},
                                     headers={"Authorization": header})
            self.assertEqual(answer.code, 401, header)
            self.assertEqual(answer.header("www-authenticate"), 'Bearer realm="mozpool"')
            self.assertTrue(answer.json()["error"])
        # a bad credential is refused on a read too: it is never silently anonymous
        self.assertEqual(await self.status("mpt_nonsense", "GET", "/api/device/list/"), 401)
        # ... but a stale sign-in cookie is: the browser reads on, and is asked for a token to act
        stale = {"Cookie": "mozpool_token=mpt_revoked; mozpool_csrf=x", "X-CSRF-Token": "x"}
        self.assertEqual((await self.call("GET", "/api/device/list/", headers=stale)).code, 200)
        self.assertEqual((await self.call("POST", "/api/device/panda-0001/set-comments/", {"comments": "x"},
                                          headers=stale)).code, 401)

    async def test_reads_can_be_closed(self) -> None:
        self.authority.anonymous_read = False
        self.assertEqual(await self.status(None, "GET", "/api/device/list/"), 401)
        self.assertEqual(await self.status(None, "GET", "/api/device/panda-0001/state/?cache=1"), 401)
        self.assertEqual(await self.status("reader", "GET", "/api/device/panda-0001/state/?cache=1"), 200)
        self.assertEqual(await self.status(None, "GET", "/api/version/"), 200, "public")

    async def test_users_act_on_their_own_requests_only(self) -> None:
        mine = await self.add_request(device="panda-0001")
        theirs = await self.add_request(device="panda-0002")
        await self.sql("UPDATE requests SET created_by = 'user-1' WHERE id = ?", (mine,))
        await self.sql("UPDATE requests SET created_by = 'user-2' WHERE id = ?", (theirs,))
        self.assertEqual(await self.status("user", "POST", f"/api/request/{mine}/renew/", {"duration": 60}), 204)
        self.assertEqual(await self.status("user", "POST", f"/api/request/{mine}/return/"), 204)
        answer = await self.call("POST", f"/api/request/{theirs}/return/", headers=self.as_("user"))
        self.assertEqual(answer.code, 403)
        self.assertIn("another user", answer.json()["error"])
        self.assertEqual(await self.status("operator", "POST", f"/api/request/{theirs}/return/"), 204)
        self.assertEqual(await self.status("user", "POST", "/api/request/999/return/"), 404)

    async def test_request_creation_records_its_creator(self) -> None:
        await self.ok("POST", "/api/device/any/request/", GOOD, headers=self.as_("user"))
        self.assertEqual(self.broker.calls[-1][-1].created_by, "user-1")

    async def test_revocation_takes_effect_within_the_cache_time(self) -> None:
        self.assertEqual(await self.status("operator", "POST", "/api/device/panda-0001/clear-pxe/"), 200)
        await self.db.runInteraction(tokens.revoke, "operator-1", "2013-04-02 17:10:00")
        self.clock.advance(auth.TOKEN_CACHE_SECONDS + 0.1)
        self.assertEqual(await self.status("operator", "POST", "/api/device/panda-0001/clear-pxe/"), 401)

    async def test_servers_vouch_for_each_other(self) -> None:
        secret = self.authority.cluster_secret
        assert secret is not None
        good = tokens.server_token(secret, "b.example.com:8010")
        self.assertEqual(await self.status(good, "POST", "/api/device/panda-0001/event/please_self_test/", {}), 200)
        forged = tokens.server_token("another secret", "b.example.com:8010")
        self.assertEqual(await self.status(forged, "POST", "/api/device/panda-0001/event/please_self_test/", {}), 401)
        self.assertEqual(tokens.server_of(secret, good), "b.example.com:8010")
        self.assertIsNone(tokens.server_of(secret, good[:-1] + ("0" if good[-1] != "0" else "1")))

    async def test_boot_tokens(self) -> None:
        boot = tokens.new_token(tokens.BOOT_PREFIX)
        await self.db.runInteraction(tokens.store_boot_token, "panda-0001", tokens.token_hash(boot))
        ok = await self.status(boot, "POST", "/api/device/panda-0001/event/mobile_init_started/")
        self.assertEqual(ok, 200)
        self.assertEqual(self.lifeguard.calls[-1][:3], ("device_event", "panda-0001", "mobile_init_started"))
        self.assertEqual(await self.status(boot, "GET", "/api/device/panda-0001/bootconfig/"), 200)
        # only its own device, only live-boot events, nothing else
        self.assertEqual(await self.status(boot, "POST", "/api/device/panda-0002/event/mobile_init_started/"), 403)
        self.assertEqual(await self.status(boot, "POST", "/api/device/panda-0001/event/please_self_test/"), 403)
        self.assertEqual(await self.status(boot, "POST", "/api/device/panda-0001/power-off/"), 403)
        self.assertEqual(await self.status(boot, "GET", "/api/device/panda-0002/bootconfig/"), 403)
        self.assertEqual(await self.status(boot, "GET", "/api/device/list/"), 403)  # (documented for reads too)
        # forged, or from an earlier boot
        self.assertEqual(await self.status(tokens.new_token(tokens.BOOT_PREFIX), "POST",
                                           "/api/device/panda-0001/event/mobile_init_started/"), 403)
        await self.db.runInteraction(tokens.store_boot_token, "panda-0001", tokens.token_hash("mpb_next"))
        self.assertEqual(await self.status(boot, "POST", "/api/device/panda-0001/event/android_downloading/"), 403)
        self.assertEqual(await self.status(None, "POST", "/api/device/panda-0001/event/android_downloading/"), 401)

    async def test_cookie_needs_csrf(self) -> None:
        cookies = f"mozpool_token={self.token['operator']}; mozpool_csrf=abc123"
        path = "/api/device/panda-0001/set-comments/"
        self.assertEqual((await self.call("POST", path, {"comments": "x"}, headers={"Cookie": cookies})).code, 403)
        wrong = {"Cookie": cookies, "X-CSRF-Token": "nope"}
        self.assertEqual((await self.call("POST", path, {"comments": "x"}, headers=wrong)).code, 403)
        right = {"Cookie": cookies, "X-CSRF-Token": "abc123"}
        self.assertEqual((await self.call("POST", path, {"comments": "x"}, headers=right)).code, 200)
        self.assertEqual((await self.call("GET", "/api/whoami/", headers={"Cookie": cookies})).json()["name"],
                         "operator-1")

    async def test_audit_names_the_token(self) -> None:
        await self.ok("POST", "/api/device/panda-0001/set-comments/", {"comments": "x"}, headers=self.as_("operator"))
        rows = await self.sql("SELECT l.source, l.message FROM device_logs l JOIN devices d ON d.id = l.device_id"
                              " WHERE d.name = 'panda-0001'")
        self.assertIn(("audit", "POST /api/device/panda-0001/set-comments/ by operator-1 (operator)"), rows)
        await self.ok("POST", "/api/device/any/request/", GOOD, headers=self.as_("user"))
        rows = await self.sql("SELECT source, message FROM request_logs WHERE request_id = 1")
        self.assertIn(("audit", "POST /api/device/any/request/ by user-1 (user)"), rows)

    async def test_whoami(self) -> None:
        me = await self.ok("GET", "/api/whoami/", headers=self.as_("user"))
        self.assertEqual(me, {"name": "user-1", "kind": "token", "role": "user", "mode": "required"})
        anon = await self.ok("GET", "/api/whoami/")
        self.assertEqual(anon, {"name": "anonymous", "kind": "anonymous", "role": "reader", "mode": "required"})

    async def test_token_endpoints(self) -> None:
        made = await self.ok("POST", "/api/token/create/", {"name": "ci-bot", "role": "user"}, headers=self.as_("admin"))
        self.assertTrue(made["token"].startswith("mpt_"))
        self.assertEqual(await self.status(made["token"], "POST", "/api/device/any/request/", GOOD), 200)
        listed = await self.ok("GET", "/api/token/list/", headers=self.as_("admin"))
        self.assertIn(("ci-bot", "user", None), [(t["name"], t["role"], t["revoked"]) for t in listed["tokens"]])
        again = await self.call("POST", "/api/token/create/", {"name": "ci-bot", "role": "user"}, headers=self.as_("admin"))
        self.assertEqual(again.code, 409)
        bad = await self.call("POST", "/api/token/create/", {"name": "x", "role": "god"}, headers=self.as_("admin"))
        self.assertEqual(bad.code, 400)
        await self.ok("POST", "/api/token/ci-bot/revoke/", headers=self.as_("admin"))
        self.clock.advance(auth.TOKEN_CACHE_SECONDS + 0.1)
        self.assertEqual(await self.status(made["token"], "POST", "/api/device/any/request/", GOOD), 401)
        self.assertEqual((await self.call("POST", "/api/token/ci-bot/revoke/", headers=self.as_("admin"))).code, 404)


RolesSQLite, RolesMariaDB = on_both_backends(Roles)


class OpenMode(APITest):
    async def test_anyone_may_act_and_presented_tokens_are_named(self) -> None:
        self.api = self.makeAPI(bmm=FakeBMM())
        await self.ok("POST", "/api/device/panda-0001/clear-pxe/")
        token = await self.db.runInteraction(tokens.create, "alice", "reader", "2013-04-02 17:00:00")
        await self.ok("POST", "/api/device/panda-0001/clear-pxe/", headers={"Authorization": f"Bearer {token}"})
        rows = await self.sql("SELECT message FROM device_logs WHERE source = 'audit' ORDER BY id")
        self.assertEqual(rows, [("POST /api/device/panda-0001/clear-pxe/ by anonymous (auth open)",),
                                ("POST /api/device/panda-0001/clear-pxe/ by alice (reader)",)])


OpenModeSQLite = on_both_backends(OpenMode)[0]


class TokenStore(SynchronousTestCase):
    def test_names(self) -> None:
        for bad in ("", "-x", "a b", "x" * 65, "é"):
            self.assertFalse(tokens.NAME_RE.match(bad), bad)
        for good in ("alice", "ci-bot", "a@example.com", "x" * 64):
            self.assertTrue(tokens.NAME_RE.match(good), good)

    def test_hash_is_not_the_token(self) -> None:
        token = tokens.new_token()
        self.assertNotIn(token, tokens.token_hash(token))
        self.assertEqual(len(tokens.token_hash(token)), 64)
        self.assertNotEqual(tokens.new_token(), tokens.new_token())



