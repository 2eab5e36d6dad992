"""Query-string parameters of the UI pages, checked: bad values are a 400 page, never a 500."""

from __future__ import annotations

from typing import Any

from mozpool.db.summary import CATEGORIES
from mozpool.web.ui.queries import DEVICE_FILTERS, DEVICE_SORTS, DeviceQuery

PER_PAGE = 100
MAX_PER_PAGE = 500
MAX_PAGE = 1_000_000
MAX_TEXT = 255


class BadParameter(ValueError):
    """A query parameter the page cannot use; the message says which and why."""


def text(request: Any, name: str) -> str:
    """The parameter's last value as text ("" when absent)."""
    values = request.args.get(name.encode("ascii")) or [b""]
    try:
        value = values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise BadParameter(f"{name} is not UTF-8 text") from None
    if len(value) > MAX_TEXT:
        raise BadParameter(f"{name} is longer than {MAX_TEXT} characters")
    return value.strip()


def number(request: Any, name: str, default: int, high: int) -> int:
    raw = text(request, name)
    if raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise BadParameter(f"{name} must be a whole number from 1 to {high}, not {raw!r}")
    return int(raw)


def choice(request: Any, name: str, allowed: tuple[str, ...] | list[str], default: str = "") -> str:
    raw = text(request, name)
    if raw == "":
        return default
    if raw not in allowed:
        raise BadParameter(f"{name} must be one of {', '.join(allowed)}, not {raw!r}")
    return raw


def flag(request: Any, name: str) -> bool:
    return choice(request, name, ("0", "1"), "0") == "1"


def page(request: Any) -> tuple[int, int]:
    """(page, per_page) of a paged table."""
    return number(request, "page", 1, MAX_PAGE), number(request, "per_page", PER_PAGE, MAX_PER_PAGE)


def device_query(request: Any) -> DeviceQuery:
    """Filters, sort and page of the devices table from ``?name=&state=&...&sort=&dir=&page=``."""
    filters = {}
    for key in DEVICE_FILTERS:
        value = choice(request, key, CATEGORIES) if key == "category" else text(request, key)
        if value:
            filters[key] = value
    number_of_page, per_page = page(request)
    return DeviceQuery(
        name=text(request, "name"),
        filters=filters,
        held=choice(request, "held", ("yes", "no")),
        sort=choice(request, "sort", tuple(DEVICE_SORTS), "name"),
        descending=choice(request, "dir", ("asc", "desc"), "asc") == "desc",
        page=number_of_page,
        per_page=per_page,
    )


def device_query_params(query: DeviceQuery, **changes: Any) -> dict[str, Any]:
    """The query string of ``query`` (with ``changes``), defaults left out: the page's URL."""
    params: dict[str, Any] = {"name": query.name, **query.filters, "held": query.held}
    if query.sort != "name":
        params["sort"] = query.sort
    if query.descending:
        params["dir"] = "desc"
    if query.per_page != PER_PAGE:
        params["per_page"] = query.per_page
    if query.page != 1:
        params["page"] = query.page
    params.update(changes)
    if params.get("page") == 1:
        del params["page"]
    return params
