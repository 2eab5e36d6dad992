"""The operator web UI in a real headless Chromium against a real daemon with simulated devices
(issue 9): the overview, the devices table, the device and request pages, live updates over
``/api/events``, and the original's page paths.

The tests are synchronous and block on Selenium; ``tests/support/browser.py`` says why that is
safe here. The tests of a class share one daemon and one browser (within one trial worker), and
each flow acts only on a device no other flow of the class touches, so that they can run in any
order and on either worker.

"Live" is checked by setting a marker on the page's ``window`` before the change and finding it
still there once the change shows: the page was updated in place, not reloaded.

``MOZPOOL_SCREENSHOTS=1`` also writes the README's screenshots to ``docs/`` (``Screenshots``).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support.browser import (DOCS, BlockingDaemon, Browser, Fixture, require_browser, screenshots_wanted,
                                   shared)

# The devices each flow of Flows acts on (fixture names panda-0001 ...).
OVERVIEW_DEVICE = "panda-0001"
REQUEST_DEVICE = "panda-0002"
POWER_DEVICE = "panda-0003"
COMMENTS_DEVICE = "panda-0004"
STATE_DEVICE = "panda-0005"

# Console messages that are not the page's fault: the event stream is cut when a test leaves
# the page.
_HARMLESS_CONSOLE = ("/api/events", "favicon.ico")


def _make(fakes: int, time_scale: float, extra_args: tuple[str, ...] = ()) -> Fixture:
    daemon = BlockingDaemon(tempfile.mkdtemp(prefix="ui-daemon-", dir=os.getcwd()), fakes=fakes,
                            time_scale=time_scale, extra_args=extra_args)
    daemon.start()
    try:
        browser = Browser()
    except BaseException:
        daemon.stop()
        raise
    fixture = Fixture(daemon, browser)
    try:
        daemon.wait_ready()
    except BaseException:
        fixture.close()
        raise
    return fixture


class UITestCase(SynchronousTestCase):
    """A shared daemon (``fakes`` simulated pandas) and browser for the tests of one class.
    Synchronous: nothing here uses the reactor (see tests/support/browser.py)."""

    fakes = 8
    time_scale = 0.01
    extra_args: tuple[str, ...] = ()

    def setUp(self) -> None:
        require_browser()
        key = f"{type(self).__module__}.{type(self).__qualname__}"
        fixture = shared(self, key, lambda: _make(self.fakes, self.time_scale, self.extra_args))
        self.daemon = fixture.daemon
        self.browser = fixture.browser
        self.browser.console_errors()  # forget what earlier tests left in the console
        self.addCleanup(self.browser.get, "about:blank")

    # --- helpers --------------------------------------------------------------------------------

    def open(self, path: str, live: bool = True) -> None:
        """Load a UI page and, with ``live``, wait until it follows the event stream."""
        b = self.browser
        b.get(self.daemon.url + path)
        b.wait_for(lambda: b.js("return document.readyState") == "complete", what="the page to load")
        if live:
            b.wait_for(lambda: b.find("live-status").get_attribute("data-state") == "live",
                       what="the page to follow /api/events")

    def mark_page(self) -> None:
        """Tag this page's window; :meth:`assert_not_reloaded` checks the tag survived."""
        self.browser.js("window.__mozpoolTestMarker = 'still here';")

    def assert_not_reloaded(self) -> None:
        self.assertEqual(self.browser.js("return window.__mozpoolTestMarker || null;"), "still here",
                         "the page was reloaded (or left), not updated in place")

    def assert_no_js_errors(self) -> None:
        errors = [e for e in self.browser.console_errors() if not any(h in e for h in _HARMLESS_CONSOLE)]
        self.assertEqual(errors, [], "JavaScript errors on the page")

    def stable(self, read: Any) -> Any:
        """``read()``, again if a live update replaced an element it was looking at."""
        return self.browser.wait_for(lambda: (read(),), what="a stable read of the page")[0]

    def click(self, testid: str) -> None:
        """Click the element (found again if a live update replaced it before the click)."""
        def go() -> bool:
            element = self.browser.find(testid)
            self.browser.js("arguments[0].scrollIntoView({block: 'center'});", element)
            element.click()
            return True

        self.browser.wait_for(go, what=f"a click on {testid}")

    def confirm(self, expect: str) -> None:
        """Answer the confirmation dialog with OK, after checking it asks about ``expect``."""
        b = self.browser
        b.wait_for(lambda: b.find("confirm-dialog").get_attribute("open") is not None, what="the confirmation")
        self.assertIn(expect, self.stable(lambda: b.text_of("confirm-message")))
        b.find("confirm-ok").click()

    def result_of(self, form_testid: str) -> Any:
        """The ``action-result`` element of the API form whose submit button is ``form_testid``."""
        from selenium.webdriver.common.by import By

        form = self.browser.find(form_testid).find_element(By.XPATH, "./ancestor::form[1]")
        return form.find_element(By.CSS_SELECTOR, '[data-testid="action-result"]')

    def wait_result(self, form_testid: str, kind: str, timeout: float = 15) -> str:
        """Wait for the form's result to be ``kind`` (ok or error, not "sending…"); its text."""
        def done() -> str | None:
            out = self.result_of(form_testid)
            text = out.text
            return text if out.get_attribute("data-result") == kind and "sending" not in text else None

        return self.browser.wait_for(done, timeout, what=f"{form_testid} to end {kind}")

    def set_value(self, testid: str, value: str) -> None:
        """Type ``value`` over what the field holds, as a person would (every key an input event)."""
        from selenium.webdriver.common.keys import Keys

        element = self.browser.find(testid)
        element.click()
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(Keys.BACKSPACE)
        if value:
            element.send_keys(value)

    def attr(self, testid: str, name: str = "data-state") -> str:
        """An attribute of the element ``testid``, read again if a live update replaced it."""
        return self.browser.wait_for(lambda: self.browser.find(testid).get_attribute(name) or "",
                                     what=f"{testid}'s {name}")

    def select(self, testid: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.browser.find(testid)).select_by_value(value)

    def device_state(self, name: str) -> str:
        code, body = self.daemon.call("GET", f"/api/device/{name}/state/")
        self.assertEqual(code, 200, body)
        return body["state"]

    def force_state(self, name: str, old: str, new: str) -> None:
        code, body = self.daemon.call("POST", f"/api/device/{name}/state-change/{old}/to/{new}/", {})
        self.assertEqual(code, 200, body)

    def restore_ready(self, name: str) -> None:
        """Put a device a test parked back to work (best effort: the next test waits for ready)."""
        state = self.device_state(name)
        if state != "ready":
            self.daemon.call("POST", f"/api/device/{name}/state-change/{state}/to/ready/", {})


class Flows(UITestCase):
    """The issue's flows on one pool of 8 simulated pandas. Time scale 0.02: the pool is ready in
    about 3 s and a request in about 4 s, slow enough that a request page can be seen to change."""

    fakes = 8
    time_scale = 0.02

    def test_ui_loads(self) -> None:
        """The daemon serves the UI at /ui/ (and / sends there), with its assets, and the page
        follows the event stream without a JavaScript error."""
        b = self.browser
        b.get(self.daemon.url + "/")
        b.wait_for(lambda: b.url == self.daemon.url + "/ui/", what="/ to redirect to /ui/")
        self.open("/ui/")
        self.assertIn("MozPool", b.driver.title)
        self.assertTrue(b.js("return !!window.htmx"), "htmx loaded from /ui/static/")
        self.assertEqual(self.stable(lambda: b.text_of("count-total")).split()[0], "8")
        self.assert_no_js_errors()

    def test_overview_updates_live(self) -> None:
        """The overview shows the pool; a device that changes state elsewhere (here: the API)
        appears among the devices that need a person, and leaves again, without a reload."""
        name = OVERVIEW_DEVICE
        self.daemon.wait_ready([name])
        self.open("/ui/")
        b = self.browser
        self.assertEqual(self.stable(lambda: b.text_of("count-total")).split()[0], "8")
        self.assertEqual(self.stable(lambda: len(b.find_all("type-row"))), 1, "one hardware type")
        self.assertIn(self.daemon.url.split("//")[1], self.stable(lambda: b.text_of("servers-section")))

        def needing() -> list[str]:
            return [row.text for row in b.find_all("needs-human-row")]

        self.assertFalse(any(name in row for row in self.stable(needing)))
        self.mark_page()
        self.addCleanup(self.restore_ready, name)
        self.force_state(name, "ready", "locked_out")
        row = b.wait_for(lambda: next((r for r in needing() if name in r), None), what=f"{name} to need a person")
        self.assertIn("locked_out", row)
        self.assert_not_reloaded()

        self.force_state(name, "locked_out", "ready")
        b.wait_for(lambda: not any(name in r for r in needing()), what=f"{name} to leave the list")
        self.assert_not_reloaded()
        self.assert_no_js_errors()

    def test_new_request_reaches_ready_live(self) -> None:
        """A request made from the form opens its page, which shows it reach ready by itself."""
        name = REQUEST_DEVICE
        self.daemon.wait_ready([name])
        self.open("/ui/requests/new", live=False)
        b = self.browser
        self.set_value("new-request-device", name)
        self.set_value("new-request-assignee", "ui-test@example.com")
        self.set_value("new-request-duration", "600")
        self.select("new-request-image", "android")
        self.click("new-request-submit")
        b.wait_for(lambda: "/ui/request/" in b.url, what="the new request's page")
        request_id = int(b.url.rstrip("/").rsplit("/", 1)[1])
        self.addCleanup(self.daemon.call, "POST", f"/api/request/{request_id}/return/")
        # The state the page first shows, read as soon as it is there (not after the event stream
        # connected: on a busy machine that can take long enough for the request to get ready).
        first = self.attr("request-state")
        b.wait_for(lambda: b.find("live-status").get_attribute("data-state") == "live", what="the page to be live")
        self.mark_page()
        b.wait_for(lambda: b.find("request-state").get_attribute("data-state") == "ready", timeout=60,
                   what="the request to show ready")
        self.assert_not_reloaded()
        self.assertEqual(self.stable(lambda: b.text_of("request-device")), name)
        details = self.daemon.get(f"/api/request/{request_id}/details/")
        self.assertEqual((details["assigned_device"], details["assignee"], details["image"]),
                         (name, "ui-test@example.com", "android"))
        self.assertEqual(self.daemon.get(f"/api/request/{request_id}/status/")["state"], "ready")
        # The log tail followed it too.
        self.assertTrue(self.stable(lambda: b.find_all("log-line")), "the request's log shows lines")
        self.assert_no_js_errors()
        # If the page opened after the request was already ready, nothing here was live; at
        # this time scale imaging takes seconds, so that would be a broken form or page.
        self.assertNotEqual(first, "ready", "the request was ready before its page was shown")

    def test_device_log_tail_shows_power_cycle(self) -> None:
        """A power-cycle started from the device's page (after its confirmation) shows in the log
        tail as it happens, newest first, without a reload."""
        name = POWER_DEVICE
        self.daemon.wait_ready([name])
        self.open(f"/ui/device/{name}")
        b = self.browser
        self.assertEqual(self.attr("device-state"), "ready")

        def ids() -> list[int]:
            return [int(li.get_attribute("data-log-id")) for li in b.find_all("log-line")]

        before = self.stable(lambda: max(ids(), default=0))
        self.mark_page()
        self.select("power-cycle-pxe", "")
        self.click("action-power-cycle")
        self.confirm(name)
        self.assertIn("Power-cycle", self.wait_result("action-power-cycle", "ok"))

        def new_lines() -> list[tuple[int, str]]:
            return [(int(li.get_attribute("data-log-id")), li.text) for li in b.find_all("log-line")
                    if int(li.get_attribute("data-log-id")) > before]

        def cycled() -> list[tuple[int, str]] | None:
            lines = new_lines()
            texts = " | ".join(t for _, t in lines)
            return lines if "power-cycle started" in texts and "power-cycle succeeded" in texts else None

        lines = b.wait_for(cycled, timeout=30, what="the power-cycle in the log tail")
        self.assert_not_reloaded()
        shown = self.stable(ids)
        self.assertEqual(shown, sorted(shown, reverse=True), "the log is newest first")
        # What the tail showed is what the API's log holds.
        log = {e["id"]: e for e in self.daemon.get(f"/api/device/{name}/log/?limit=200")["log"]}
        started = next(i for i, t in lines if "power-cycle started" in t)
        self.assertEqual((log[started]["source"], log[started]["message"]), ("bmm", "power-cycle started"))
        self.assert_no_js_errors()

    def test_devices_table_filters_and_sorts(self) -> None:
        """Text search by name, a filter, sorting both ways and paging, all in place."""
        self.open("/ui/devices")
        b = self.browser

        def names() -> list[str]:
            return [r.get_attribute("data-device") for r in b.find_all("device-row")]

        b.wait_for(lambda: names() == [f"panda-{i:04d}" for i in range(1, 9)], what="all, sorted by name")
        self.mark_page()

        # Search by name (as one types; no button).
        self.set_value("filter-name", "0007")
        b.wait_for(lambda: names() == ["panda-0007"], what="the name search")
        # (htmx pushes the URL after it swapped the table in: wait for it too)
        b.wait_for(lambda: "name=0007" in b.url, what="the URL to carry the search")
        self.set_value("filter-name", "")
        b.wait_for(lambda: len(names()) == 8, what="the search to clear")

        # Sort by name, descending, then by state.
        self.click("sort-name")
        b.wait_for(lambda: names() == [f"panda-{i:04d}" for i in range(8, 0, -1)], what="name, descending")
        b.wait_for(lambda: "dir=desc" in b.url, what="the URL to carry the order")
        self.click("sort-state")

        def by_state() -> list[tuple[str, str]] | None:
            if "sort=state" not in b.url:
                return None
            return [(r.find_element("css selector", '[data-testid="device-state"]').get_attribute("data-state"),
                     r.get_attribute("data-device")) for r in b.find_all("device-row")]

        rows = b.wait_for(by_state, what="the sort by state")
        self.assertEqual(rows, sorted(rows))
        self.assertEqual(len(rows), 8)

        # A select filter (applies on change, in place).
        self.select("filter-hardware_type", "panda")
        b.wait_for(lambda: "hardware_type=panda" in b.url and len(names()) == 8, what="the hardware filter")
        self.assert_not_reloaded()

        # Paging: three a page.
        self.open("/ui/devices?per_page=3")
        b.wait_for(lambda: names() == ["panda-0001", "panda-0002", "panda-0003"], what="page 1")
        self.assertIn("page 1 of 3", self.stable(lambda: b.text_of("page-info")))
        self.click("page-next")
        b.wait_for(lambda: names() == ["panda-0004", "panda-0005", "panda-0006"], what="page 2")
        self.assert_no_js_errors()

    def test_comments_edited_in_place_persist(self) -> None:
        """Comments edited in place show at once, survive a reload, and are what the API says."""
        name = COMMENTS_DEVICE
        self.open(f"/ui/device/{name}")
        b = self.browser
        text = f"SD card replaced {time.time():.0f}"
        self.addCleanup(self.daemon.call, "POST", f"/api/device/{name}/set-comments/", {"comments": None})
        self.assertFalse(self.stable(lambda: b.find("comments-input").is_displayed()), "the editor starts closed")
        self.click("comments-edit")
        b.wait_for(lambda: b.find("comments-input").is_displayed(), what="the editor to open")
        self.set_value("comments-input", text)
        self.click("comments-save")
        b.wait_for(lambda: b.text_of("device-comments") == text, what="the new comments on the page")
        b.wait_for(lambda: not b.find("comments-input").is_displayed(), what="the editor to close")

        self.assertEqual(self.daemon.devices()[name]["comments"], text)
        # A new page load (not the browser's cache: the page is rendered from the database).
        self.open(f"/ui/device/{name}", live=False)
        b.wait_for(lambda: b.text_of("device-comments") == text, what="the comments after a reload")
        # And the devices table shows them.
        self.open(f"/ui/devices?name={name}", live=False)
        b.wait_for(lambda: b.find("device-comments-cell").text == text, what="the comments in the table")
        self.assert_no_js_errors()

    def test_stale_forced_state_change_shows_409(self) -> None:
        """A forced state change whose old state is stale (the device moved since the page was
        read) is refused with 409, shown on the form and in an alert, and nothing changes."""
        name = STATE_DEVICE
        self.daemon.wait_ready([name])
        self.open(f"/ui/device/{name}")
        b = self.browser
        self.assertEqual(self.attr("state-change-old", "value"), "ready")
        # The operator fills the form in for the state on the screen ...
        self.set_value("state-change-old", "ready")
        self.select("state-change-new", "locked_out")
        # ... while someone else moves the device on.
        self.addCleanup(self.restore_ready, name)
        self.force_state(name, "ready", "troubleshooting")
        b.wait_for(lambda: b.find("device-state").get_attribute("data-state") == "troubleshooting",
                   what="the page to show the new state")
        self.assertEqual(self.attr("state-change-old", "value"), "ready", "what the operator typed stays")
        self.click("action-state-change")
        self.confirm(name)
        result = self.wait_result("action-state-change", "error")
        self.assertIn("409", result)
        self.assertIn("troubleshooting", result)
        alert = b.wait_for(lambda: b.find("flash-error"), what="an error alert")
        self.assertEqual(alert.get_attribute("role"), "alert")
        self.assertIn("409", alert.text)
        self.assertEqual(self.device_state(name), "troubleshooting", "nothing changed")
        self.assertEqual(self.attr("device-state"), "troubleshooting")

    def test_old_pages_land_on_their_new_pages(self) -> None:
        """The original UI's page paths (bookmarks) land on the pages that replaced them."""
        b = self.browser
        cases = [
            ("/ui/mozpool.html", "/ui/requests", "requests-table"),
            ("/ui/lifeguard.html", "/ui/devices", "devices-table"),
            ("/ui/bmm.html", "/ui/lab", "relay-board"),
            ("/ui/log.html?device=panda-0006", "/ui/device/panda-0006", "device-details"),
            ("/ui/index.html", "/ui/", "pool-counts"),
        ]
        for old, new, testid in cases:
            b.get(self.daemon.url + old)
            b.wait_for(lambda: b.url == self.daemon.url + new, what=f"{old} to land on {new}")
            # the requests page may show its empty form of the table
            b.wait_for(lambda: b.find_all(testid) or b.find_all(testid + "-empty"),
                       what=f"{new} (from {old}) to show {testid}")
            if "device=" in old:
                self.assertIn("panda-0006", self.stable(lambda: b.text_of("page-title")))
        self.assert_no_js_errors()


class Queue(UITestCase):
    """Issue 14 in the browser: one device, held, so every other request waits in the queue."""

    fakes = 1
    time_scale = 0.02

    def request(self, priority: int) -> int:
        code, body = self.daemon.call("POST", "/api/device/any/request/",
                                      {"assignee": "queue-test@example.com", "duration": 600, "image": "android",
                                       "priority": priority})
        self.assertEqual(code, 200, body)
        request_id = int(body["request"]["id"])
        self.addCleanup(self.daemon.call, "POST", f"/api/request/{request_id}/return/")
        return request_id

    def test_waiting_request_shows_its_place(self) -> None:
        """A request made from the form with a low priority waits: its page shows its place, the
        ETA and why; a priority-90 request made meanwhile moves it back, on the page, without a
        reload; the requests list shows both priorities and its place."""
        d = self.daemon
        b = self.browser
        d.wait_ready()
        holder = self.request(50)
        d.wait_for(lambda: d.get(f"/api/request/{holder}/status/")["state"] == "ready", 60, "the device held")

        self.open("/ui/requests/new", live=False)
        self.set_value("new-request-assignee", "ui-queue@example.com")
        self.set_value("new-request-duration", "600")
        self.set_value("new-request-priority", "20")
        self.set_value("new-request-queue-timeout", "900")
        self.click("new-request-submit")
        b.wait_for(lambda: "/ui/request/" in b.url, what="the new request's page")
        low = int(b.url.rstrip("/").rsplit("/", 1)[1])
        self.addCleanup(d.call, "POST", f"/api/request/{low}/return/")
        details = d.get(f"/api/request/{low}/details/")
        self.assertEqual((details["priority"], details["queue_timeout"]), (20, 900))
        b.wait_for(lambda: b.find("live-status").get_attribute("data-state") == "live", what="the page to be live")
        self.assertEqual(self.attr("queue-position", "data-position"), "1")
        self.assertEqual(self.stable(lambda: b.text_of("queue-ahead")), "0 requests that could take the same devices")
        self.assertTrue(self.stable(lambda: b.text_of("queue-eta")).startswith(("in ~", "any moment")))
        self.assertIn("UTC", self.attr("queue-eta", "title"))
        self.assertTrue(self.stable(lambda: b.text_of("queue-why")))
        self.assertEqual(self.stable(lambda: b.text_of("request-priority")), "20")

        self.mark_page()
        high = self.request(90)
        b.wait_for(lambda: b.find("queue-position").get_attribute("data-position") == "2", timeout=20,
                   what="the priority-90 request to go ahead on the page")
        self.assertEqual(self.stable(lambda: b.text_of("queue-ahead")), "1 request that could take the same devices")
        self.assert_not_reloaded()
        self.assert_no_js_errors()

        self.open("/ui/requests")

        def row(request_id: int) -> Any:
            return next(r for r in b.find_all("request-row") if f"#{request_id}" in r.text)

        def position(request_id: int) -> str:
            from selenium.webdriver.common.by import By

            found = row(request_id).find_elements(By.CSS_SELECTOR, '[data-testid="request-queue-position"]')
            return found[0].get_attribute("data-position") if found else ""

        self.assertEqual(self.stable(lambda: (position(low), position(high), position(holder))), ("2", "1", ""))
        self.assertIn("20", self.stable(lambda: row(low).text))
        self.assert_no_js_errors()


class Screenshots(UITestCase):
    """The README's pictures (only with MOZPOOL_SCREENSHOTS=1): a pool with a little of
    everything -- requests in use, a device being imaged, a failed one, one locked out."""

    fakes = 24
    time_scale = 0.02

    def setUp(self) -> None:
        if not screenshots_wanted():
            raise SkipTest("set MOZPOOL_SCREENSHOTS=1 to write docs/ui-*.png")
        super().setUp()

    def test_screenshots(self) -> None:
        d = self.daemon
        b = self.browser
        b.driver.set_window_size(1280, 900)
        d.call("POST", "/api/device/panda-0009/set-comments/", {"comments": "SD card replaced; watching it"})
        d.call("POST", "/api/device/panda-0021/set-environment/", {"environment": "staging"})
        self.force_state("panda-0017", "ready", "locked_out")
        d.call("POST", "/api/device/panda-0017/set-comments/", {"comments": "USB hub flaky, see bug 123"})
        # (a failed state that does not start a self-test of its own)
        self.force_state("panda-0013", "ready", "failed_self_test")
        d.call("POST", "/api/device/panda-0013/set-comments/", {"comments": "fails its self-test; reseat the SD card"})
        ids = []
        for device in ("panda-0002", "panda-0005"):
            code, body = d.call("POST", f"/api/device/{device}/request/",
                                {"assignee": "releng@example.com", "duration": 7200, "image": "android"})
            self.assertEqual(code, 200, body)
            ids.append(body["request"]["id"])
        for request_id in ids:
            d.wait_for(lambda: d.get(f"/api/request/{request_id}/status/")["state"] == "ready", 60, "ready requests")
        code, body = d.call("POST", "/api/device/any/request/",
                            {"assignee": "ci@example.com", "duration": 3600, "image": "android"})
        self.open("/ui/")
        b.screenshot(os.path.join(DOCS, "ui-overview.png"))
        self.open("/ui/devices")
        b.screenshot(os.path.join(DOCS, "ui-devices.png"))
        self.open("/ui/device/panda-0009")
        before = self.stable(lambda: max(int(li.get_attribute("data-log-id")) for li in b.find_all("log-line")))
        d.call("POST", "/api/device/panda-0009/power-cycle/", {})
        b.wait_for(lambda: any("power-cycle succeeded" in li.text for li in b.find_all("log-line")
                               if int(li.get_attribute("data-log-id")) > before), 30,
                   what="the power-cycle in the log")
        b.screenshot(os.path.join(DOCS, "ui-device.png"))
        for name in ("ui-overview.png", "ui-devices.png", "ui-device.png"):
            self.assertGreater(os.path.getsize(os.path.join(DOCS, name)), 10_000)


class SignIn(UITestCase):
    """Auth required (issue 10): a reader sees no actions, signing in with an operator's token
    shows them and they work (the page echoes its CSRF value), and signing out hides them again."""

    fakes = 2
    extra_args = ("--auth", "required")

    def token(self, name: str, role: str) -> str:
        import subprocess
        import sys

        out = subprocess.run(
            [sys.executable, "-m", "mozpool.cli.token", "--db", self.daemon.db, "create", name, "--role", role],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        return out.strip().splitlines()[-1]

    def test_sign_in_shows_and_enables_actions(self) -> None:
        b = self.browser
        self.open("/ui/device/panda-0001")
        b.wait_for(lambda: b.find("signin-link").is_displayed(), what="the sign-in link")
        b.wait_for(lambda: not b.find("comments-edit").is_displayed(), what="actions hidden from an anonymous reader")

        token = self.token(f"op-{int(time.time() * 1000)}", "operator")
        b.get(self.daemon.url + "/ui/signin?next=/ui/device/panda-0001")
        b.find("signin-token").send_keys(token)
        b.find("signin-submit").click()
        b.wait_for(lambda: "/ui/device/panda-0001" in b.driver.current_url, what="back on the device page")
        b.wait_for(lambda: "(operator)" in b.text_of("who-name"), what="the signed-in name")
        b.wait_for(lambda: b.find("comments-edit").is_displayed(), what="actions shown to an operator")
        self.assertFalse(b.find("comments-save").is_displayed(), "the editor itself starts closed")

        self.click("comments-edit")
        self.set_value("comments-input", "set by a signed-in operator")
        self.click("comments-save")
        self.assertEqual(self.daemon.wait_for(
            lambda: self._comments("panda-0001") == "set by a signed-in operator" or None, 15, "the comment saved"), True)

        self.click("signout")
        b.wait_for(lambda: b.find("signin-link").is_displayed(), what="signed out")
        b.get(self.daemon.url + "/ui/device/panda-0001")
        b.wait_for(lambda: not b.find("comments-edit").is_displayed(), what="actions hidden again")

    def _comments(self, device: str) -> Any:
        code, body = self.daemon.call("GET", "/api/device/list/?details")
        if code != 200:
            return None
        found = [d["comments"] for d in body["devices"] if d["name"] == device]
        return found[0] if found else None
