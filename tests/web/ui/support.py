"""The operator UI behind the site's front resource, over the database of tests.web.support, and
a small reader of the pages it renders (elements by ``data-testid``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from twisted.internet import defer

from mozpool.db.pool import Database
from mozpool.web.api import MozpoolAPI
from mozpool.web.ui.app import OperatorUI
from tests.web.fakes import FakeBroker
from tests.web.support import APITest, Answer

HTML_TYPE = "text/html; charset=utf-8"
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list["Node"] = field(default_factory=list)

    def find(self, testid: str) -> list["Node"]:
        found = [self] if self.attrs.get("data-testid") == testid else []
        for child in self.children:
            found += child.find(testid)
        return found

    def by_id(self, element_id: str) -> "Node | None":
        if self.attrs.get("id") == element_id:
            return self
        for child in self.children:
            hit = child.by_id(element_id)
            if hit is not None:
                return hit
        return None


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        for node in self.stack:
            node.text += data


def parse(body: bytes) -> Node:
    builder = _TreeBuilder()
    builder.feed(body.decode("utf-8"))
    builder.close()
    return builder.root


class QueueBroker(FakeBroker):
    """A broker whose ``queue_place`` answers from ``places`` (request id -> the API's
    ``queue``; none for the others), as the UI reads waiting requests' places."""

    def __init__(self) -> None:
        super().__init__()
        self.places: dict[int, dict[str, Any]] = {}

    def queue_place(self, request_id: int) -> Any:
        self.calls.append(("queue_place", request_id))
        return defer.succeed(self.places.get(request_id))


class UITest(APITest):
    """Mixin: ``self.ui`` is server A's UI, reached through the site's front resource as the
    daemon serves it (so /api/ still goes to the API); ``self.queue`` says where waiting
    requests stand."""

    def makeAPI(self, db: Database | None = None, **kw: Any) -> MozpoolAPI:
        api = super().makeAPI(db, **kw)
        self.queue = QueueBroker()
        self.ui = OperatorUI(db or self.db, self.fqdn, self.clock, broker=self.queue)
        self.front.inner = api.resource(self.ui.resource())
        return api

    async def page(self, path: str | bytes, code: int = 200, **kw: Any) -> Node:
        """The page at ``path``, parsed, after checking its status and HTML type."""
        answer = await self.call("GET", path, **kw)
        self.assertEqual(answer.code, code, answer.body[:2000])  # type: ignore[attr-defined]
        self.assertEqual(answer.header("content-type"), HTML_TYPE)  # type: ignore[attr-defined]
        return parse(answer.body)

    async def redirect(self, path: str, code: int) -> str:
        answer: Answer = await self.call("GET", path)
        self.assertEqual(answer.code, code, answer.body)  # type: ignore[attr-defined]
        location = answer.header("location")
        assert location is not None
        return location

    def texts(self, doc: Node, testid: str) -> list[str]:
        return [" ".join(n.text.split()) for n in doc.find(testid)]

    def attr(self, doc: Node, testid: str, name: str) -> list[str]:
        return [n.attrs.get(name, "") for n in doc.find(testid)]
