"""Parsing and checking of everything a client sends: path ids, query parameters, JSON bodies.

Every function either returns clean Python values or raises an ``errors`` exception, so routes
can call them in the order of spec section 1.5 and never see malformed input.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.iweb import IRequest

from mozpool.lifeguard import states
from mozpool.web.errors import BadRequest, PayloadTooLarge
from mozpool.web.interfaces import RequestSpec

MAX_BODY = 1024 * 1024
MAX_INT32 = 2147483647
MAX_ASSIGNEE_CHARS = 256
MAX_ENVIRONMENT_CHARS = 32
MAX_COMMENTS_BYTES = 65535
MAX_BOOT_CONFIG_BYTES = 65535

_DIGITS = re.compile(r"[0-9]+\Z", re.ASCII)

#: Valid ``{new}`` of state-change (spec 6.2: the union of its three lists, and the health
#: states): the one definition, in mozpool.lifeguard.states.
DEVICE_STATES = states.DEVICE_STATES


# --- the body ---------------------------------------------------------------------------------

def read_body(request: IRequest) -> bytes:
    """The raw body, read at most 1 MiB + 1 bytes; 413 beyond 1 MiB."""
    content = getattr(request, "content", None)
    if content is None:
        return b""
    content.seek(0)
    data = content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise PayloadTooLarge(f"request body larger than {MAX_BODY} bytes")
    return bytes(data)


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type; empty or blank means {}."""
    if not raw.strip(b" \t\r\n"):
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON and over-long integer literals.
        raise BadRequest("request body is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


# --- path and query ---------------------------------------------------------------------------

def request_id(text: str) -> int:
    """A request id: ASCII decimal digits only (huge values are left to the 404 lookup)."""
    if not _DIGITS.match(text):
        raise BadRequest(f"malformed request id {text!r}")
    digits = text.lstrip("0") or "0"
    if len(digits) > 30:  # far beyond BIGINT; keep int() away from giant strings
        return 10**30
    return int(digits)


def query(request: IRequest) -> dict[bytes, bytes]:
    """The query string's parameters, first occurrence of each, parsed from the raw URI.

    ``request.args`` will not do: Twisted drops ``?details`` (no ``=``) and merges
    form-encoded POST bodies into it, while our bodies are JSON whatever the Content-Type."""
    uri = request.uri
    if b"?" not in uri:
        return {}
    found: dict[bytes, bytes] = {}
    for item in uri.split(b"?", 1)[1].split(b"&"):
        if not item:
            continue
        name, _, value = item.partition(b"=")
        name = unquote_to_bytes(name.replace(b"+", b" "))
        found.setdefault(name, unquote_to_bytes(value.replace(b"+", b" ")))
    return found


def query_list(request: IRequest, name: str) -> list[str]:
    """Every value of a query parameter, repeated (``?a=1&a=2``) or comma-separated (``?a=1,2``)."""
    uri = request.uri
    values: list[str] = []
    if b"?" not in uri:
        return values
    for item in uri.split(b"?", 1)[1].split(b"&"):
        key, _, value = item.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) != name.encode("ascii"):
            continue
        try:
            text = unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"query parameter {name} is not UTF-8") from None
        values += [v for v in text.split(",") if v]
    return values


def event_filter(request: IRequest, known_types: tuple[str, ...]) -> tuple[frozenset[str], frozenset[int], frozenset[str]]:
    """``/api/events``' filters: device names, request ids, event types."""
    requests = frozenset(request_id(r) for r in query_list(request, "request"))
    types = frozenset(query_list(request, "type"))
    unknown = sorted(types - set(known_types))
    if unknown:
        raise BadRequest(f"unknown event type {unknown[0]!r}; known: {', '.join(known_types)}")
    return frozenset(query_list(request, "device")), requests, types


def last_event_id(request: IRequest) -> int | None:
    """Where a resumed event stream starts: ``?last_event_id=N`` (checked: 400 when malformed),
    else the ``Last-Event-ID`` header a browser sends back (unchecked: one we cannot read is
    answered like an id outside the window, with a reset)."""
    if b"last_event_id" in query(request):
        return int_param_any(request, "last_event_id")
    header = request.getHeader(b"last-event-id")
    if header is None:
        return None
    text = header.decode("latin-1").strip()
    return int(text) if _DIGITS.match(text) and len(text) < 20 else -1


def int_param_any(request: IRequest, name: str) -> int:
    """A non-negative integer query parameter of any size up to 2**63-1."""
    text = query(request).get(name.encode("ascii"), b"").decode("latin-1")
    if not _DIGITS.match(text) or len(text) > 18:
        raise BadRequest(f"query parameter {name} must be decimal digits (at most 18)")
    return int(text)


def flag(request: IRequest, name: str) -> bool:
    """On when present, whatever the value (original quirk: ``?details=0`` is on)."""
    return name.encode("ascii") in query(request)


def int_param(request: IRequest, name: str) -> int:
    """An integer query parameter, 0 … 2**31-1, first occurrence; absent means 0."""
    value = query(request).get(name.encode("ascii"))
    if value is None:
        return 0
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(f"query parameter {name} must be decimal digits") from None
    if not _DIGITS.match(text):
        raise BadRequest(f"query parameter {name} must be decimal digits")
    digits = text.lstrip("0") or "0"
    if len(digits) > 10 or int(digits) > MAX_INT32:
        raise BadRequest(f"query parameter {name} must be at most {MAX_INT32}")
    return int(digits)


# --- body fields ------------------------------------------------------------------------------

_MISSING = object()


def _encodable(key: str, value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{key} is not valid Unicode text") from None
    return value


def string(
    body: dict[str, Any],
    key: str,
    *,
    required: bool = True,
    nullable: bool = False,
    max_chars: int | None = None,
    max_bytes: int | None = None,
    nonempty: bool = False,
) -> str | None:
    """A string field; None when absent (and not required) or null (and nullable)."""
    value = body.get(key, _MISSING)
    if value is _MISSING:
        if required:
            raise BadRequest(f"{key} is required")
        return None
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    _encodable(key, value)
    if nonempty and not value:
        raise BadRequest(f"{key} must not be empty")
    if max_chars is not None and len(value) > max_chars:
        raise BadRequest(f"{key} is longer than {max_chars} characters")
    if max_bytes is not None and len(value.encode("utf-8")) > max_bytes:
        raise BadRequest(f"{key} is longer than {max_bytes} bytes")
    return value


def integer(body: dict[str, Any], key: str, *, low: int = 0, high: int = MAX_INT32) -> int:
    """A required integer field: an integral JSON number or a string of ASCII digits."""
    value = body.get(key, _MISSING)
    if value is _MISSING:
        raise BadRequest(f"{key} is required")
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if value == value and value not in (float("inf"), float("-inf")) and value.is_integer():
            number = int(value)
    elif isinstance(value, str) and _DIGITS.match(value):
        digits = value.lstrip("0") or "0"
        number = int(digits) if len(digits) <= 20 else high + 1
    if number is None:
        raise BadRequest(f"{key} must be an integer")
    if not low <= number <= high:
        raise BadRequest(f"{key} must be between {low} and {high}")
    return number


def json_text(key: str, value: str) -> str:
    """A boot configuration: JSON text (or ``""``), at most 65,535 bytes."""
    if len(value.encode("utf-8")) > MAX_BOOT_CONFIG_BYTES:
        raise BadRequest(f"{key} is longer than {MAX_BOOT_CONFIG_BYTES} bytes")
    if value.strip():
        try:
            json.loads(value)
        except (ValueError, RecursionError):
            raise BadRequest(f"{key} is not JSON text") from None
    elif value:
        raise BadRequest(f"{key} is not JSON text")
    return value


def boot_config_field(body: dict[str, Any], key: str = "boot_config") -> str | None:
    """An optional JSON-text field; absent or null gives None."""
    value = string(body, key, required=False, nullable=True)
    return None if value is None else json_text(key, value)


# --- whole bodies -----------------------------------------------------------------------------

def comments(body: dict[str, Any]) -> str | None:
    if "comments" not in body:
        raise BadRequest("comments is required")
    return string(body, "comments", nullable=True, max_bytes=MAX_COMMENTS_BYTES)


def environment(body: dict[str, Any]) -> str:
    value = string(body, "environment", nonempty=True, max_chars=MAX_ENVIRONMENT_CHARS)
    assert value is not None
    return value


def duration(body: dict[str, Any]) -> int:
    return integer(body, "duration", low=1, high=MAX_INT32)


def request_creation(body: dict[str, Any]) -> RequestSpec:
    """assignee (or requester), duration, image and environment of spec 3.4; the boot
    configuration, which depends on the image, is added by :func:`boot_config_from`."""
    if "assignee" in body:
        assignee = string(body, "assignee", max_chars=MAX_ASSIGNEE_CHARS)
    elif "requester" in body:
        assignee = string(body, "requester", max_chars=MAX_ASSIGNEE_CHARS)
    else:
        raise BadRequest("assignee is required")
    length = duration(body)
    image = string(body, "image")
    env = string(body, "environment", required=False, nullable=True, max_chars=MAX_ENVIRONMENT_CHARS)
    assert assignee is not None and image is not None  # required and not nullable: string() raised
    priority = integer(body, "priority", low=0, high=100) if body.get("priority") is not None else 50
    wait = integer(body, "queue_timeout", low=0, high=MAX_INT32) if body.get("queue_timeout") is not None else 600
    return RequestSpec(assignee, length, image, env or "any", priority=priority, queue_timeout=wait)


def boot_config_from(body: dict[str, Any], keys: list[str]) -> str:
    """The JSON text of exactly the image's ``boot_config_keys``, in their order."""
    config = {}
    for key in keys:
        value = string(body, key)
        config[key] = value
    text = json.dumps(config)
    if len(text.encode("utf-8")) > MAX_BOOT_CONFIG_BYTES:
        raise BadRequest(f"boot configuration is longer than {MAX_BOOT_CONFIG_BYTES} bytes")
    return text


def device_event_body(event: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body LifeGuard gets: checked and normalised for ``please_image``, else {}-like."""
    if event == "please_image":
        image = string(body, "image")
        config = boot_config_field(body)
        return {"image": image, "boot_config": "{}" if config is None else config}
    return dict(body)


def request_event_body(event: str, body: dict[str, Any]) -> dict[str, Any]:
    if event == "lifeguard_finished":
        result = string(body, "imaging_result", required=False, nullable=True)
        return {} if result is None else {"imaging_result": result}
    return {}  # no other request event takes arguments from outside (the queue's carry ids)


def power_cycle_body(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """(pxe_config, boot_config); null counts as absent (the original client sends nulls)."""
    pxe = string(body, "pxe_config", required=False, nullable=True)
    config = boot_config_field(body)
    return pxe, config


def state_name(new: str) -> str:
    if new not in DEVICE_STATES:
        raise BadRequest(f"{new!r} is not a device state")
    return new
