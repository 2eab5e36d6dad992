"""The UI's health parts (issue 15): a device's or request's "why?" box and timeline, the full
explanation page, and the boot times page.

They render what the API serves (``/api/.../why/``, ``/api/.../history/``, ``/api/pool/boots/``),
from the same functions (mozpool.health and mozpool.db.history), so the page and a script see the
same answer.
"""

from __future__ import annotations

import re
from typing import Any, Sequence
from urllib.parse import quote

from twisted.web.template import Tag, tags

from mozpool.web.ui.html import definition_list, device_link, live_region, request_link, table, text_or_dash, when

#: Transitions a device or request page shows (the API pages through the rest).
TIMELINE_LIMIT = 50


def _ids(testid: str, **attrs: Any) -> dict[str, Any]:
    return {"data-testid": testid, **attrs}


def failure_text(failure: dict[str, Any] | None) -> str:
    """A failure summary in one line: what, since when is left to the caller."""
    if not failure:
        return ""
    attempts = f" after {failure['attempts']} attempts" if failure.get("attempts") else ""
    return f"{failure['state']} in {failure['phase']}{attempts}: {failure['reason']}"


#: A UTC time in an explanation's summary, and the "(in N s)" the API wrote after it, if any.
_SUMMARY_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)( \(in -?\d+ s\))?")


def _next_line(steps: dict[str, Any], now: float) -> list[Any]:
    """The summary of what happens next, each time in it followed by its relative time (kept
    current by mozpool.js) in place of the API's "(in N s)" of the moment it answered: the
    timeout, the expiry and the queue timeout each read "at T (in 3 min)"."""
    line: list[Any] = []
    summary = steps["summary"]
    start = 0
    for found in _SUMMARY_TIME.finditer(summary):
        at = found.group(1)
        testid = "why-next-at" if at == steps.get("timeout_at") else None
        if summary.startswith(" (overdue", found.end()):
            continue  # its words say more than "3 s ago"
        line += [summary[start:found.end(1)], " (", when(at, now, testid=testid), ")"]
        start = found.end()
    line.append(summary[start:])
    return line


def why_box(found: dict[str, Any], now: float, details_url: str) -> Tag:
    """The short answer on a device's or request's page: the rule, the failure, what is next."""
    rule = found.get("rule")
    items: list[tuple[str, Any]] = [
        ("State", [tags.strong(found["state"]), " since ", when(found.get("since"), now, testid="why-since")]),
        ("Because", tags.span(rule["text"] if rule else "no transition recorded (history purged, or older than it)",
                              **_ids("why-because"))),
    ]
    failure = found.get("failure")
    if failure:
        items.append(("Failure", tags.span(failure_text(failure), **_ids("why-failure"))))
    counted = [f"{c['name']} {c['value']}" + (f" of {c['limit']}" if c["limit"] is not None else "")
               for c in found.get("counters", [])]
    if counted:
        items.append(("Counters", ", ".join(counted)))
    items.append(("Next", tags.span(_next_line(found["next"], now), **_ids("why-next"))))
    return tags.div(
        definition_list(items, testid="why-box"),
        tags.p(tags.a("why? (the whole explanation)", href=details_url, **_ids("why-link"))),
        class_="why",
    )


def _entry_row(entry: dict[str, Any], now: float, show_machine: bool) -> list[Any]:
    reason = entry["reason"] or {}
    words = []
    if reason.get("text"):
        words.append(str(reason["text"]))
    if reason.get("counter"):
        words.append(f"{reason['counter']} = {reason.get('count')}" +
                     (f" (limit {reason['limit']})" if reason.get("limit") is not None else ""))
    others = {k: v for k, v in reason.items() if k not in ("text", "counter", "count", "limit")}
    if others:
        words.append(", ".join(f"{k}: {v}" for k, v in sorted(others.items())))
    row: list[Any] = [when(entry["timestamp"], now)]
    if show_machine:
        row.append(device_link(entry["device"]) if entry["machine"] == "device" and entry["device"] else
                   f"request #{entry['request']}" if entry["machine"] == "request" else "—")
    row += [
        text_or_dash(entry["from"]), tags.strong(entry["to"]), tags.code(entry["cause"]),
        "; ".join(words) or text_or_dash(None),
        (request_link(entry["request"]) if entry["machine"] == "device" else
         (device_link(entry["device"]) if entry["device"] else text_or_dash(None))),
        entry["server"],
    ]
    return row


def timeline(page: dict[str, Any], now: float, api_url: str, show_machine: bool = False) -> Tag:
    """A state history, newest first, with where the API pages through the older entries."""
    headers = ["when", *(["machine"] if show_machine else []), "from", "to", "cause", "reason",
               "device" if show_machine else "request", "server"]
    rows = [_entry_row(e, now, show_machine) for e in page["history"]]
    more: Any = ""
    if page.get("next_before") is not None:
        more = tags.p("Older entries: ", tags.a(f"{api_url}?before={page['next_before']}",
                                                href=f"{api_url}?before={page['next_before']}"), class_="muted")
    return tags.div(
        table(headers, rows, testid="timeline", row_testid="timeline-row", empty="No transitions recorded."),
        more,
    )


def health_region(region_id: str, url: str, events: str, found: dict[str, Any] | None, page: dict[str, Any],
                  now: float, details_url: str, api_url: str, show_machine: bool = False) -> Tag:
    """The why box and the timeline, refetched together when the object changes."""
    box: Any = tags.p("Explanations are not available on this server.", class_="muted") if found is None else \
        why_box(found, now, details_url)
    return live_region(
        region_id, url, events,
        tags.section(tags.h2("Why"), box, **_ids("why-section")),
        tags.section(tags.h2("Timeline"),
                     tags.p(f"State transitions, newest first; the last {TIMELINE_LIMIT}.", class_="muted"),
                     timeline(page, now, api_url, show_machine), **_ids("timeline-section")),
    )


def _rows_table(rows: Sequence[dict[str, Any]], testid: str, empty: str) -> Tag:
    return table(["input", "to", "when it comes", "what it does"],
                 [[tags.code(r["input"]), r["to"], r["when"], r.get("does") or text_or_dash(None)] for r in rows],
                 testid=testid, empty=empty)


def why_page(found: dict[str, Any], now: float, back: Tag, kind: str) -> list[Any]:
    """The whole explanation: every part of the API's answer, in sections."""
    rule = found.get("rule")
    steps = found["next"]
    parts: list[Any] = [tags.p(back), why_box(found, now, "#rule")]
    if rule:
        parts.append(tags.section(
            tags.h2("The rule that put it there", id="rule"),
            definition_list([
                ("Transition", f"{rule['from'] or '(created)'} → {rule['to']}"),
                ("Cause", tags.code(rule["cause"])),
                ("When", when(rule["at"], now)),
                ("Server", rule["server"]),
                ("Reason", tags.code(str(rule["reason"]))),
            ], testid="why-rule"),
            _rows_table(rule["rows"], "why-rule-rows", "No row of the table matches (a forced state change)."),
        ))
    parts.append(tags.section(
        tags.h2("Counters and limits"),
        table(["counter", "value", "limit", "gives up at"],
              [[c["name"], str(c["value"]), text_or_dash(c["limit"]), text_or_dash(c["gives_up_at"])]
               for c in found["counters"]], testid="why-counters", empty="No counters."),
    ))
    if found.get("failure"):
        failure = found["failure"]
        parts.append(tags.section(tags.h2("Failure"), definition_list([
            ("State", failure["state"]), ("Since", when(failure["since"], now)), ("Phase", failure["phase"]),
            ("Attempts", text_or_dash(failure["attempts"])), ("Reason", failure["reason"]),
        ], testid="why-failure-details")))
    parts.append(tags.section(
        tags.h2("Evidence"),
        tags.ol([tags.li(when(line["timestamp"], now), " ", tags.code(line["source"]), " ", line["message"],
                         **_ids("why-evidence", **{"data-id": str(line["id"])}))
                 for line in found["evidence"]], class_="log") if found["evidence"] else
        tags.p("No log lines to show.", class_="muted"),
    ))
    on_timeout = steps.get("on_timeout")
    parts.append(tags.section(
        tags.h2("What happens next"),
        tags.p(_next_line(steps, now)),
        tags.h3("On its timeout"),
        _rows_table([on_timeout, *on_timeout["outcomes"]] if on_timeout else [], "why-on-timeout", "No timeout."),
        tags.h3("Events it waits for"),
        _rows_table(steps["waiting_for"], "why-waiting-for", "None: only a state change moves it."),
    ))
    boot = found.get("last_boot") if kind == "device" else None
    if boot:
        parts.append(tags.section(tags.h2("Last boot"), definition_list(
            [("Image", text_or_dash(boot["image"])), ("Outcome", text_or_dash(boot["outcome"])),
             ("Started", when(boot["started"], now))]
            + [(phase, f"{seconds:.1f} s") for phase, seconds in boot["phases"].items()],
            testid="why-last-boot")))
    return parts


def boots_page(summary: dict[str, Any]) -> list[Any]:
    """Boot phase times per image and hardware type (what /metrics exports)."""
    intro = tags.p(
        f"Boots started in the last {summary['hours']} hours, as this pool observed them: p50 and p95 seconds of"
        " each phase (power cycle, PXE config fetched over our TFTP, live image up, second stage, download,"
        " extract, reboot to SUT, SD card check; total for completed boots).", class_="muted")
    sections = []
    for group in summary["groups"]:
        outcomes = ", ".join(f"{n} {outcome}" for outcome, n in sorted(group["outcomes"].items()))
        sections.append(tags.section(
            tags.h2(f"{group['image']} on {group['hardware_type']}"),
            tags.p(f"{group['boots']} boots: {outcomes}", class_="muted"),
            table(["phase", "boots", "p50 (s)", "p95 (s)", "max (s)"],
                  [[phase, str(s["count"]), f"{s['p50']:.1f}", f"{s['p95']:.1f}", f"{s['max']:.1f}"]
                   for phase, s in group["phases"].items()],
                  testid="boot-phases", row_testid="boot-phase-row", empty="No phase completed yet."),
            **_ids("boot-group", **{"data-image": group["image"], "data-hardware-type": group["hardware_type"]}),
        ))
    return [intro, *(sections or [tags.p("No boots in this window.", class_="empty")])]


def device_api(name: str, what: str) -> str:
    return f"/api/device/{quote(name, safe='')}/{what}/"
