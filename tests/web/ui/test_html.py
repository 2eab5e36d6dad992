"""The UI's small building blocks: relative times, badges that do not rely on colour."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mozpool.web.ui.html import approximate, live_region, ordinal, relative, request_badge, state_badge, when
from tests.web.ui.support import parse

# 2013-04-02T17:05:11 UTC
NOW = 1364922311


def render(tag: object) -> str:
    from twisted.web.template import flattenString

    result: list[bytes] = []
    flattenString(None, tag).addCallback(result.append)
    return result[0].decode("utf-8")


class RelativeTimes(SynchronousTestCase):
    def test_words(self) -> None:
        cases = {0: "just now", 9: "just now", -9: "just now", 10: "10 s ago", 59: "59 s ago", 60: "1 min ago",
                 3599: "59 min ago", 3600: "1 h ago", 86399: "23 h ago", 86400: "1 d ago", 400000: "4 d ago",
                 -3600: "in 1 h", -90: "in 1 min"}
        for seconds, words in cases.items():
            self.assertEqual(relative(seconds), words, seconds)

    def test_the_absolute_time_is_on_hover(self) -> None:
        doc = parse(render(when("2013-04-02T17:02:11", NOW, testid="t")).encode())
        node = doc.find("t")[0]
        self.assertEqual((node.tag, node.text), ("time", "3 min ago"))
        self.assertEqual(node.attrs["datetime"], "2013-04-02T17:02:11Z")
        self.assertEqual(node.attrs["title"], "2013-04-02 17:02:11 UTC")

    def test_no_time(self) -> None:
        self.assertIn("—", render(when(None, NOW)))

    def test_an_estimate(self) -> None:
        """An ETA reads as one (``in ~4 min``), marked so mozpool.js keeps the tilde when it
        rewrites the words; the exact time is still on hover."""
        self.assertEqual([approximate(relative(s)) for s in (-240, -5, 5, 120)],
                         ["in ~4 min", "any moment", "any moment", "overdue by ~2 min"])
        node = parse(render(when("2013-04-02T17:09:11", NOW, testid="t", approx=True)).encode()).find("t")[0]
        self.assertEqual((node.text, node.attrs["title"]), ("in ~4 min", "2013-04-02 17:09:11 UTC"))
        self.assertIn("data-approx", node.attrs)
        self.assertNotIn("data-approx", parse(render(when("2013-04-02T17:09:11", NOW, testid="t")).encode())
                         .find("t")[0].attrs)

    def test_ordinal(self) -> None:
        self.assertEqual([ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 102, 111)],
                         ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "102nd", "111th"])


class LiveRegions(SynchronousTestCase):
    def test_poll(self) -> None:
        """A region refetched on its events, and with ``poll`` every so many seconds too."""
        plain = parse(render(live_region("r", "/u", "request_state")).encode()).by_id("r")
        polled = parse(render(live_region("r", "/u", "request_state", poll=5)).encode()).by_id("r")
        assert plain is not None and polled is not None
        self.assertEqual((plain.attrs["hx-trigger"], polled.attrs["hx-trigger"]),
                         ("mp-refresh", "mp-refresh, every 5s"))


class Badges(SynchronousTestCase):
    def test_each_category_has_a_shape_and_words(self) -> None:
        shapes = {}
        for state, held, cat in (("ready", False, "idle"), ("ready", True, "in_use"),
                                 ("pxe_booting", False, "processing"), ("failed_self_test", False, "failed"),
                                 ("locked_out", False, "processing")):
            node = parse(render(state_badge(state, held=held)).encode()).find("device-state")[0]
            self.assertEqual(node.attrs["data-category"], cat)
            self.assertIn(state, node.text)  # the state in words, not only a colour
            shapes[state, held] = node.text.split()[0]
        self.assertEqual(len(set(shapes.values())), 5)

    def test_request_badges(self) -> None:
        for state, look in (("ready", "in_use"), ("closed", "closed"), ("pending", "processing"),
                            ("failed_bad_image", "failed")):
            node = parse(render(request_badge(state)).encode()).find("request-state")[0]
            self.assertIn(f"cat-{look}", node.attrs["class"])
            self.assertIn(state, node.text)
