"""The bodies of the UI pages, from data the routes read (mozpool.web.ui.app).

Reads are rendered here; every write is a ``form.api`` that mozpool.js sends to the JSON API
(``data-api-method`` + ``data-api-path``, fields as the JSON body), the same call a script would
make.  ``data-owner`` names the server that owns the object, for calls the API redirects.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import Any, Iterable, Sequence
from urllib.parse import quote

from twisted.web.template import Tag, tags

from mozpool.bmm.interfaces import PowerConfigError
from mozpool.bmm.power import DEFAULT_SCHEME, kind_of, parse_location, scheme_of
from mozpool.bmm.relay import BANKS, RELAYS, RelayInfo
from mozpool.db.summary import CATEGORIES
from mozpool.serverurl import base_url
from mozpool.web.ui import params
from mozpool.web.ui.html import (
    CATEGORY_MARKS,
    category_badge,
    definition_list,
    device_link,
    device_url,
    live_region,
    log_list,
    ordinal,
    pager,
    query_url,
    request_badge,
    request_link,
    request_url,
    server_ui_url,
    state_badge,
    state_mark,
    table,
    text_or_dash,
    when,
)
from mozpool.web.ui.queries import PARKED_STATES, DeviceQuery
from mozpool.web.ui.why import failure_text

#: The /api/events types that change what the pool-wide pages show (logs excluded: they are
#: most of the stream and no pool-wide page shows them).
POOL_EVENTS = "device_state request_state request_device device_comments device_environment"
LOG_LIMIT = 1000
#: Seconds between two reads of a waiting request's place in the queue on its page.
QUEUE_POLL = 5


def _ids(testid: str, **attrs: Any) -> dict[str, Any]:
    return {"data-testid": testid, **attrs}


def _section(title: str, *content: Any, testid: str | None = None, **attrs: Any) -> Tag:
    extra = _ids(testid) if testid else {}
    return tags.section(tags.h2(title), *content, **extra, **attrs)


def _owner_note(owner: str, this_server: str, what: str, path: str) -> Any:
    """Says that another server owns what this page shows (``path`` on that server)."""
    if owner == this_server:
        return ""
    return tags.p(
        f"This {what} belongs to imaging server {owner}; actions are sent to it. ",
        tags.a(f"Open this page on {owner}", href=server_ui_url(owner, path)), ".",
        class_="note", **_ids("owner-note"),
    )


# --- forms that call the API -------------------------------------------------------------------


def api_form(
    method: str, path: str, *fields: Any, label: str, testid: str, owner: str,
    confirm: str | None = None, result: str | None = None, after: str | None = None, style: str = "",
    done: str | None = None, needs: str = "operator", **attrs: Any,
) -> Tag:
    """A form mozpool.js sends to the API; its outcome is written to its ``action-result``.

    ``path`` may hold ``{field}`` markers, filled from the form's fields of that name.  ``owner``
    is the server that owns the object: where the call is repeated when this server redirects."""
    options: dict[str, Any] = {
        "data-api-method": method, "data-api-path": path, "data-owner": owner, "data-owner-url": base_url(owner),
        # the least role that may make the call: mozpool.js hides the form from smaller roles
        "data-needs": needs,
    }
    if confirm:
        options["data-confirm"] = confirm
    if result:
        options["data-result"] = result
    if after:
        options["data-after"] = after
    options["data-done"] = done or f"{label}: done"
    button_class = "danger" if confirm else ("" if style == "inline" else "primary")
    return tags.form(
        *fields,
        tags.div(
            tags.button(label, type="submit", class_=button_class, id=testid, **_ids(testid)),
            tags.output(class_="result", **_ids("action-result", **{"aria-live": "polite"})),
            class_="submit-row",
        ),
        class_=f"api {style}".strip(),
        **options,
        **attrs,
    )


def field(label: str, control: Tag, hint: str | None = None) -> Tag:
    return tags.label(tags.span(label, class_="label"), control, tags.small(hint, class_="hint") if hint else "")


def select(name: str, options: Iterable[tuple[str, str]], selected: str = "", **attrs: Any) -> Tag:
    choices = []
    for value, text in options:
        option = tags.option(text, value=value)
        if value == selected:
            option(selected="selected")
        choices.append(option)
    return tags.select(choices, name=name, **attrs)


# --- overview ----------------------------------------------------------------------------------


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _count_link(count: int, **filters: str) -> Tag:
    return tags.a(str(count), href=query_url("/ui/devices", filters))


def overview(
    counts: dict[str, dict[str, int]], needing: Sequence[dict[str, Any]], needing_total: int,
    open_requests: Sequence[dict[str, Any]], open_total: int, servers: Sequence[dict[str, Any]],
    this_server: str, now: float, suspect_boards: Sequence[dict[str, Any]] = (),
) -> Tag:
    totals = {cat: sum(t.get(cat, 0) for t in counts.values()) for cat in CATEGORIES}
    tiles = tags.ul(
        tags.li(
            tags.a(tags.strong(str(sum(totals.values()))), " devices", href="/ui/devices", class_="tile",
                   **_ids("count-total")),
        ),
        [
            tags.li(tags.a(
                tags.span(CATEGORY_MARKS[cat][0], class_="mark", **{"aria-hidden": "true"}), " ",
                tags.strong(str(totals[cat])), " ", CATEGORY_MARKS[cat][1],
                href=query_url("/ui/devices", {"category": cat}), class_=f"tile cat-{cat}",
                **_ids(f"count-{cat}", **{"data-count": str(totals[cat])}),
            ))
            for cat in CATEGORIES
        ],
        class_="tiles",
    )
    by_type = table(
        ["hardware type", "total", *(CATEGORY_MARKS[c][1] for c in CATEGORIES)],
        [
            [hwtype, _count_link(sum(per.values()), hardware_type=hwtype),
             *(_count_link(per.get(c, 0), hardware_type=hwtype, category=c) for c in CATEGORIES)]
            for hwtype, per in sorted(counts.items())
        ],
        testid="counts-by-type", row_testid="type-row", empty="No devices yet.",
    )
    more = ""
    if needing_total > len(needing):
        more = tags.p(f"The first {len(needing)} of {needing_total}. ",
                      tags.a("All failed devices …", href="/ui/devices?category=failed"))
    human = table(
        ["device", "state", "why", "server", "environment", "comments"],
        [[device_link(d["name"]), state_badge(d["state"], d["category"]),
          tags.span(failure_text(d.get("failure")) or "—", **_ids("needs-human-why")), d["imaging_server"],
          d["environment"], text_or_dash(d["comments"])] for d in needing],
        testid="needs-human", row_testid="needs-human-row", empty="No device needs a person. ✓",
    )
    phases: dict[str, int] = {}
    for d in needing:
        if d.get("failure"):
            phases[d["failure"]["phase"]] = phases.get(d["failure"]["phase"], 0) + 1
    if phases:
        more = [tags.p("Failed in: ", ", ".join(f"{phase} ({n})" for phase, n in sorted(phases.items())),
                       class_="muted", **_ids("failure-phases")), more]
    suspect: Any = ""
    if suspect_boards:
        suspect = _section(
            f"Suspect power controllers ({len(suspect_boards)})",
            tags.ul([tags.li(
                tags.a(b["name"], href=query_url("/ui/lab", {"server": b["imaging_server"]}) + "#"
                       + board_anchor(b["fqdn"])), " ",
                tags.span(_count(b["waiting"], "device") + " waiting in board_suspect", class_="muted"),
                " · suspect since ", when(str(b["health_since"] or "")[:19].replace(" ", "T") or None, now), ": ",
                b["health_reason"] or "no reason recorded",
                **_ids("suspect-board", **{"data-board": b["fqdn"], "data-waiting": str(b["waiting"])}),
            ) for b in suspect_boards], class_="plain"),
            tags.p("Their devices are not offered to requests; LifeGuard probes each board and re-tests its "
                   "devices when it answers.", class_="muted"),
            testid="suspect-boards-section",
        )
    opened = table(
        ["request", "state", "assignee", "device", "image", "expires"],
        [[request_link(r["id"]), request_badge(r["state"]), r["assignee"],
          device_link(r["assigned_device"]) if r["assigned_device"] else text_or_dash(None), r["image"],
          when(r["expires"], now)] for r in open_requests],
        testid="open-requests", row_testid="request-row", empty="No open requests.",
    )
    server_list = tags.ul(
        [tags.li(
            tags.a(s["fqdn"], href=server_ui_url(s["fqdn"])), " ",
            tags.span(f"{_count(s['devices'], 'device')}, {_count(s['open_requests'], 'open request')}",
                      class_="muted"),
            " (this server)" if s["fqdn"] == this_server else "",
            _down(s.get("down_since")),
            **_ids("server-item"),
        ) for s in servers],
        class_="plain",
    )
    return live_region(
        "overview", "/ui/", POOL_EVENTS,
        _section("Pool", tiles, by_type, testid="pool-counts"),
        _section(f"Needs a person ({needing_total})", human, more, testid="needs-human-section"),
        suspect,
        _section(f"Open requests ({open_total})", opened,
                 tags.p(tags.a("All requests …", href="/ui/requests"), " · ",
                        tags.a("New request", href="/ui/requests/new")),
                 testid="open-requests-section"),
        _section("Imaging servers", server_list, testid="servers-section"),
        class_="overview",
    )


# --- lab map -----------------------------------------------------------------------------------


def _shared_prefix(names: Iterable[str]) -> str:
    """The start all ``names`` share, cut back to its last ``-``, ``_`` or ``.``: what a grid
    cell can leave out ("panda-" of panda-0001 ... panda-0032)."""
    prefix = os.path.commonprefix(list(names))
    cut = max(prefix.rfind(sep) for sep in "-_.")
    return prefix[: cut + 1]


def _board_grid(board: str, slots: dict[tuple[int, int], dict[str, Any]]) -> Tag:
    """Banks as rows, relays as columns; a cell shows the device's shape, colour and the part of
    its name that tells it from its neighbours (the full name is in its title)."""
    prefix = _shared_prefix(d["name"] for d in slots.values())
    rows = []
    for bank in BANKS:
        cells = []
        for relay in RELAYS:
            device = slots.get((bank, relay))
            if device is None:
                cells.append(tags.td(tags.span("·", **{"aria-hidden": "true"}), class_="cell empty",
                                     title=f"bank {bank} relay {relay}: no device"))
                continue
            name, state = device["name"], device["state"]
            shape = tags.span(state_mark(state, device["category"]), class_="mark", **{"aria-hidden": "true"})
            held = {"data-request": str(device["request_id"])} if device["request_id"] is not None else {}
            cells.append(tags.td(
                tags.a(shape, " ", name[len(prefix):], href=device_url(name)),
                class_=f"cell cat-{device['category']}" + (" parked" if state in PARKED_STATES else ""),
                title=f"bank {bank} relay {relay}: {name} — {state}",
                **_ids("lab-cell", **{"data-device": name, "data-category": device["category"], "data-state": state},
                       **held),
            ))
        rows.append(tags.tr(tags.th(f"bank {bank}", scope="row"), cells))
    head = tags.thead(tags.tr(tags.th("", class_="corner"), [tags.th(str(r), scope="col") for r in RELAYS]))
    caption = f"{board}: banks × relays" + (f", devices {prefix}…" if prefix else "")
    return tags.div(tags.table(tags.caption(caption), head, tags.tbody(rows), class_="grid"), class_="table-wrap")


def _port_list(controller: str, ports: dict[Any, dict[str, Any]]) -> Tag:
    """A controller without banks (a PDU behind pdudaemon): one row per port in use."""
    rows = []
    for outlet in sorted(ports, key=lambda o: (len(str(o)), str(o))):
        device = ports[outlet]
        name, state = device["name"], device["state"]
        shape = tags.span(state_mark(state, device["category"]), class_="mark", **{"aria-hidden": "true"})
        held = {"data-request": str(device["request_id"])} if device["request_id"] is not None else {}
        rows.append(tags.tr(
            tags.th(str(outlet), scope="row"),
            tags.td(tags.a(shape, " ", name, href=device_url(name)),
                    class_=f"cell cat-{device['category']}" + (" parked" if state in PARKED_STATES else ""),
                    title=f"port {outlet}: {name} — {state}",
                    **_ids("lab-cell", **{"data-device": name, "data-category": device["category"], "data-state": state},
                           **held)),
            tags.td(state),
        ))
    head = tags.thead(tags.tr(tags.th("port", scope="col"), tags.th("device", scope="col"), tags.th("state", scope="col")))
    return tags.div(tags.table(tags.caption(f"{controller}: ports in use"), head, tags.tbody(rows), class_="ports"),
                    class_="table-wrap")


def wiring(devices: Iterable[dict[str, Any]]) -> tuple[dict[str, dict[Any, dict[str, Any]]], list]:
    """Devices by power controller and outlet (``(bank, relay)`` on a ProXR board, the port on
    another controller), and those whose relay_info does not parse."""
    wired: dict[str, dict[Any, dict[str, Any]]] = defaultdict(dict)
    unwired = []
    for device in devices:
        try:
            where = parse_location(device["relay_info"])
        except PowerConfigError:
            unwired.append(device)
            continue
        outlet = (where.bank, where.relay) if isinstance(where, RelayInfo) else where.outlet
        wired[where.controller][outlet] = device
    return wired, unwired


def board_anchor(controller: str) -> str:
    """The lab map's element id of a controller's section."""
    return "board-" + re.sub(r"[^A-Za-z0-9_-]", "-", controller)


def board_section(board: dict[str, Any], slots: dict[Any, dict[str, Any]]) -> Tag:
    """One power controller (a relay board as banks x relays, a PDU as its ports), refetched
    alone when one of its devices changes (``data-live-contains``: the events that name a device
    or request shown in it)."""
    tally: dict[str, int] = defaultdict(int)
    for device in slots.values():
        tally[device["category"]] += 1
    summary = ", ".join(f"{tally[c]} {CATEGORY_MARKS[c][1]}" for c in CATEGORIES if tally[c]) or "no devices"
    owner = board["imaging_server"]
    proxr = scheme_of(board["fqdn"]) == DEFAULT_SCHEME
    test: Any = ""
    if owner is not None:
        test = api_form(
            "GET", f"/api/relay/{quote(board['name'], safe='')}/test/", label="Test board" if proxr else "Test controller",
            testid="relay-test", owner=owner, result="success", style="inline",
        )
    kind = kind_of(board["fqdn"])
    return live_region(
        board_anchor(board["fqdn"]), "/ui/lab/board/" + quote(board["fqdn"], safe=""),
        "device_state request_device board_health",
        tags.div(tags.h3(board["name"]), test, class_="board-head"),
        tags.p(f"{board['fqdn']} · {kind} · {board['state']} · {summary}", class_="muted"),
        board_health_note(board),
        _board_grid(board["fqdn"], slots) if proxr else _port_list(board["fqdn"], slots),
        class_="board", **_ids("relay-board", **{"data-board": board["fqdn"], "data-kind": kind,
                                                 "data-live-contains": ""}),
    )


def board_health_note(board: dict[str, Any]) -> Any:
    """Why a suspect power controller is suspect (issue 15): its devices wait, uncounted, while
    LifeGuard probes it."""
    if board.get("state") != "suspect":
        return ""
    since = str(board.get("health_since") or "")[:19].replace(" ", "T")
    return tags.p(
        tags.strong("Suspect"), f" since {since} UTC: {board.get('health_reason') or 'no reason recorded'}. ",
        "Its devices wait in board_suspect and are not offered to requests; LifeGuard probes it and re-tests "
        "them when it answers.",
        class_="board-suspect", role="status", **{"data-testid": "board-health", "data-health": "suspect"},
    )


def unknown_board(address: str) -> dict[str, Any]:
    """A controller devices name in their relay_info that the relay_boards table does not know."""
    return {"name": address, "fqdn": address, "state": "not in the database", "imaging_server": None}


def lab_map(
    boards: Sequence[dict[str, Any]], devices: Sequence[dict[str, Any]], this_server: str,
    servers: Sequence[str], shown: str,
) -> list[Any]:
    """Every power controller (of server ``shown``, or of all when it is empty), grouped by
    server, relay boards first."""
    wired, unwired = wiring(devices)
    known = {b["fqdn"] for b in boards}
    all_boards = list(boards) + [unknown_board(address) for address in sorted(set(wired) - known)]
    by_server: dict[str, list[Tag]] = defaultdict(list)
    def order(board: dict[str, Any]) -> tuple[bool, str]:
        """Relay boards first, then the other controllers; each in the order of its first
        device (board ports are picked at random, so their addresses say nothing)."""
        names = [d["name"] for d in wired.get(board["fqdn"], {}).values()]
        return scheme_of(board["fqdn"]) != DEFAULT_SCHEME, min(names) if names else "\uffff"

    all_boards.sort(key=order)
    for board in all_boards:
        by_server[board["imaging_server"] or "(no server)"].append(board_section(board, wired.get(board["fqdn"], {})))
    choices = [("", "all servers")] + [(fqdn, fqdn) for fqdn in servers]
    picker = tags.nav(
        "Show: ",
        [[tags.a(label, href=query_url("/ui/lab", {"server": fqdn}), **_ids("lab-server"),
                 **({"aria-current": "page"} if fqdn == shown else {})), " "] for fqdn, label in choices],
        class_="lab-servers", **{"aria-label": "imaging servers"},
    )
    legend = tags.p(
        "Legend: ", [[category_badge(c, testid="legend"), " "] for c in CATEGORIES],
        tags.span(tags.span("■", class_="mark"), f" parked for a person ({', '.join(PARKED_STATES)})",
                  class_="badge cat-processing parked"),
        class_="legend",
    )
    sections: list[Any] = [
        tags.section(
            tags.h2(f"Imaging server {server}" + (" (this server)" if server == this_server else "")),
            tags.div(boards_of_server, class_="boards"),
        )
        for server, boards_of_server in sorted(by_server.items())
    ]
    if unwired:
        sections.append(_section(
            f"Devices without a usable relay or power location ({len(unwired)})",
            tags.ul([tags.li(device_link(d["name"]), " ", text_or_dash(d["relay_info"])) for d in unwired],
                    class_="plain"),
            testid="unwired",
        ))
    if not sections:
        sections = [tags.p("No relay boards or other power controllers.", class_="empty")]
    return [picker, legend, *sections]


# --- devices table -----------------------------------------------------------------------------

_COLUMNS = (
    ("name", "name"), ("state", "state"), ("category", "category"), ("hardware_type", "hardware"),
    ("environment", "environment"), ("image", "image"), ("imaging_server", "server"), ("request", "request"),
    ("comments", "comments"),
)
_FILTER_LABELS = {
    "state": "State", "category": "Category", "hardware_type": "Hardware", "environment": "Environment",
    "image": "Image", "imaging_server": "Server",
}


def devices(
    rows: Sequence[dict[str, Any]], total: int, query: DeviceQuery, choices: dict[str, list[str]],
    down: dict[str, str] | None = None,
) -> list[Tag]:
    """``down``: imaging server -> its last heartbeat, for the servers that stopped sending them
    (their devices are marked unreachable, with since when)."""
    return [_device_filter(query, choices), _device_table(rows, total, query, down or {})]


def _device_filter(query: DeviceQuery, choices: dict[str, list[str]]) -> Tag:
    selects = []
    for key, label in _FILTER_LABELS.items():
        options = [("", "any")] + [(v, CATEGORY_MARKS[v][1] if key == "category" else v) for v in choices[key]]
        selects.append(field(label, select(key, options, query.filters.get(key, ""),
                                           id=f"filter-{key}", **_ids(f"filter-{key}"))))
    held = field("Request", select("held", [("", "any"), ("yes", "held"), ("no", "free")], query.held,
                                   id="filter-held", **_ids("filter-held")))
    keep = tags.span(
        [tags.input(type="hidden", name=k, value=str(v))
         for k, v in params.device_query_params(query, page=1, name="", held="").items()
         if k in ("sort", "dir", "per_page")],
        id="device-filter-keep",
    )
    return tags.form(
        field("Name", tags.input(type="search", name="name", value=query.name, id="filter-name",
                                 placeholder="panda-00", autocomplete="off", **_ids("filter-name"))),
        selects, held, keep,
        tags.div(tags.button("Filter", type="submit", **_ids("filter-apply")), " ",
                 tags.a("Clear", href="/ui/devices", **_ids("filter-clear")), class_="submit-row"),
        id="device-filter", class_="filters", method="get", action="/ui/devices", role="search",
        **{
            "hx-get": "/ui/devices",
            "hx-trigger": "input changed delay:300ms from:#filter-name, change from:(#device-filter select), submit",
            "hx-select": "#devices-table", "hx-target": "#devices-table", "hx-swap": "outerHTML",
            "hx-select-oob": "#device-filter-keep",
        },
    )


def _device_table(rows: Sequence[dict[str, Any]], total: int, query: DeviceQuery, down: dict[str, str]) -> Tag:
    def url(**changes: Any) -> str:
        return query_url("/ui/devices", params.device_query_params(query, **changes))

    headers = []
    for key, label in _COLUMNS:
        active = query.sort == key
        descending = active and not query.descending
        arrow = ("▼" if query.descending else "▲") if active else ""
        attrs = {"aria-sort": ("descending" if query.descending else "ascending")} if active else {}
        headers.append(tags.th(
            tags.a(label, " ", tags.span(arrow, **{"aria-hidden": "true"}),
                   href=url(sort=key, dir="desc" if descending else "", page=1), **_ids(f"sort-{key}")),
            scope="col", **attrs,
        ))
    body = [
        tags.tr(
            tags.td(device_link(d["name"], **_ids("device-link"))),
            tags.td(state_badge(d["state"], d["category"])),
            tags.td(category_badge(d["category"], testid="device-category")),
            tags.td(d["hardware_type"]),
            tags.td(d["environment"]),
            tags.td(text_or_dash(d["image"])),
            tags.td(d["imaging_server"], _down(down.get(d["imaging_server"]), "unreachable")),
            tags.td(request_link(d["request_id"]),
                    tags.span(f" {d['request_state']}", class_="muted") if d["request_state"] else ""),
            tags.td(tags.span(d["comments"], class_="comments", title=d["comments"]) if d["comments"]
                    else text_or_dash(None), **_ids("device-comments-cell")),
            **_ids("device-row", **{"data-device": d["name"]}),
        )
        for d in rows
    ]
    pages = (total + query.per_page - 1) // query.per_page
    grid: Any = tags.p("No device matches.", class_="empty", **_ids("devices-empty"))
    if body:
        grid = tags.div(tags.table(tags.thead(tags.tr(headers)), tags.tbody(body), **_ids("devices-table")),
                        class_="table-wrap")
    navigation = pager(query.page, pages, total, lambda p: url(page=p), "devices")
    return live_region(
        "devices-table", url(), POOL_EVENTS, navigation, grid, navigation if len(body) > 20 else "",
        **{"hx-boost": "true", "hx-target": "this", "hx-select-oob": "#device-filter-keep",
           "data-total": str(total)},
    )


# --- device page -------------------------------------------------------------------------------


def device(
    found: dict[str, Any], log: Sequence[dict[str, Any]], pxe_configs: Sequence[str],
    images: Sequence[dict[str, Any]], environments: Sequence[str], states: Sequence[str],
    this_server: str, now: float,
) -> list[Any]:
    return [
        _owner_note(found["imaging_server"], this_server, "device", device_url(found["name"])),
        device_summary(found, this_server, now),
        device_editors(found, environments),
        _device_actions(found, pxe_configs, images, states),
        _section("Log", tags.p(f"Newest first; the last {LOG_LIMIT} lines, then new ones as they come.",
                               class_="muted"),
                 log_list(log, now, "device_log", found["name"], device_url(found["name"]) + "/log"),
                 testid="device-log"),
    ]


def device_summary(found: dict[str, Any], this_server: str, now: float) -> Tag:
    name = found["name"]
    request: Any = text_or_dash(None)
    if found["request_id"] is not None:
        request = [request_link(found["request_id"], **_ids("device-request")), " ",
                   request_badge(found["request_state"], testid="device-request-state")]
    server = found["imaging_server"]
    relay: Any = text_or_dash(found["relay_info"])
    try:
        controller = parse_location(found["relay_info"]).controller
        relay = tags.a(found["relay_info"], href=f"/ui/lab#{board_anchor(controller)}")
    except PowerConfigError:
        pass
    return live_region(
        "device-summary", device_url(name) + "/summary",
        "device_state request_device request_state",
        tags.p(state_badge(found["state"], found["category"]), " since ",
               when(found["state_since"], now, testid="state-since"), class_="state-line"),
        definition_list([
            ("Request", request),
            ("Image", text_or_dash(found["image"])),
            ("Boot config", tags.code(found["boot_config"]) if found["boot_config"] else text_or_dash(None)),
            ("Next image", text_or_dash(found["next_image"])),
            ("Hardware", f"{found['hardware_type']} {found['hardware_model'] or ''}".strip()),
            ("Imaging server", [server, " (this server)" if server == this_server else
                                tags.a(" open there", href=server_ui_url(server, device_url(name))),
                                _down(found.get("server_down_since"), "unreachable: its server is not responding")]),
            ("Relay", relay),
            ("FQDN", found["fqdn"]),
            ("MAC address", found["mac_address"]),
            ("Inventory id", str(found["inventory_id"])),
        ], testid="device-details"),
        **{"data-live-device": name, "data-device": name},
    )


def _cancel(testid: str) -> Tag:
    return tags.button("Cancel", type="button", id=testid, **_ids(testid, **{"data-edit-cancel": ""}))


def device_editors(found: dict[str, Any], environments: Sequence[str]) -> Tag:
    """Comments and environment, each shown with an Edit button that opens its form in place."""
    name = found["name"]
    base = "/api/device/" + quote(name, safe="")
    owner = found["imaging_server"]
    comments_form = api_form(
        "POST", base + "/set-comments/",
        field("Comments", tags.textarea(found["comments"] or "", name="comments", rows="3", id="comments-input",
                                        **_ids("comments-input", **{"data-empty": "null"}))),
        _cancel("comments-cancel"),
        label="Save", testid="comments-save", done="Comments saved", owner=owner, after="close-editor", hidden="hidden",
        id="comments-form", **{"data-editor": "comments"},
    )
    env_form = api_form(
        "POST", base + "/set-environment/",
        field("Environment", tags.input(name="environment", value=found["environment"], list="environment-names",
                                        required="required", id="environment-input", **_ids("environment-input"))),
        tags.datalist([tags.option(value=e) for e in environments], id="environment-names"),
        _cancel("environment-cancel"),
        label="Save", testid="environment-save", done="Environment saved", owner=owner, after="close-editor",
        hidden="hidden",
        id="environment-form", **{"data-editor": "environment"},
    )
    return live_region(
        "device-editors", device_url(name) + "/summary", "device_comments device_environment",
        tags.div(
            tags.h2("Comments"),
            tags.p(found["comments"] or "", class_="comments-text", **_ids("device-comments")),
            tags.button("Edit comments", type="button", id="comments-edit",
                        **_ids("comments-edit", **{"data-edit": "comments-form", "data-needs": "operator"})),
            comments_form,
            class_="editable",
        ),
        tags.div(
            tags.h2("Environment"),
            tags.p(found["environment"], **_ids("device-environment")),
            tags.button("Edit environment", type="button", id="environment-edit",
                        **_ids("environment-edit", **{"data-edit": "environment-form", "data-needs": "operator"})),
            env_form,
            class_="editable",
        ),
        class_="editors", **{"data-live-device": name},
    )


def _device_actions(
    found: dict[str, Any], pxe_configs: Sequence[str], images: Sequence[dict[str, Any]], states: Sequence[str]
) -> Tag:
    name = found["name"]
    base = "/api/device/" + quote(name, safe="")
    owner = found["imaging_server"]
    boot_config_hint = 'JSON text, e.g. {"b2gbase": "http://…"}; empty for none'
    image_options = [(i["name"], i["name"] + (" (hidden)" if i["hidden"] else "") +
                      (f" — needs {', '.join(i['boot_config_keys'])}" if i["boot_config_keys"] else ""))
                     for i in images]
    def quick(path: str, label: str, testid: str, **kw: Any) -> Tag:
        return api_form(kw.pop("method", "POST"), base + path, label=label, testid=testid, owner=owner,
                        style="inline", **kw)

    buttons = tags.div(
        tags.div(
            tags.h3("LifeGuard"),
            quick("/event/please_self_test/", "Self-test", "action-self-test", done="Self-test requested",
                  confirm=f"Self-test {name}? It is re-imaged with the self-test image."),
            quick("/event/please_start_maintenance/", "Maintenance mode", "action-maintenance",
                  done="Maintenance mode requested",
                  confirm=f"Boot {name} into the maintenance image?"),
            quick("/event/please_power_cycle/", "Power-cycle via LifeGuard", "action-lifeguard-power-cycle",
                  done="Power-cycle requested from LifeGuard",
                  confirm=f"Have LifeGuard power-cycle {name}?"),
        ),
        tags.div(
            tags.h3("Power and PXE (beneath LifeGuard)"),
            quick("/ping/", "Ping", "action-ping", method="GET", result="ping"),
            quick("/power-off/", "Power off", "action-power-off", done="Power-off started",
                  confirm=f"Turn {name} off?"),
            quick("/clear-pxe/", "Clear PXE config", "action-clear-pxe", done="PXE config cleared",
                  confirm=f"Remove {name}'s PXE config file?"),
        ),
        class_="quick",
    )
    forms = tags.div(
        api_form("POST", base + "/event/please_image/",
                 tags.h3("Install an image"),
                 field("Image", select("image", image_options, "android", **_ids("image-select"))),
                 field("Boot config", tags.textarea("", name="boot_config", rows="2", **_ids("image-boot-config")),
                       boot_config_hint),
                 label="Install image", testid="action-image", owner=owner, done="Imaging requested",
                 confirm=f"Install a new image on {name}? What is on it now is lost."),
        api_form("POST", base + "/power-cycle/",
                 tags.h3("Power-cycle"),
                 field("PXE config", select("pxe_config", [("", "none: boot from local storage")] +
                                            [(p, p) for p in pxe_configs], **_ids("power-cycle-pxe"))),
                 field("Boot config", tags.textarea("", name="boot_config", rows="2",
                                                    **_ids("power-cycle-boot-config")),
                       "used only with a PXE config; " + boot_config_hint),
                 label="Power-cycle", testid="action-power-cycle", owner=owner, done="Power-cycle started",
                 confirm=f"Power-cycle {name} now?"),
        api_form(
            "POST", base + "/state-change/{old}/to/{new}/",
            tags.h3("Forced state change"),
            field("From state", tags.input(name="old", value=found["state"], required="required",
                                           id="state-change-old",
                                           **_ids("state-change-old", **{"data-follow-state": "device-summary"})),
                  "the change happens only if the device is still in this state"),
            field("To state", select("new", [(s, s) for s in states], "ready", **_ids("state-change-new"))),
            label="Change state", testid="action-state-change", owner=owner, done="State changed",
            confirm=f"Force {name} into another state? LifeGuard then carries on from there.",
        ),
        class_="actions",
    )
    return tags.section(
        tags.h2("Actions"),
        tags.p(tags.a("Request this device", href=query_url("/ui/requests/new", {"device": name}),
                      **_ids("request-this-device"))),
        buttons, forms,
        **_ids("device-actions"),
    )


# --- requests ----------------------------------------------------------------------------------


def requests(
    rows: Sequence[dict[str, Any]], total: int, include_closed: bool, page: int, per_page: int, now: float
) -> list[Tag]:
    def url(**changes: Any) -> str:
        values = {"closed": "1" if include_closed else "", "page": page, "per_page": per_page, **changes}
        if values["page"] == 1:
            values["page"] = ""
        if values["per_page"] == params.PER_PAGE:
            values["per_page"] = ""
        return query_url("/ui/requests", values)

    toggle = tags.p(
        tags.a("Hide closed requests" if include_closed else "Show closed requests too",
               href=url(closed="" if include_closed else "1", page=1), **_ids("toggle-closed")),
        " · ", tags.a("New request", href="/ui/requests/new", **_ids("new-request-link")),
    )
    listing = table(
        ["request", "state", "priority", "assignee", "requested", "device", "image", "environment", "expires",
         "server"],
        [[request_link(r["id"], **_ids("request-link")), [request_badge(r["state"]), _queue_position(r.get("queue"))],
          tags.span(str(r["priority"]), **_ids("request-priority")), r["assignee"],
          r["requested_device"],
          [device_link(r["assigned_device"]), " ", state_badge(r["device_state"], testid="request-device-state")]
          if r["assigned_device"] else text_or_dash(None),
          r["image"], r["environment"], when(r["expires"], now), r["imaging_server"]] for r in rows],
        testid="requests-table", row_testid="request-row",
        empty="No requests." if include_closed else "No open requests.",
    )
    pages = (total + per_page - 1) // per_page
    return [toggle, live_region(
        "requests-region", url(), "request_state request_device device_state",
        pager(page, pages, total, lambda p: url(page=p), "requests"), listing,
        **{"hx-boost": "true", "hx-target": "this"},
    )]


def _queue_position(place: dict[str, Any] | None) -> Any:
    """A waiting request's place, beside its state in the requests list (issue 14)."""
    if not place:
        return ""
    return tags.span(f" {ordinal(place['position'])} in queue", class_="muted queue-position",
                     title=f"{place['ahead']} ahead of it could take the same devices",
                     **_ids("request-queue-position", **{"data-position": str(place["position"])}))


def queue_place(place: dict[str, Any], now: float, gives_up: str | None = None) -> Tag:
    """Where a request waiting for a device stands (the status's ``queue``, issue 14): its
    position among all waiting requests, how many before it could take the same devices, when it
    should be ready, and why; and when it gives up waiting (``gives_up``, API time), said
    plainly when that comes before the estimate."""
    eta = when(place["eta"], now, testid="queue-eta", approx=True) if place.get("eta") else tags.span(
        "no estimate yet", class_="muted", **_ids("queue-eta"))
    rows: list[tuple[str, Any]] = [
        ("Place in the queue", tags.span(
            tags.strong(ordinal(place["position"])), " of the waiting requests",
            **_ids("queue-position", **{"data-position": str(place["position"])}))),
        ("Ahead of it", tags.span(
            f"{_count(place['ahead'], 'request')} that could take the same devices",
            **_ids("queue-ahead", **{"data-ahead": str(place["ahead"])}))),
        ("Ready", [eta, tags.span(" (estimate)", class_="muted")]),
        ("Why", tags.span(place.get("why") or "—", **_ids("queue-why"))),
    ]
    if gives_up:
        late = bool(place.get("eta")) and place["eta"][:19] > gives_up[:19]
        rows.append(("Gives up", [
            when(gives_up, now, testid="queue-gives-up"),
            tags.strong(" — before the estimate: it fails with failed_device_busy unless a device frees up sooner",
                        class_="queue-late", **_ids("queue-late")) if late else
            tags.span(" (its queue timeout)", class_="muted"),
        ]))
    return tags.section(
        tags.h2("Waiting for a device"), definition_list(rows),
        class_="queue-place", role="status", **_ids("request-queue"),
    )


def request(found: dict[str, Any], log: Sequence[dict[str, Any]], this_server: str, now: float) -> list[Any]:
    request_id = found["id"]
    base = f"/api/request/{request_id}"
    owner = found["imaging_server"]
    actions = tags.section(
        tags.h2("Actions"),
        tags.div(
            api_form("POST", base + "/renew/",
                     field("Duration (seconds from now)",
                           tags.input(type="number", name="duration", value="3600", min="1", max="2147483647",
                                      required="required", **_ids("renew-duration", **{"data-type": "int"}))),
                     label="Renew", testid="action-renew", owner=owner, done="Request renewed", needs="user"),
            api_form("POST", base + "/return/", label="Return", testid="action-return", owner=owner, needs="user",
                     done="Request returned",
                     confirm=f"Return request {request_id}? Its device goes back to the pool."),
            class_="actions",
        ),
        **_ids("request-actions"),
    )
    return [
        _owner_note(owner, this_server, "request", request_url(request_id)),
        request_summary(found, now),
        actions,
        _section("Log", tags.p(f"Newest first; the last {LOG_LIMIT} lines, then new ones as they come.",
                               class_="muted"),
                 log_list(log, now, "request_log", str(request_id), f"/ui/request/{request_id}/log"),
                 testid="request-log"),
    ]


def request_summary(found: dict[str, Any], now: float) -> Tag:
    request_id = found["id"]
    device_cell: Any = text_or_dash(None)
    if found["assigned_device"]:
        device_cell = [device_link(found["assigned_device"], **_ids("request-device")), " ",
                       state_badge(found["device_state"] or "unknown", testid="request-device-state")]
    waiting = found["state"] == "finding_device" and not found["assigned_device"]
    place = found.get("queue")
    return live_region(
        "request-summary", f"/ui/request/{request_id}/summary", "request_state request_device",
        tags.p(request_badge(found["state"]), class_="state-line"),
        queue_place(place, now, found.get("queue_deadline")) if place else "",
        definition_list([
            ("Device", device_cell),
            ("Requested", found["requested_device"]),
            ("Assignee", found["assignee"]),
            ("Priority", tags.span(str(found["priority"]), **_ids("request-priority"))),
            ("Queue timeout", tags.span(f"{found['queue_timeout']} s", **_ids("request-queue-timeout"))),
            ("Expires", when(found["expires"], now, testid="request-expires")),
            ("Image", found["image"]),
            ("Environment", found["environment"]),
            ("Boot config", tags.code(found["boot_config"])),
            ("Imaging server", found["imaging_server"]),
            ("API URL", tags.a(found["url"], href=found["url"] + "details/")),
        ], testid="request-details"),
        # A place in the queue moves with other requests' events, which this page's stream does
        # not carry: while the request waits, the part is also read again every few seconds.
        poll=QUEUE_POLL if waiting else None,
        **{"data-live-request": str(request_id)},
    )


def new_request(
    images: Sequence[dict[str, Any]], environments: Sequence[str], device_name: str, this_server: str
) -> Tag:
    image_options = [(i["name"], i["name"] + (f" — needs {', '.join(i['boot_config_keys'])}"
                                              if i["boot_config_keys"] else "")) for i in images]
    return api_form(
        "POST", "/api/device/{device}/request/",
        field("Device", tags.input(name="device", value=device_name or "any", required="required",
                                   id="new-request-device", **_ids("new-request-device")),
              "any, or a device name"),
        field("Image", select("image", image_options, "android", id="new-request-image",
                              **_ids("new-request-image"))),
        field("Environment", select("environment", [("any", "any")] + [(e, e) for e in environments], "any",
                                    id="new-request-environment", **_ids("new-request-environment"))),
        field("Duration (seconds)", tags.input(type="number", name="duration", value="3600", min="1",
                                               max="2147483647", required="required", id="new-request-duration",
                                               **_ids("new-request-duration", **{"data-type": "int"})),
              "3600 is one hour; renew it from the request's page"),
        field("Assignee", tags.input(name="assignee", required="required", id="new-request-assignee",
                                     autocomplete="email", placeholder="you@example.com",
                                     **_ids("new-request-assignee"))),
        field("Priority", tags.input(type="number", name="priority", value="50", min="0", max="100",
                                     required="required", id="new-request-priority",
                                     **_ids("new-request-priority", **{"data-type": "int"})),
              "0–100; when devices are short, higher is served first"),
        field("Queue timeout (seconds)", tags.input(type="number", name="queue_timeout", value="600", min="0",
                                                    max="2147483647", required="required",
                                                    id="new-request-queue-timeout",
                                                    **_ids("new-request-queue-timeout", **{"data-type": "int"})),
              "how long it may wait for a device to free up, then it fails (failed_device_busy); 0: fail at once "
              "unless one is free"),
        field("Boot config", tags.textarea("", name="boot_config", rows="3", id="new-request-boot-config",
                                           **_ids("new-request-boot-config", **{"data-type": "merge-json"})),
              'a JSON object of the image\'s boot config keys, e.g. {"b2gbase": "http://…"}'),
        label="Request", testid="new-request-submit", owner=this_server, after="open-request", done="Request made",
        needs="user",
        id="new-request-form", style="wide",
    )


# --- catalog pages -----------------------------------------------------------------------------


def images(found: Sequence[dict[str, Any]]) -> Tag:
    return table(
        ["image", "boot config keys", "reusable", "SUT agent", "hidden", "PXE configs", "devices with it"],
        [[tags.strong(i["name"]), ", ".join(i["boot_config_keys"]) or text_or_dash(None),
          "yes" if i["can_reuse"] else "no", "yes" if i["has_sut_agent"] else "no", "yes" if i["hidden"] else "no",
          [[tags.a(config, href=f"/ui/pxe-configs#pxe-{config}"), f" ({hw})", tags.br()]
           for hw, config in i["pxe_configs"]] or text_or_dash(None),
          tags.a(str(i["devices"]), href=query_url("/ui/devices", {"image": i["name"]}))]
         for i in found],
        testid="images-table", row_testid="image-row", empty="No images.",
    )


def environments(found: Sequence[dict[str, Any]]) -> Tag:
    return table(
        ["environment", "devices", *(CATEGORY_MARKS[c][1] for c in CATEGORIES)],
        [[tags.strong(e["name"]), _count_link(e["devices"], environment=e["name"]),
          *(_count_link(e["categories"].get(c, 0), environment=e["name"], category=c) for c in CATEGORIES)]
         for e in found],
        testid="environments-table", row_testid="environment-row", empty="No devices, so no environments.",
    )


def pxe_configs(found: Sequence[dict[str, Any]]) -> list[Tag]:
    return [
        tags.section(
            tags.h2(config["name"], " ", tags.span(
                "active" if config["active"] else "inactive",
                class_="badge " + ("cat-idle" if config["active"] else "cat-closed"),
            )),
            tags.p(config["description"]),
            tags.p("Used by: ", ", ".join(config["used_by"]) or "no image", class_="muted"),
            tags.pre(config["contents"], **_ids("pxe-contents")),
            id=f"pxe-{config['name']}", class_="pxe", **_ids("pxe-config", **{"data-name": config["name"]}),
        )
        for config in found
    ] or [tags.p("No PXE configs.", class_="empty")]


def _down(since: str | None, text: str = "not responding") -> Any:
    """A server silent for three heartbeats (mozpool.liveness): said in words, not only colour."""
    if since is None:
        return ""
    return tags.span(" ✖ ", text, " since ", tags.time(since.replace(" ", "T") + "Z", datetime=since.replace(" ", "T") + "Z",
                                                        title=since + " UTC"),
                     class_="down", **_ids("server-down"))


def servers(found: Sequence[dict[str, Any]], this_server: str) -> Tag:
    return table(
        ["imaging server", "devices", *(CATEGORY_MARKS[c][1] for c in CATEGORIES), "open requests", "relay boards"],
        [[[tags.a(s["fqdn"], href=server_ui_url(s["fqdn"])), " (this server)" if s["fqdn"] == this_server else "",
           _down(s.get("down_since"))],
          _count_link(s["devices"], imaging_server=s["fqdn"]),
          *(_count_link(s["categories"].get(c, 0), imaging_server=s["fqdn"], category=c) for c in CATEGORIES),
          str(s["open_requests"]), str(s["relay_boards"])]
         for s in found],
        testid="servers-table", row_testid="server-row", empty="No imaging servers.",
    )


def error(status: int, message: str) -> Tag:
    return tags.div(
        tags.p(message, class_="error-message", **_ids("error-message", **{"data-status": str(status)})),
        tags.p(tags.a("Back to the overview", href="/ui/")),
    )


def signin(mode: str, message: str | None, next_url: str) -> Tag:
    """The sign-in form: a token from ``mozpool-token create``, kept in an HttpOnly cookie."""
    note = (
        "This server runs with auth open: anyone may act, and signing in only puts your name in the audit lines."
        if mode == "open" else
        "Changes on this server need a token. Ask an admin for one (mozpool-token create NAME --role operator)."
    )
    return tags.div(
        tags.p(message, class_="error-message", **_ids("signin-error", role="alert")) if message else "",
        tags.p(note),
        tags.form(
            tags.input(type="hidden", name="next", value=next_url),
            field("Token", tags.input(type="password", name="token", id="signin-token", required="required",
                                      autocomplete="current-password", **_ids("signin-token"))),
            tags.div(tags.button("Sign in", type="submit", class_="primary", id="signin-submit",
                                 **_ids("signin-submit")), class_="submit-row"),
            method="post", action="/ui/signin", class_="signin",
        ),
    )
