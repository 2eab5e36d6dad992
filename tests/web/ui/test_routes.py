"""What the UI answers besides its pages: redirects, errors, static files and headers."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.web.support import JSON_TYPE
from tests.web.ui.support import HTML_TYPE, UITest


class Routes(UITest, TestCase):
    async def test_root_goes_to_the_ui(self) -> None:
        self.assertEqual(await self.redirect("/", 302), "/ui/")
        self.assertEqual(await self.redirect("/ui", 302), "/ui/")

    async def test_the_originals_pages_redirect(self) -> None:
        expected = {
            "/ui/mozpool.html": "/ui/requests",
            "/ui/lifeguard.html": "/ui/devices",
            "/ui/bmm.html": "/ui/lab",
            "/ui/index.html": "/ui/",
            "/ui/log.html?device=panda-0002": "/ui/device/panda-0002",
            "/ui/log.html?device=a%2Fb%20c": "/ui/device/a%2Fb%20c",
            "/ui/log.html?request=17": "/ui/request/17",
        }
        for old, new in expected.items():
            self.assertEqual(await self.redirect(old, 301), new, old)
        self.assertEqual(await self.redirect("/ui/log.html", 302), "/ui/devices")
        self.assertEqual(await self.redirect("/ui/log.html?request=x", 302), "/ui/devices")

    async def test_unknown_things_are_404_pages(self) -> None:
        for path in ("/ui/device/nope", "/ui/device/nope/summary", "/ui/device/nope/log", "/ui/request/999",
                     "/ui/request/abc", "/ui/request/99999999999999999999999", "/ui/request/-1",
                     "/ui/request/999/summary", "/ui/request/999/log", "/ui/nothing.html", "/ui/nothing/here",
                     "/ui/device/panda-0001/nothing", "/favicon.ico", b"/ui/device/%ff%fe"):
            doc = await self.page(path, code=404)
            self.assertEqual(self.attr(doc, "error-message", "data-status"), ["404"], path)
        doc = await self.page("/ui/device/nope", code=404)
        self.assertEqual(self.texts(doc, "error-message"), ["There is no device nope."])
        self.assertEqual(self.texts(doc, "page-title"), ["Not found"])

    async def test_a_device_name_differing_only_in_trailing_space_is_unknown(self) -> None:
        await self.page("/ui/device/panda-0001%20", code=404)

    async def test_other_methods_are_405(self) -> None:
        answer = await self.call("POST", "/ui/devices", b"{}")
        self.assertEqual(answer.code, 405)
        self.assertEqual(answer.header("content-type"), HTML_TYPE)
        self.assertEqual(answer.header("allow"), "GET, HEAD")

    async def test_bad_paging_of_requests_is_400(self) -> None:
        for query in ("page=0", "per_page=1000", "closed=yes"):
            await self.page("/ui/requests?" + query, code=400)

    async def test_the_api_is_still_the_api(self) -> None:
        answer = await self.call("GET", "/api/version/")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("content-type"), JSON_TYPE)
        missing = await self.call("GET", "/api/nothing/")
        self.assertEqual((missing.code, missing.header("content-type")), (404, JSON_TYPE))

    async def test_static_files(self) -> None:
        for name, kind in (("htmx.min.js", "javascript"), ("mozpool.js", "javascript"), ("mozpool.css", "css")):
            answer = await self.call("GET", "/ui/static/" + name + "?v=1")
            self.assertEqual(answer.code, 200, name)
            self.assertIn(kind, answer.header("content-type") or "")
            self.assertEqual(answer.header("cache-control"), "public, max-age=86400")
        licence = await self.call("GET", "/ui/static/htmx.LICENSE")
        self.assertEqual(licence.code, 200)
        self.assertIn(b"Zero-Clause BSD", licence.body)
        for path in ("/ui/static/", "/ui/static/nothing.js", "/ui/static/../app.py", "/ui/static/%2e%2e/app.py"):
            answer = await self.call("GET", path)
            self.assertEqual(answer.code, 404, path)

    async def test_pages_link_the_versioned_assets_and_send_safe_headers(self) -> None:
        answer = await self.call("GET", "/ui/")
        self.assertIn(b'src="/ui/static/htmx.min.js?v=', answer.body)
        self.assertIn(b'href="/ui/static/mozpool.css?v=', answer.body)
        self.assertTrue(answer.body.startswith(b"<!DOCTYPE html>"))
        policy = answer.header("content-security-policy") or ""
        self.assertIn("script-src 'self'", policy)
        self.assertEqual(answer.header("x-content-type-options"), "nosniff")
        self.assertEqual(answer.header("cache-control"), "no-store")

    async def test_every_page_has_its_navigation(self) -> None:
        for path, current in (("/ui/", "nav-overview"), ("/ui/lab", "nav-lab"), ("/ui/devices", "nav-devices"),
                              ("/ui/requests", "nav-requests"), ("/ui/requests/new", "nav-new-request"),
                              ("/ui/images", "nav-images"), ("/ui/environments", "nav-environments"),
                              ("/ui/pxe-configs", "nav-pxe-configs"), ("/ui/servers", "nav-servers"),
                              ("/ui/device/panda-0001", "nav-devices")):
            doc = await self.page(path)
            link = doc.by_id(current)
            assert link is not None, path
            self.assertEqual(link.attrs.get("aria-current"), "page", path)

    async def test_no_database_is_a_503_page(self) -> None:
        """A database without the schema (another server is still creating it) is 'try again'."""
        self.makeAPI(db=self.makeDatabase())
        for path in ("/ui/", "/ui/devices", "/ui/device/panda-0001", "/ui/lab"):
            doc = await self.page(path, code=503)
            self.assertEqual(self.attr(doc, "error-message", "data-status"), ["503"], path)
            self.assertEqual((await self.call("GET", path)).header("retry-after"), "5", path)
