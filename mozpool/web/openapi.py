"""The OpenAPI 3 description of the whole API (spec 7.1), built once and served from memory.

One table row per operation keeps it reviewable against spec section 9; the test suite checks
it against the routes actually registered.
"""

from __future__ import annotations

from typing import Any

from mozpool.web import auth
from mozpool.broker.machine import REQUEST_STATES
from mozpool.web.validate import DEVICE_STATES

JSON = "application/json; charset=utf-8"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str] | None = None, **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema


def _closed(**props: Any) -> dict[str, Any]:
    """An object with exactly these keys."""
    return {**_obj(list(props), **props), "additionalProperties": False}


S = {"type": "string"}
NS = {"type": ["string", "null"]}
I = {"type": "integer"}
NI = {"type": ["integer", "null"]}
B = {"type": "boolean"}
TIME = {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?$", "description": "UTC"}


def _one_to(limit: int) -> str:
    """A pattern matching exactly the decimal spellings (leading zeros allowed) of 1 ... ``limit``."""
    top = str(limit)
    shorter = [f"[1-9][0-9]{{0,{len(top) - 2}}}"] if len(top) > 1 else []
    same = []
    for i, digit in enumerate(top):
        low = 1 if i == 0 else 0
        if int(digit) > low:
            rest = len(top) - i - 1
            below = str(low) if int(digit) - 1 == low else f"[{low}-{int(digit) - 1}]"
            same.append(top[:i] + below + (f"[0-9]{{{rest}}}" if rest else ""))
    return "^0*(" + "|".join(shorter + same + [top]) + ")$"


DURATION = {
    "oneOf": [{"type": "integer", "minimum": 1, "maximum": 2147483647},
              {"type": "string", "pattern": _one_to(2147483647)}],
    "description": "seconds, 1 ... 2147483647: an integral number or a string of decimal digits",
}
#: A string holding JSON text (or empty), as the boot configs are; null counts as absent.
JSON_TEXT = {
    "type": ["string", "null"],
    "contentMediaType": "application/json",
    "description": "JSON text, or empty; at most 65535 bytes",
}

_REQUEST_OBJECT = _closed(
    id=I, requested_device=S, assignee=S, expires=TIME, environment=S, image=S, boot_config=S,
    assigned_device=S, url=S,
    priority={"type": "integer", "minimum": 0, "maximum": 100, "description": "higher is served first"},
    queue_timeout={"type": "integer", "minimum": 0, "description": "seconds it may wait for a device"},
)

#: A device's failure summary, or null (issue 15).
_NULLABLE_FAILURE = {"anyOf": [_ref("Failure"), {"type": "null"}]}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error"], error={"type": "string", "minLength": 1}),
    "RequestConflict": _obj(["error", "request"], error=S, request=_ref("Request")),
    "Redirect": _closed(redirect=S),
    "Empty": {"type": "object", "additionalProperties": False},
    "Version": _closed(version={"type": "string", "minLength": 1}),
    "LogEntry": _closed(id=I, timestamp=TIME, source=S, message=S),
    "Log": _closed(log={"type": "array", "items": _ref("LogEntry")}),
    "Status": _closed(state=S, log={"type": "array", "items": _ref("LogEntry"), "maxItems": 100}),
    "RequestStatus": {
        **_obj(
            ["state", "log"],
            state={"type": "string", "enum": list(REQUEST_STATES)},
            log={"type": "array", "items": _ref("LogEntry"), "maxItems": 100},
            queue={"anyOf": [_ref("QueuePlace"), {"type": "null"}],
                   "description": "while the request waits for a device (finding_device)"},
        ),
        "additionalProperties": False,
    },
    "QueuePlace": _closed(
        position={"type": "integer", "minimum": 1, "description": "1: next to be served"},
        ahead={"type": "integer", "minimum": 0, "description": "requests before it that could take the same devices"},
        eta={"type": ["string", "null"], "description": "estimated time it is ready (UTC)"},
        why=S,
    ),
    "State": _closed(state=S),
    "Success": _closed(success=B),
    "Device": _closed(
        id=I, name=S, fqdn=S, inventory_id=I, mac_address={"type": "string", "pattern": "^[0-9a-f]{12}$"},
        imaging_server=S, relay_info=NS, state=S, comments=NS, environment=NS, image=NS, boot_config=NS,
        request_id=NI,
        unreachable_since={"type": ["string", "null"],
                           "description": "when its imaging server was last heard from, if that server is dead"},
        failure=_NULLABLE_FAILURE,
    ),
    "DeviceList": _closed(
        devices={"oneOf": [{"type": "array", "items": S}, {"type": "array", "items": _ref("Device")}]}
    ),
    "Image": _closed(
        id=I, name=S, boot_config_keys={"type": "array", "items": S}, can_reuse=B, hidden=B, has_sut_agent=B
    ),
    "ImageList": _closed(images={"type": "array", "items": _ref("Image")}),
    "Request": _REQUEST_OBJECT,
    "RequestEnvelope": _closed(request=_ref("Request")),
    "RequestListEntry": _closed(
        id=I, imaging_server=S, assignee=S, boot_config=S, state=S, expires=TIME, requested_device=S,
        environment=S, assigned_device=S, device_state=S, device_status=S, priority=I,
    ),
    "RequestList": _closed(requests={"type": "array", "items": _ref("RequestListEntry")}),
    "BootConfig": {"description": "the device's next boot config exactly as stored: any JSON text ({} when none)"},
    "EnvironmentList": _closed(environments={"type": "array", "items": S}),
    "PxeConfigList": _closed(pxe_configs={"type": "array", "items": S}),
    "PxeConfigDetails": _closed(details=_closed(name=S, description=S, contents=S, active=B)),
    "CategoryCounts": _closed(in_use=I, idle=I, processing=I, failed=I),
    "PoolSummary": _closed(
        generated_at=TIME,
        total=I,
        by_category=_ref("CategoryCounts"),
        by_hardware_type={
            "type": "object",
            "additionalProperties": _closed(total=I, in_use=I, idle=I, processing=I, failed=I),
        },
        failed_devices={
            "type": "array",
            "items": _closed(name=S, state=S, hardware_type=S, imaging_server=S, environment=NS, comments=NS,
                             failure=_NULLABLE_FAILURE),
        },
        failure_phases={"type": "object", "additionalProperties": I,
                        "description": "failed devices by the state they failed in (unknown: no summary)"},
        unreachable_servers={
            "type": "array", "description": "imaging servers silent for 3 heartbeats, and their devices",
            "items": _closed(fqdn=S, last_seen=TIME, devices=I),
        },
    ),
    # /api/events: the stream, and the JSON `data:` of each event type
    "EventStream": {
        "type": "string",
        "description": (
            "text/event-stream: messages of `id:` (grows; send it back as Last-Event-ID to resume),"
            " `event:` (a type below) and one line of JSON `data:`; `: keep-alive` comments every 15 s."
            " A resume from an id outside the replay window (the last 10,000 events of this server)"
            " starts with a `reset` event: fetch the current state again."
        ),
        "x-event-types": {
            "device_state": _ref("EventDeviceState"),
            "request_state": _ref("EventRequestState"),
            "request_device": _ref("EventRequestDevice"),
            "device_log": _ref("EventLog"),
            "request_log": _ref("EventLog"),
            "device_comments": _ref("EventDeviceComments"),
            "device_environment": _ref("EventDeviceEnvironment"),
            "board_health": _ref("EventBoardHealth"),
            "reset": _ref("Empty"),
        },
    },
    "EventDeviceState": {
        **_closed(device=S, imaging_server=S, state=S, old_state=NS, ts=TIME, failure=_ref("Failure")),
        "required": ["device", "imaging_server", "state", "old_state", "ts"],
    },
    "EventRequestState": _obj(
        ["request", "state", "old_state", "ts"], request=I, state=S,
        old_state={"type": ["string", "null"], "description": "null: the request was just created"}, ts=TIME,
    ),
    "EventRequestDevice": _obj(
        ["request", "device", "ts"], request=I, ts=TIME,
        device={"type": ["string", "null"], "description": "the device claimed; null when the claim was dropped"},
        imaging_server=S,
    ),
    "EventLog": _obj(
        ["id", "timestamp", "source", "message", "ts"], device=S, imaging_server=S, request=I, id=I,
        timestamp=TIME, source=S, message=S, ts=TIME,
    ),
    "EventDeviceComments": _closed(device=S, imaging_server=S, comments=NS, ts=TIME),
    "EventDeviceEnvironment": _closed(device=S, imaging_server=S, environment=S, ts=TIME),
    "EventBoardHealth": _closed(
        board={"type": "string", "description": "the controller's name (relay_boards.name)"},
        fqdn={"type": "string", "description": "its address"}, board_server={"type": "string", "description":
                                                                               "the imaging server that probes it"},
        health={"type": "string", "enum": ["ok", "suspect"]}, old_health={"type": "string", "enum": ["ok", "suspect"]},
        reason={"type": ["string", "null"], "description": "why it became suspect, or how it came back"}, ts=TIME,
    ),
    "BoardHealth": _closed(
        name=S, fqdn=S, imaging_server=S, health={"type": "string", "enum": ["ok", "suspect"]},
        since={"type": ["string", "null"], "description": "when it entered this health (UTC)"},
        reason={"type": ["string", "null"], "description": "why it is suspect, or how it came back"},
        next_probe={"type": ["string", "null"], "description": "when its owner probes it next (suspect only)"},
        failed_probes={"type": "integer", "description": "probes failed since it became suspect"},
    ),
    "ServerQuarantines": _closed(
        imaging_server=S,
        quarantines={"type": "integer", "description": "its devices' entries into failed_* within the window"},
        held={"type": "array", "items": S, "description": "its devices held past the cap"},
    ),
    "HealthReport": _closed(
        boards={"type": "array", "items": _ref("BoardHealth")},
        servers={"type": "array", "items": _ref("ServerQuarantines")},
        quarantine_cap={"type": ["integer", "null"],
                        "description": "automatic quarantines per window (this server's setting; null: none)"},
        quarantine_window={"type": ["number", "null"], "description": "the window in nominal seconds"},
    ),
    "RelayHealth": _closed(
        board=_ref("BoardHealth"),
        devices={"type": "array", "items": _closed(
            name=S, state=S, request_id={"type": ["integer", "null"]})},
    ),
    "ServerList": _closed(servers={"type": "array", "items": _closed(
        fqdn=S, alive=B, last_seen={"type": ["string", "null"], "description": "last heartbeat (UTC)"}, devices=I,
    )}),
    "Whoami": _closed(
        name=S, kind={"type": "string", "enum": ["token", "server", "device", "anonymous"]},
        role={"type": ["string", "null"], "description": "what the caller may do (null: nothing without a token)"},
        mode={"type": "string", "enum": ["required", "open"]},
    ),
    "Token": _closed(name=S, role=S, created=TIME, revoked={"type": ["string", "null"]}),
    "TokenList": _closed(tokens={"type": "array", "items": _ref("Token")}),
    "TokenCreateBody": _obj(["name", "role"], name={"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$"},
                            role={"type": "string", "enum": ["reader", "user", "operator", "admin"]}),
    "TokenCreated": _closed(name=S, role=S, token={"type": "string", "description": "shown only now"}),
    "OpenAPI": _obj(["openapi", "info", "paths"], openapi=S, info={"type": "object"}, paths={"type": "object"}),
    # health (issue 15): state history, failure summaries, explanations, boot telemetry
    "Failure": {
        **_closed(
            state=S, since=TIME, reason={"type": "string", "description": "why, in one sentence"},
            phase={"type": "string", "description": "the state it failed in"},
            attempts={"type": ["integer", "null"], "description": "the counter's value when it gave up"},
            evidence={"type": "array", "items": I, "description": "ids of the device's log lines that show it"},
        ),
        "description": "why a device in a failed_*, locked_out, troubleshooting (or held, board_suspect) state is there",
    },
    "HistoryEntry": _closed(
        id=I, timestamp=TIME, machine={"type": "string", "enum": ["device", "request"]}, device=NS, request=NI,
        **{"from": {"type": ["string", "null"], "description": "null: the request was created"}},
        to=S, cause={"type": "string", "description": "the event, timeout, state_change, entry (an entry action"
                     " moved on), created, or the outcome of a decision"},
        server={"type": "string", "description": "the imaging server that made the transition"},
        reason={"type": "object", "description": "counter, count, limit, text, ... as the machine recorded them"},
    ),
    "History": _closed(
        history={"type": "array", "items": _ref("HistoryEntry"), "description": "newest first"},
        next_before={"type": ["integer", "null"], "description": "pass as ?before= for the next (older) page; null: no more"},
    ),
    "TableRow": _closed(input=S, to=S, when=S, does=S),
    "Rule": {"type": ["object", "null"], "properties": {
        "from": NS, "to": S, "cause": S, "at": TIME, "server": S, "history_id": I, "reason": {"type": "object"},
        "rows": {"type": "array", "items": _ref("TableRow"), "description": "the machine's table rows followed"},
        "text": S}},
    "Counter": _closed(name=S, value=I, limit=NI, gives_up_at=NI),
    "Next": _obj(
        ["timeout_at", "in_seconds", "on_timeout", "waiting_for", "summary"],
        timeout_at={"type": ["string", "null"]}, in_seconds={"type": ["number", "null"]},
        on_timeout={"type": ["object", "null"], "description": "the timeout's table row and the outcomes it leads to"},
        waiting_for={"type": "array", "items": _ref("TableRow")}, summary=S,
        expires_at={"type": ["string", "null"]}, expires_in_seconds={"type": ["number", "null"]},
        queue_deadline={"type": ["string", "null"]},
    ),
    "DeviceWhy": _closed(
        device=S, state=S, read_as=S, since={"type": ["string", "null"]}, imaging_server=S,
        request={"type": ["object", "null"]}, image=NS, next_image=NS, hardware_type=NS,
        power={"type": ["object", "null"], "description": "its power controller and that controller's state"},
        rule=_ref("Rule"), counters={"type": "array", "items": _ref("Counter")}, failure=_NULLABLE_FAILURE,
        evidence={"type": "array", "items": _ref("LogEntry")}, next=_ref("Next"),
        last_boot={"type": ["object", "null"], "description": "its newest boot's milestones and phase seconds"},
    ),
    "RequestWhy": _closed(
        request=I, state=S, read_as=S, since={"type": ["string", "null"]}, imaging_server=S, requested_device=S,
        image=S, environment=S, device={"type": ["object", "null"]}, rule=_ref("Rule"),
        counters={"type": "array", "items": _ref("Counter")}, evidence={"type": "array", "items": _ref("LogEntry")},
        next=_ref("Next"),
    ),
    "BootSummary": _closed(
        generated_at=TIME, hours=I, since=TIME,
        groups={"type": "array", "items": _closed(
            image=S, hardware_type=S, boots=I, outcomes={"type": "object", "additionalProperties": I},
            phases={"type": "object", "description": "power_cycle, pxe_fetch, live_boot, second_stage, download,"
                    " extract, reboot, sdcard_check, total (completed boots)",
                    "additionalProperties": _closed(count=I, p50={"type": "number"}, p95={"type": "number"},
                                                    max={"type": "number"}, sum={"type": "number"})},
        )},
    ),
    # request bodies
    "RequestCreationBody": {
        **_obj(
            ["duration", "image"],
            assignee={"type": "string", "maxLength": 256},
            requester={"description": "read only without assignee, and then as assignee"},
            duration=DURATION,
            image=S,
            environment={"type": ["string", "null"], "maxLength": 32},
            priority={"type": ["integer", "null"], "minimum": 0, "maximum": 100,
                      "description": "0-100, default 50: higher is served first"},
            queue_timeout={"type": ["integer", "null"], "minimum": 0, "maximum": 2**31 - 1,
                           "description": "seconds to wait for a device (default 600), then failed_device_busy"},
        ),
        # assignee, or else requester
        "anyOf": [
            {"required": ["assignee"]},
            {"required": ["requester"], "properties": {"requester": {"type": "string", "maxLength": 256}}},
        ],
        "additionalProperties": {
            "description": "the image's boot_config_keys (/api/image/list/) are required strings; others are ignored"
        },
    },
    "RenewBody": _obj(["duration"], duration=DURATION),
    "IgnoredBody": {"type": "object", "description": "any JSON object: this event ignores it"},
    "LifeguardFinishedBody": _obj(
        imaging_result={"type": ["string", "null"], "description": "complete, failed-bad-image or failed-bad-device"}
    ),
    "PleaseImageBody": _obj(["image"], image=S, boot_config=JSON_TEXT),
    "PowerCycleBody": _obj(pxe_config=NS, boot_config=JSON_TEXT),
    "CommentsBody": _obj(["comments"], comments={"type": ["string", "null"], "description": "at most 65535 bytes"}),
    "EnvironmentBody": _obj(["environment"], environment={"type": "string", "minLength": 1, "maxLength": 32}),
}

_WHY = {
    "204": "done",
    "302": "another imaging server owns the object; repeat the call at Location",
    "400": "malformed id, query parameter or body",
    "404": "unknown object",
    "405": "method not supported on this path",
    "409": "conflict",
    "413": "body larger than 1 MiB",
    "503": "the database could not be reached",
    "401": "no credential where one is needed, or an invalid or revoked one (Authorization: Bearer <token>)",
    "403": "the caller's role may not do this (or, for browsers, the Origin is not a known imaging server)",
}

PARAMS = {
    "device": "a device name",
    "id": "a request id (ASCII decimal digits)",
    "event": "an event name",
    "old": "the state the device must be in",
    "new": "a device state name (section 6.2)",
    "relay": "a relay-board name",
    "pxe": "a PXE-config name",
    "name": "a token name",
}

QUERY = {
    "details": ("flag", "on when present, whatever the value"),
    "include_closed": ("flag", "on when present, whatever the value"),
    "cache": ("flag", "answer from the 5-second snapshot"),
    "active_only": ("flag", "only active configs"),
    "timeperiod": ("int", "entries from the last N seconds; 0 = no restriction"),
    "limit": ("int", "the N most recent entries; 0 = no restriction (history: 0 = 100, larger than 1000 = 1000)"),
    "before": ("int", "history: only entries with an id below this (the previous page's next_before)"),
    "hours": ("int", "the window in hours (default 24, at most 744)"),
    "device": ("list", "only events of these devices (repeat, or separate with commas)"),
    "request": ("list", "only events of these request ids (repeat, or separate with commas)"),
    "type": ("list", "only these event types (repeat, or separate with commas)"),
    "last_event_id": ("int", "resume after this event id (as the Last-Event-ID header does)"),
}

# (path, methods, summary, query params, request body schema, success status, success schema,
#  error statuses, redirecting)
R = True
_OPS: list[tuple[str, tuple[str, ...], str, tuple[str, ...], str | None, str, str | None, tuple[str, ...], bool]] = [
    ("/api/version/", ("get",), "Daemon version", (), None, "200", "Version", (), False),
    ("/api/device/list/", ("get",), "Device names, or details", ("details",), None, "200", "DeviceList",
     ("503",), False),
    ("/api/device/{device}/request/", ("post",), "Request a device (or `any`)", (), "RequestCreationBody", "200",
     "RequestEnvelope", ("400", "404", "409", "413", "503"), False),
    ("/api/request/list/", ("get",), "Requests", ("include_closed",), None, "200", "RequestList", ("503",), False),
    ("/api/request/{id}/details/", ("get",), "Request details", (), None, "200", "Request",
     ("400", "404", "503"), False),
    ("/api/request/{id}/status/", ("get",), "Request state, recent log and place in the queue", (), None, "200",
     "RequestStatus",
     ("400", "404", "503"), False),
    ("/api/request/{id}/log/", ("get",), "Request log", ("timeperiod", "limit"), None, "200", "Log",
     ("400", "404", "503"), False),
    ("/api/request/{id}/renew/", ("post",), "Renew a request", (), "RenewBody", "204", None,
     ("302", "400", "403", "404", "413", "503"), R),
    ("/api/request/{id}/return/", ("post",), "Return a request (body ignored)", (), None, "204", None,
     ("302", "400", "403", "404", "413", "503"), R),
    ("/api/request/{id}/event/{event}/", ("get", "post"), "Feed an event to a request (but lifeguard_finished)",
     (), "IgnoredBody", "200", "Empty", ("302", "400", "403", "404", "413", "503"), R),
    ("/api/request/{id}/event/lifeguard_finished/", ("get", "post"), "Feed LifeGuard's imaging result to a request",
     (), "LifeguardFinishedBody", "200", "Empty", ("302", "400", "403", "404", "413", "503"), R),
    ("/api/image/list/", ("get",), "Images that are not hidden", (), None, "200", "ImageList", ("503",), False),
    ("/api/device/{device}/event/{event}/", ("get", "post"), "Feed an event to a device (but please_image)", (),
     "IgnoredBody", "200", "Empty", ("302", "400", "403", "404", "413", "503"), R),
    ("/api/device/{device}/event/please_image/", ("get", "post"), "Image the device", (), "PleaseImageBody", "200",
     "Empty", ("302", "400", "403", "404", "413", "503"), R),
    ("/api/device/{device}/state-change/{old}/to/{new}/", ("post",), "Conditional state change (body ignored)",
     (), None, "200", "Empty", ("302", "400", "403", "404", "409", "413", "503"), R),
    ("/api/device/{device}/status/", ("get",), "Device state and recent log", (), None, "200", "Status",
     ("404", "503"), False),
    ("/api/device/{device}/state/", ("get",), "Device state", ("cache",), None, "200", "State", ("404", "503"),
     False),
    ("/api/device/{device}/power-cycle/", ("post",), "Start a power-cycle", (), "PowerCycleBody", "200", "Empty",
     ("302", "400", "403", "404", "413", "503"), R),
    ("/api/device/{device}/power-off/", ("get", "post"), "Start a power-off (POST body ignored)", (), None, "200",
     "Empty", ("302", "403", "404", "413", "503"), R),
    ("/api/device/{device}/clear-pxe/", ("post",), "Remove the PXE config file (body ignored)", (), None, "200",
     "Empty", ("302", "403", "404", "413", "503"), R),
    ("/api/device/{device}/ping/", ("get",), "Ping the device", (), None, "200", "Success",
     ("302", "403", "404", "503"), R),
    ("/api/relay/{relay}/test/", ("get",), "Test a relay board", (), None, "200", "Success",
     ("302", "403", "404", "503"), R),
    ("/api/device/{device}/log/", ("get",), "Device log", ("timeperiod", "limit"), None, "200", "Log",
     ("400", "404", "503"), False),
    ("/api/device/{device}/bootconfig/", ("get",), "The device's next boot config", (), None, "200", "BootConfig",
     ("404", "503"), False),
    ("/api/device/{device}/set-comments/", ("post",), "Set operator comments", (), "CommentsBody", "200", "Empty",
     ("302", "400", "403", "404", "413", "503"), R),
    ("/api/device/{device}/set-environment/", ("post",), "Set the environment", (), "EnvironmentBody", "200",
     "Empty", ("302", "400", "403", "404", "413", "503"), R),
    ("/api/environment/list/", ("get",), "Environments in use", (), None, "200", "EnvironmentList", ("503",),
     False),
    ("/api/bmm/pxe_config/list/", ("get",), "PXE config names", ("active_only",), None, "200", "PxeConfigList",
     ("503",), False),
    ("/api/bmm/pxe_config/{pxe}/details/", ("get",), "PXE config details", (), None, "200", "PxeConfigDetails",
     ("404", "503"), False),
    ("/api/openapi.json", ("get",), "This document", (), None, "200", "OpenAPI", (), False),
    ("/api/events", ("get",), "Server-Sent Events of every server's devices and requests",
     ("device", "request", "type", "last_event_id"), None, "200", "EventStream", ("400", "503"), False),
    ("/api/server/list/", ("get",), "Imaging servers: alive while their heartbeats come (every 10 s)", (), None,
     "200", "ServerList", ("503",), False),
    ("/api/whoami/", ("get",), "Who the caller is, its role and the server's auth mode", (), None, "200",
     "Whoami", (), False),
    ("/api/token/list/", ("get",), "API tokens (admin)", (), None, "200", "TokenList", ("503",), False),
    ("/api/token/create/", ("post",), "Make an API token (admin); the token is in the answer only",
     (), "TokenCreateBody", "200", "TokenCreated", ("400", "409", "413", "503"), False),
    ("/api/token/{name}/revoke/", ("post",), "Revoke an API token (admin)", (), None, "200", "Empty",
     ("404", "413", "503"), False),
    ("/api/pool/summary/", ("get",), "Pool summary by category and hardware type", (), None, "200",
     "PoolSummary", ("503",), False),
    ("/api/device/{device}/history/", ("get",), "The device's state history, newest first; paged with"
     " ?limit= and ?before=", ("limit", "before"), None, "200", "History", ("400", "404", "503"), False),
    ("/api/request/{id}/history/", ("get",), "The request's state history and its device's while it held it,"
     " newest first; paged", ("limit", "before"), None, "200", "History", ("400", "404", "503"), False),
    ("/api/device/{device}/why/", ("get",), "Why the device is in its state, and what happens next and when",
     (), None, "200", "DeviceWhy", ("404", "503"), False),
    ("/api/request/{id}/why/", ("get",), "Why the request is in its state, and what happens next and when",
     (), None, "200", "RequestWhy", ("400", "404", "503"), False),
    ("/api/pool/boots/", ("get",), "Boot phase times (p50/p95) per image and hardware type", ("hours",), None,
     "200", "BootSummary", ("400", "503"), False),
    ("/api/health/", ("get",), "Power controllers' health (ok or suspect, why, next probe) and each imaging"
     " server's automatic quarantines against its cap", (), None, "200", "HealthReport", ("503",), False),
    ("/api/relay/{relay}/health/", ("get",), "One power controller's health and the devices behind it", (), None,
     "200", "RelayHealth", ("404", "503"), False),
    ("/metrics", ("get",), "Prometheus metrics", (), None, "200", None, (), False),
]


PATH_SCHEMAS: dict[str, Any] = {
    "id": {"type": "string", "pattern": "^[0-9]+$"},
    "new": {"type": "string", "enum": sorted(DEVICE_STATES)},
}

#: Paths that spell out one value of a route's placeholder, for the body that value reads.  As
#: OpenAPI matches paths, the concrete one wins; the route's own entry describes every other value.
SPECIALISED = {
    "/api/request/{id}/event/lifeguard_finished/": "/api/request/{id}/event/{event}/",
    "/api/device/{device}/event/please_image/": "/api/device/{device}/event/{event}/",
}


def _path_params(path: str) -> list[dict[str, Any]]:
    names = [p[1:-1] for p in path.split("/") if p.startswith("{")]
    return [
        {"name": n, "in": "path", "required": True, "description": PARAMS[n], "schema": PATH_SCHEMAS.get(n, S)}
        for n in names
    ]


def _query_params(names: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for n in names:
        kind, why = QUERY[n]
        if kind == "int":
            schema: dict[str, Any] = {"type": "integer", "minimum": 0,
                                      "maximum": 999999999999999999 if n in ("last_event_id", "before") else 2147483647}
        else:
            schema = S
        param = {"name": n, "in": "query", "required": False, "description": why, "schema": schema,
                 "allowEmptyValue": kind == "flag"}
        if kind == "list":
            param.update(style="form", explode=True)
        out.append(param)
    return out


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _responses(method: str, status: str, schema: str | None, errors: tuple[str, ...], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if status == "204":
        out["204"] = {"description": _WHY["204"]}
    elif path == "/api/events":
        out["200"] = {"description": "an endless stream of events",
                      "content": {"text/event-stream": {"schema": _ref(schema or "EventStream")}}}
    elif path == "/metrics":
        out["200"] = {"description": "Prometheus text exposition format 0.0.4",
                      "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": S}}}
    else:
        assert schema is not None
        ok: dict[str, Any] = {"description": "success", "content": _json(_ref(schema))}
        if path.endswith("/state/"):
            ok["headers"] = {
                "Cache-Control": {"description": "with ?cache: public, max-age=N", "schema": S},
                "Expires": {"description": "with ?cache: when the snapshot expires", "schema": S},
            }
        out["200"] = ok
    for code in errors:
        if code == "302":
            out["302"] = {"description": _WHY["302"], "headers": {"Location": {"schema": S}},
                          "content": _json(_ref("Redirect"))}
        elif code == "409" and path.endswith("/request/"):
            out["409"] = {"description": "the named device is held by another open request",
                          "content": _json(_ref("RequestConflict"))}
        else:
            out[code] = {"description": _WHY[code], "content": _json(_ref("Error"))}
    if path.startswith("/api/"):
        out["404"] = out.get("404") or {"description": "unknown path", "content": _json(_ref("Error"))}
    rule = auth.rule_for(SPECIALISED.get(path, path), method.upper())
    if rule.role != auth.PUBLIC:
        out["401"] = {"description": _WHY["401"], "headers": {"WWW-Authenticate": {"schema": S}},
                      "content": _json(_ref("Error"))}
        # (a read too: a device's boot token may read its own boot config and nothing else)
        why = _WHY["403"] if not rule.reads else "a device's boot token used for anything but its own boot config"
        out["403"] = {"description": why, "content": _json(_ref("Error"))}
    out["405"] = {"description": _WHY["405"], "headers": {"Allow": {"schema": S}}, "content": _json(_ref("Error"))}
    return dict(sorted(out.items()))


def _options(path: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": "CORS preflight, answered locally",
        "responses": {
            "204": {"description": "preflight accepted",
                    "headers": {h: {"schema": S} for h in ("Access-Control-Allow-Origin",
                                                           "Access-Control-Allow-Methods",
                                                           "Access-Control-Allow-Headers")}},
            "400": {"description": _WHY["400"], "content": _json(_ref("Error"))},
            "403": {"description": _WHY["403"], "content": _json(_ref("Error"))},
            "503": {"description": _WHY["503"], "content": _json(_ref("Error"))},
        },
    }
    if "{new}" in path:
        # The preflight checks a request id, but not the state name a POST would.
        op["parameters"] = [{"name": "new", "in": "path", "required": True, "schema": S,
                             "description": "any text: the preflight does not read it"}]
    return op


def document(version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, methods, summary, query, body, status, schema, errors, redirecting in _OPS:
        item: dict[str, Any] = {}
        params = _path_params(path)
        if params:
            item["parameters"] = params
        for method in methods:
            op: dict[str, Any] = {
                "operationId": method + "_" + path.strip("/").replace("/", "_").replace("{", "").replace("}", ""),
                "summary": summary,
                "responses": _responses(method, status, schema, errors, path),
            }
            if query:
                op["parameters"] = _query_params(query)
            if body is not None and method == "post":
                op["requestBody"] = {
                    "required": "required" in SCHEMAS[body] or "anyOf" in SCHEMAS[body],
                    "description": "read as UTF-8 JSON whatever the Content-Type; empty means {}",
                    "content": {"application/json": {"schema": _ref(body)}},
                }
            if method == "get" and body is not None:
                op["description"] = "acts as a POST with an empty body"
                if "required" in SCHEMAS[body]:
                    op["description"] += ", which this call refuses (400)"
            item[method] = op
        if redirecting:
            item["options"] = _options(path)
        paths[path] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MozPool on Twisted",
            "version": version,
            "description": "Device pool manager: MozPool (requests), LifeGuard (device states), BMM (hardware).",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
