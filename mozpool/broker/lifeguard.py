"""MozPool's one outgoing call: a ``please_*`` event POSTed to the device owner's LifeGuard.

Always over HTTP, even when the owner is this server (state-machines.md R-8), so one code path
serves a single server and a pool of them.  The call is bounded on the injected clock and
follows one 302 itself, keeping method and body (http-api.md 2.3, 2.5).
"""

from __future__ import annotations

import json
from typing import Any, Protocol
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from mozpool.logconfig import Logger
from twisted.python.failure import Failure

from mozpool.serverurl import base_url

log = Logger()

#: Nominal bound on one call, redirect included (shorter than contacting_lifeguard's 30 s).
CONTACT_TIMEOUT = 20.0

JSON_HEADERS = {b"Content-Type": [b"application/json"]}


class TreqLike(Protocol):
    """The part of ``treq`` (``treq.client.HTTPClient``, ``treq.testing.StubTreq``) we use."""

    def post(self, url: str, data: Any = None, **kwargs: Any) -> "defer.Deferred[Any]": ...


class ContactFailed(Exception):
    """LifeGuard did not accept the event (an answer other than 200, or a second redirect)."""


def event_url(server: str, device: str, event: str) -> str:
    return f"{base_url(server)}/api/device/{quote(device, safe='')}/event/{event}/"


async def _drain(response: Any) -> None:
    """Read the body so the connection can be reused; its content does not matter."""
    content = getattr(response, "content", None)
    if content is not None:
        await content()


def _location(response: Any) -> str | None:
    values = response.headers.getRawHeaders(b"location") if response.headers is not None else None
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


async def _post_once_following(http: TreqLike, url: str, body: bytes) -> int:
    response = await http.post(url, data=body, headers=JSON_HEADERS, allow_redirects=False)
    await _drain(response)
    if response.code == 302:
        location = _location(response)
        if location is None:
            raise ContactFailed(f"{url} answered 302 without a Location")
        response = await http.post(location, data=body, headers=JSON_HEADERS, allow_redirects=False)
        await _drain(response)
        url = location
    if response.code != 200:
        raise ContactFailed(f"{url} answered {response.code}")
    return int(response.code)


def send_event(
    http: TreqLike, clock: IReactorTime, bound: float, server: str, device: str, event: str, body: dict[str, Any]
) -> "defer.Deferred[int]":
    """POST ``event`` for ``device`` to ``server``; fires with 200 or fails within ``bound`` s
    (:class:`ContactFailed`, ``defer.TimeoutError`` or a transport error)."""
    data = json.dumps(body).encode("utf-8")
    d = defer.Deferred.fromCoroutine(_post_once_following(http, event_url(server, device, event), data))
    d.addTimeout(bound, clock, onTimeoutCancel=_timed_out)
    return d


def _timed_out(result: Any, bound: float) -> Any:
    """Whatever the cancel became (a connection attempt fails with ConnectingCancelledError,
    not CancelledError), a POST cut off by its bound is a TimeoutError."""
    if isinstance(result, Failure):
        raise defer.TimeoutError(f"LifeGuard did not answer within {bound:g} s")
    return result
