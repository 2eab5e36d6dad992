"""The UI's small building blocks: relative times, badges that do not rely on colour."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mozpool.web.ui.html import relative, request_badge, state_badge, when
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
