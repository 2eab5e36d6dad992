"""The UI's health parts (issue 15): the why box and timeline on the device and request pages,
the why pages, the overview's reasons and the boot times page."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.template import tags

from mozpool.db import boots, history
from mozpool.db.pool import Database
from mozpool.health.explain import Explainer
from mozpool.web.api import MozpoolAPI
from mozpool.web.ui import why
from mozpool.web.ui.app import OperatorUI
from mozpool.web.ui.html import flatten
from tests.support.dbtest import on_both_backends
from tests.web.support import A
from tests.web.ui.support import UITest


class WhyPages(UITest):
    def makeAPI(self, db: Database | None = None, **kw: Any) -> MozpoolAPI:
        health = Explainer(db or self.db, self.clock)
        api = super().makeAPI(db, health=health, **kw)
        self.ui = OperatorUI(db or self.db, self.fqdn, self.clock, health=health)
        self.front.inner = api.resource(self.ui.resource())
        return api

    async def fail(self, device: str) -> None:
        """panda's last pxe_booting timeout, as the machine records it."""
        await self.sql("UPDATE devices SET state = 'failed_pxe_booting', state_timeout = NULL,"
                       " state_counters = '{\"pxe_booting\": 31}' WHERE name = ?", (device,))
        (device_id,) = (await self.sql("SELECT id FROM devices WHERE name = ?", (device,)))[0]
        await self.db.runInteraction(history.record, history.Entry(
            history.DEVICE, int(device_id), "2013-04-02 17:00:00", "pxe_booting", "failed_pxe_booting", "timeout", A,
            {"counter": "pxe_booting", "count": 31, "limit": 30}))

    async def test_the_device_page_says_why_and_shows_the_timeline(self) -> None:
        await self.fail("panda-0002")
        doc = await self.page("/ui/device/panda-0002")
        self.assertEqual(self.texts(doc, "why-because"),
                         ["pxe_booting reached 31 (limit 30) (timeout in pxe_booting)"])
        self.assertEqual(self.texts(doc, "why-failure"),
                         ["failed_pxe_booting in pxe_booting after 31 attempts: pxe_booting reached 31 (limit 30)"
                          " (timeout in pxe_booting)"])
        self.assertEqual(self.attr(doc, "why-link", "href"), ["/ui/device/panda-0002/why"])
        rows = self.texts(doc, "timeline-row")
        self.assertEqual(len(rows), 1)
        self.assertIn("failed_pxe_booting", rows[0])
        self.assertIn("pxe_booting = 31 (limit 30)", rows[0])
        region = doc.by_id("device-health")
        assert region is not None
        self.assertEqual(region.attrs["hx-get"], "/ui/device/panda-0002/health")
        fragment = await self.page("/ui/device/panda-0002/health")
        self.assertEqual(len(fragment.find("timeline-row")), 1)

    async def test_the_why_page(self) -> None:
        await self.fail("panda-0002")
        doc = await self.page("/ui/device/panda-0002/why")
        self.assertEqual(self.texts(doc, "page-title"), ["Why is panda-0002 failed_pxe_booting?"])
        self.assertIn("timeout", self.texts(doc, "why-rule")[0])
        (rows,) = self.texts(doc, "why-rule-rows")
        self.assertIn("timeoutpxe_booting", rows)
        self.assertIn("over_limitfailed_pxe_booting", rows)
        self.assertEqual(self.texts(doc, "why-counters"), ["counter value limit gives up at pxe_booting 31 30 31"])
        self.assertIn("please_self_test", self.texts(doc, "why-waiting-for")[0])
        await self.page("/ui/device/nope/why", 404)

    async def test_the_request_page_and_its_why(self) -> None:
        request_id = await self.add_request(device="panda-0003", state="pending")
        await self.db.runInteraction(history.record, history.Entry(
            history.REQUEST, request_id, "2013-04-02 17:00:00", "contacting_lifeguard", "pending",
            "lifeguard_contacted", A))
        doc = await self.page(f"/ui/request/{request_id}")
        rows = self.texts(doc, "timeline-row")
        self.assertEqual(len(rows), 1)
        self.assertIn("lifeguard_contacted", rows[0])
        self.assertEqual(self.attr(doc, "why-link", "href"), [f"/ui/request/{request_id}/why"])
        why = await self.page(f"/ui/request/{request_id}/why")
        self.assertIn("lifeguard_finished", self.texts(why, "why-waiting-for")[0])

    async def test_the_overview_says_why(self) -> None:
        await self.fail("panda-0002")
        await self.sql("UPDATE devices SET state = 'locked_out' WHERE name = 'panda-0001'")
        doc = await self.page("/ui/")
        reasons = self.texts(doc, "needs-human-why")
        self.assertEqual(reasons, ["failed_pxe_booting in pxe_booting after 31 attempts: pxe_booting reached 31"
                                   " (limit 30) (timeout in pxe_booting)", "—"])
        self.assertEqual(self.texts(doc, "failure-phases"), ["Failed in: pxe_booting (1)"])

    async def test_boot_times(self) -> None:
        (device_id,) = (await self.sql("SELECT id FROM devices WHERE name = 'panda-0001'"))[0]
        await self.db.runInteraction(boots.start, int(device_id), A, "2013-04-02 17:00:00")
        await self.db.runInteraction(boots.mark, int(device_id), "power_on", "2013-04-02 17:00:02")
        doc = await self.page("/ui/boots")
        self.assertEqual(self.attr(doc, "boot-group", "data-hardware-type"), ["panda"])
        self.assertEqual(self.texts(doc, "boot-phase-row"), ["power_cycle 1 2.0 2.0 2.0"])
        await self.page("/ui/boots?hours=0", 400)


WhyPagesSQLite, WhyPagesMariaDB = on_both_backends(WhyPages)


class NextLine(SynchronousTestCase):
    """Each time in "what happens next" is followed once by its live relative time (not the
    API's "(in N s)" of the moment it answered, nor one time's words after another's)."""

    def text(self, summary: str, timeout_at: str | None, now: float) -> tuple[str, list[str]]:
        html = self.successResultOf(defer.ensureDeferred(flatten(tags.p(why._next_line(
            {"summary": summary, "timeout_at": timeout_at}, now))))).decode("utf-8")
        return re.sub(r"<[^>]+>", "", html), re.findall(r'data-testid="(why-next-at)"', html)

    def test_times_in_a_request_summary(self) -> None:
        now = 1796040000.0  # 2026-11-30T12:00:00Z
        summary = ("waits for close; times out at 2026-11-30T12:00:30.026 (in 31 s): expire → closed; expires at"
                   " 2026-11-30T12:03:00 unless renewed, then closed; gives up waiting for a device at"
                   " 2026-11-30T12:53:00.980 (its queue_timeout)")
        text, ids = self.text(summary, "2026-11-30T12:00:30.026", now)
        self.assertEqual(text, "waits for close; times out at 2026-11-30T12:00:30.026 (in 30 s): expire → closed;"
                               " expires at 2026-11-30T12:03:00 (in 3 min) unless renewed, then closed; gives up"
                               " waiting for a device at 2026-11-30T12:53:00.980 (in 53 min) (its queue_timeout)")
        self.assertEqual(ids, ["why-next-at"])

    def test_overdue_and_no_timer(self) -> None:
        summary = "times out at 2026-11-30T11:59:57 (overdue by 3 s: the next poll takes it): → ready"
        self.assertEqual(self.text(summary, "2026-11-30T11:59:57", 1796040000.0)[0], summary)
        self.assertEqual(self.text("no timer: waits for a person", None, 1796040000.0)[0],
                         "no timer: waits for a person")
