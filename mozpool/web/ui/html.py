"""Small pieces every UI page is built from: the layout, state badges, times, links, tables, pager.

Markup is ``twisted.web.template`` tags (escaped by the flattener).  Colours alone never carry
meaning: every state and category badge also shows a shape and its name in text, for readers
who cannot tell the colours apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import quote, urlencode

from twisted.python.filepath import FilePath
from twisted.web.template import Element, Tag, XMLFile, flattenString, renderer, tags

from mozpool import __version__
from mozpool.db.summary import category
from mozpool.serverurl import base_url
from mozpool.web.ui.queries import PARKED_STATES

TEMPLATES = FilePath(__file__).sibling("templates")

#: category -> (shape, words); the colour comes from the CSS class ``cat-<category>``.
CATEGORY_MARKS = {
    "idle": ("●", "idle"),
    "in_use": ("◆", "in use"),
    "processing": ("◐", "processing"),
    "failed": ("✖", "failed"),
}
#: The marker of devices parked for a person (a sub-kind of "processing").
PARKED_MARK = "■"

#: (path, label, id) of the navigation bar, in order.
NAV = (
    ("/ui/", "Overview", "overview"),
    ("/ui/lab", "Lab map", "lab"),
    ("/ui/devices", "Devices", "devices"),
    ("/ui/requests", "Requests", "requests"),
    ("/ui/requests/new", "New request", "new-request"),
    ("/ui/images", "Images", "images"),
    ("/ui/environments", "Environments", "environments"),
    ("/ui/pxe-configs", "PXE configs", "pxe-configs"),
    ("/ui/servers", "Servers", "servers"),
    ("/ui/boots", "Boot times", "boots"),
)


# --- layout -----------------------------------------------------------------------------------


class Layout(Element):
    """templates/page.xml around a page body: head, navigation, flash area, confirm dialog.

    ``events`` is the /api/events URL the page follows (None: not live)."""

    loader = XMLFile(TEMPLATES.child("page.xml"))

    def __init__(self, title: str, body: Any, section: str, server: str, events: str | None) -> None:
        super().__init__()
        self.title = title
        self.main = body
        self.section = section
        self.server = server
        self.events = events

    @renderer
    def slots(self, request: Any, tag: Tag) -> Tag:
        return tag.fillSlots(title=self.title, server=self.server, version=__version__)

    @renderer
    def body(self, request: Any, tag: Tag) -> Tag:
        if self.events is not None:
            tag(**{"data-events": self.events})
        return tag

    @renderer
    def asset(self, request: Any, tag: Tag) -> Tag:
        """Static URLs carry the version, so a new release is never served from a stale cache."""
        for attribute in ("href", "src"):
            if attribute in tag.attributes:
                tag.attributes[attribute] = f"{tag.attributes[attribute]}?v={__version__}"
        return tag

    @renderer
    def nav(self, request: Any, tag: Tag) -> Tag:
        items = []
        for path, label, name in NAV:
            link = tags.a(label, href=path, id=f"nav-{name}")
            if name == self.section:
                link(**{"aria-current": "page"})
            items.append(tags.li(link))
        return tag(items)

    @renderer
    def content(self, request: Any, tag: Tag) -> Any:
        return self.main


async def flatten(thing: Any) -> bytes:
    result: bytes = await flattenString(None, thing)
    return result


async def page_bytes(title: str, body: Any, section: str, server: str, events: str | None) -> bytes:
    return b"<!DOCTYPE html>\n" + await flatten(Layout(title, body, section, server, events))


# --- values -----------------------------------------------------------------------------------


def _badge(shape: str, words: str, look: str, testid: str, **attrs: Any) -> Tag:
    return tags.span(
        tags.span(shape, class_="mark", **{"aria-hidden": "true"}), " ", words,
        class_=f"badge cat-{look}", **{"data-testid": testid}, **attrs,
    )


def category_badge(cat: str, testid: str = "category") -> Tag:
    shape, words = CATEGORY_MARKS[cat]
    return _badge(shape, words, cat, testid, **{"data-category": cat})


def state_mark(state: str, cat: str) -> str:
    """The shape of a device state: its category's, or the square of a device parked for a person."""
    return PARKED_MARK if state in PARKED_STATES else CATEGORY_MARKS[cat][0]


def state_badge(state: str, cat: str | None = None, held: bool = False, testid: str = "device-state") -> Tag:
    """A device state: its category's colour and shape, and the state name in text."""
    cat = cat or category(state, held)
    badge = _badge(state_mark(state, cat), state, cat, testid, title=f"category: {CATEGORY_MARKS[cat][1]}",
                   **{"data-state": state, "data-category": cat})
    if state in PARKED_STATES:
        badge.attributes["class"] += " parked"
    return badge


#: How request states look: (the category colour they borrow, shape).
_REQUEST_LOOKS = {"ready": ("in_use", "◆"), "closed": ("closed", "○")}


def request_badge(state: str, testid: str = "request-state") -> Tag:
    """A request state, coloured like the device category it resembles (ready: in use)."""
    look, shape = ("failed", "✖") if state.startswith("failed_") else _REQUEST_LOOKS.get(state, ("processing", "◐"))
    return _badge(shape, state, look, testid, **{"data-state": state})


def _parse_api_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None


def relative(seconds: float) -> str:
    """``3 min ago`` / ``in 2 h``: the same words mozpool.js writes as time passes."""
    ahead = seconds < 0
    n = abs(int(seconds))
    if n < 10:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if n >= size:
            amount = f"{n // size} {unit}"
            break
    return f"in {amount}" if ahead else f"{amount} ago"


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``11th``, ``21st``: a place in the queue.  (The client has the
    same words in mozpool.client.api; the daemon does not import the client.)"""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def approximate(words: str) -> str:
    """An estimate's :func:`relative` words: ``in ~4 min``, ``any moment``, ``overdue by ~2
    min`` (the same as mozpool.js writes for ``data-approx`` times)."""
    if words == "just now":
        return "any moment"
    if words.startswith("in "):
        return "in ~" + words[3:]
    return "overdue by ~" + words[: -len(" ago")]


def when(api_time: str | None, now: float, testid: str | None = None, approx: bool = False) -> Any:
    """A UTC time (API form) shown relative to ``now``, the absolute time on hover; mozpool.js
    keeps the words current.  ``approx``: an estimate (``in ~4 min``)."""
    if not api_time:
        return tags.span("—", class_="muted")
    parsed = _parse_api_time(api_time)
    if parsed is None:
        return api_time
    epoch = (parsed - datetime(1970, 1, 1)).total_seconds()
    attrs = {"datetime": api_time[:19] + "Z", "title": api_time[:19].replace("T", " ") + " UTC"}
    if testid:
        attrs["data-testid"] = testid
    words = relative(now - epoch)
    if approx:
        attrs["data-approx"] = ""
        words = approximate(words)
    return tags.time(words, **attrs)


def text_or_dash(value: Any) -> Any:
    return tags.span("—", class_="muted") if value in (None, "") else str(value)


# --- links ------------------------------------------------------------------------------------


def device_url(name: str) -> str:
    return "/ui/device/" + quote(name, safe="")


def request_url(request_id: int) -> str:
    return f"/ui/request/{int(request_id)}"


def device_link(name: str, **attrs: Any) -> Tag:
    return tags.a(name, href=device_url(name), **attrs)


def request_link(request_id: int | None, **attrs: Any) -> Any:
    if request_id is None:
        return text_or_dash(None)
    return tags.a(f"#{request_id}", href=request_url(request_id), **attrs)


def server_ui_url(fqdn: str, path: str = "/ui/") -> str:
    """``path`` on the imaging server ``fqdn`` (``https://`` for one named so)."""
    return base_url(fqdn) + path


def query_url(path: str, params: dict[str, Any]) -> str:
    """``path?params`` with empty values left out."""
    kept = [(k, str(v)) for k, v in params.items() if v not in (None, "", False)]
    return path + ("?" + urlencode(kept) if kept else "")


# --- structures -------------------------------------------------------------------------------


def table(
    headers: Sequence[Any], rows: Iterable[Sequence[Any]], testid: str, row_testid: str | None = None,
    empty: str = "Nothing here.",
) -> Tag:
    """A plain data table that scrolls sideways on narrow screens."""
    body = []
    for row in rows:
        attrs = {"data-testid": row_testid} if row_testid else {}
        body.append(tags.tr([tags.td(cell) for cell in row], **attrs))
    if not body:
        return tags.p(empty, class_="empty", **{"data-testid": testid + "-empty"})
    head = tags.thead(tags.tr([tags.th(h, scope="col") for h in headers]))
    return tags.div(tags.table(head, tags.tbody(body), **{"data-testid": testid}), class_="table-wrap")


def definition_list(items: Iterable[tuple[str, Any]], testid: str | None = None) -> Tag:
    attrs = {"data-testid": testid} if testid else {}
    return tags.dl([[tags.dt(k), tags.dd(v)] for k, v in items], class_="details", **attrs)


def pager(page: int, pages: int, total: int, url_for: Callable[[int], str], noun: str) -> Tag:
    """Previous/next links and where we are (``page`` is 1-based)."""
    parts: list[Any] = []
    if page > 1:
        parts.append(tags.a("← first", href=url_for(1), **{"data-testid": "page-first"}))
        parts.append(tags.a("‹ previous", href=url_for(page - 1), rel="prev", **{"data-testid": "page-prev"}))
    parts.append(tags.span(
        f"page {page} of {max(pages, 1)} · {total} {noun}", class_="page-info", **{"data-testid": "page-info"}
    ))
    if page < pages:
        parts.append(tags.a("next ›", href=url_for(page + 1), rel="next", **{"data-testid": "page-next"}))
        parts.append(tags.a("last →", href=url_for(pages), **{"data-testid": "page-last"}))
    return tags.nav(parts, class_="pager", **{"aria-label": f"{noun} pages"})


def live_region(region_id: str, url: str, events: str, *children: Any, poll: int | None = None, **attrs: Any) -> Tag:
    """An element mozpool.js refetches (``url``, the part with id ``region_id`` swapped in) when
    one of ``events`` (space-separated /api/events types) arrives, at most about once a second;
    with ``poll``, also every ``poll`` seconds (for what changes without an event of the
    page's stream, such as a waiting request's place in the queue)."""
    return tags.div(
        *children,
        id=region_id,
        **{
            "data-live": events,
            "hx-get": url,
            "hx-trigger": "mp-refresh" + (f", every {int(poll)}s" if poll else ""),
            "hx-select": "#" + region_id,
            "hx-swap": "outerHTML",
        },
        **attrs,
    )


def log_list(lines: Sequence[dict[str, Any]], now: float, tail: str, owner: str, url: str) -> Tag:
    """A log, newest first.  mozpool.js prepends the ``tail`` events (device_log or request_log)
    of ``owner`` (device name or request id) as they come, and refetches ``url`` after a reset."""
    return tags.ol(
        [log_line(line, now) for line in lines], class_="log", id="log", reversed="reversed",
        **{"data-testid": "log", "data-log-tail": tail, "data-log-owner": owner, "data-log-url": url},
    )


def log_line(line: dict[str, Any], now: float) -> Tag:
    return tags.li(
        when(line["timestamp"], now), " ",
        tags.span(line["source"], class_="source"), " ",
        tags.span(line["message"], class_="message"),
        **{"data-testid": "log-line", "data-log-id": str(line["id"])},
    )
