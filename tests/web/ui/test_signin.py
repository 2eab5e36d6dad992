"""Signing in to the UI with a token: an HttpOnly, SameSite=Strict cookie and a CSRF value; pages
closed to anonymous readers when the server says so; actions marked with the role they need."""

from __future__ import annotations

from typing import Any

from mozpool.db import tokens
from mozpool.web import auth
from mozpool.web.api import MozpoolAPI
from mozpool.web.ui.app import OperatorUI
from tests.support.dbtest import on_both_backends
from tests.web.ui.support import UITest, parse

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class SignIn(UITest):
    def makeAPI(self, db: Any = None, **kw: Any) -> MozpoolAPI:
        self.authority = kw.setdefault("authority", auth.Authority(self.db, self.clock, auth.REQUIRED))
        api = super().makeAPI(db, **kw)
        self.ui = OperatorUI(db or self.db, self.fqdn, self.clock, self.authority)
        self.front.inner = api.resource(self.ui.resource())
        return api

    async def token(self, role: str = "operator") -> str:
        return await self.db.runInteraction(tokens.create, f"{role}-x", role, "2013-04-02 17:00:00")

    async def test_sign_in_sets_the_cookies_and_redirects(self) -> None:
        token = await self.token()
        answer = await self.call("POST", "/ui/signin", f"token={token}&next=/ui/devices".encode(), headers=FORM)
        self.assertEqual(answer.code, 303, answer.body[:500])
        self.assertEqual(answer.header("location"), "/ui/devices")
        cookies = answer.headers.getRawHeaders("set-cookie")
        token_cookie = next(c for c in cookies if c.startswith("mozpool_token="))
        csrf_cookie = next(c for c in cookies if c.startswith("mozpool_csrf="))
        self.assertIn("HttpOnly", token_cookie)
        self.assertIn("SameSite=strict", token_cookie)
        self.assertNotIn("HttpOnly", csrf_cookie, "the pages' script reads it")
        csrf = csrf_cookie.split(";")[0].split("=", 1)[1]
        # the cookie works on the API, with its CSRF echo
        cookie = f"mozpool_token={token}; mozpool_csrf={csrf}"
        me = await self.ok("GET", "/api/whoami/", headers={"Cookie": cookie})
        self.assertEqual((me["name"], me["role"]), ("operator-x", "operator"))
        self.assertEqual((await self.call("POST", "/api/device/panda-0001/set-comments/", {"comments": "x"},
                                          headers={"Cookie": cookie, "X-CSRF-Token": csrf})).code, 200)
        self.assertEqual((await self.call("POST", "/api/device/panda-0001/set-comments/", {"comments": "x"},
                                          headers={"Cookie": cookie})).code, 403)

    async def test_a_bad_token_is_refused_on_the_form(self) -> None:
        answer = await self.call("POST", "/ui/signin", b"token=mpt_nope", headers=FORM)
        self.assertEqual(answer.code, 401)
        self.assertIsNone(answer.headers.getRawHeaders("set-cookie"))
        doc = parse(answer.body)
        self.assertIn("not valid", " ".join(self.texts(doc, "signin-error")))

    async def test_next_stays_on_this_server(self) -> None:
        token = await self.token()
        for evil in ("https://evil.example.com/", "//evil.example.com/ui/", "/api/device/list/"):
            body = f"token={token}&next={evil}".encode()
            answer = await self.call("POST", "/ui/signin", body, headers=FORM)
            self.assertEqual(answer.header("location"), "/ui/", evil)

    async def test_cross_site_sign_in_is_refused(self) -> None:
        token = await self.token()
        answer = await self.call("POST", "/ui/signin", f"token={token}".encode(),
                                 headers={**FORM, "Origin": "http://evil.example.com"})
        self.assertEqual(answer.code, 400)
        self.assertIsNone(answer.headers.getRawHeaders("set-cookie"))

    async def test_sign_out_clears_the_cookies(self) -> None:
        answer = await self.call("POST", "/ui/signout")
        self.assertEqual(answer.code, 303)
        cookies = answer.headers.getRawHeaders("set-cookie")
        self.assertTrue(any(c.startswith("mozpool_token=;") and "Max-Age=0" in c for c in cookies), cookies)

    async def test_pages_need_sign_in_when_reads_are_closed(self) -> None:
        self.authority.anonymous_read = False
        answer = await self.call("GET", "/ui/devices?state=ready")
        self.assertEqual(answer.code, 303)
        self.assertEqual(answer.header("location"), "/ui/signin?next=%2Fui%2Fdevices%3Fstate%3Dready")
        self.assertEqual((await self.call("GET", "/ui/signin")).code, 200)
        self.assertEqual((await self.call("GET", "/ui/static/mozpool.css")).code, 200)
        reader = await self.token("reader")
        doc = await self.page("/ui/devices", headers={"Cookie": f"mozpool_token={reader}"})
        self.assertTrue(doc.find("device-row"))
        answer = await self.call("GET", "/ui/devices", headers={"Cookie": "mozpool_token=mpt_revoked"})
        self.assertEqual(answer.code, 303)

    async def test_pages_are_open_to_anonymous_readers_by_default(self) -> None:
        doc = await self.page("/ui/device/panda-0001")
        needs = {n.attrs["data-testid"] if n.tag == "button" else n.tag: n.attrs["data-needs"]
                 for n in _with_attr(doc, "data-needs")}
        self.assertEqual(needs.get("comments-edit"), "operator")
        self.assertEqual(set(needs.values()) - {"operator"}, set(), "every device action is an operator's")
        request_doc = await self.page("/ui/requests/new")
        self.assertEqual([n.attrs["data-needs"] for n in _with_attr(request_doc, "data-needs")], ["user"])


def _with_attr(node: Any, name: str) -> list[Any]:
    found = [node] if name in node.attrs else []
    for child in node.children:
        found += _with_attr(child, name)
    return found


SignInSQLite = on_both_backends(SignIn)[0]
