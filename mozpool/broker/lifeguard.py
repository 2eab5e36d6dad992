"""MozPool's one outgoing call: a ``please_*`` event POSTed to the device owner's LifeGuard.

Always over HTTP, even when the owner is this server (state-machines.md R-8), so one code path
serves a single server and a pool of them.  The call is bounded on the injected clock and
follows one redirect itself, keeping method and body (http-api.md 2.3, 2.5), as every call
between servers does (:func:`mozpool.httpcalls.post_following`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mozpool.httpcalls import REDIRECTS, TreqLike, post_following
from mozpool.serverurl import base_url

#: Nominal bound on one call, redirect included (shorter than contacting_lifeguard's 30 s).
CONTACT_TIMEOUT = 20.0


class ContactFailed(Exception):
    """LifeGuard did not accept the event (an answer other than 200, or a second redirect)."""


def event_url(server: str, device: str, event: str) -> str:
    return f"{base_url(server)}/api/device/{quote(device, safe='')}/event/{event}/"


async def _send(http: TreqLike, clock: IReactorTime, bound: float, url: str, body: bytes) -> int:
    try:
        code, final = await post_following(http, clock, url, body, bound)
    except defer.TimeoutError:
        raise defer.TimeoutError(f"LifeGuard did not answer within {bound:g} s") from None
    if code != 200:
        unfollowed = " without a Location" if final == url and code in REDIRECTS else ""
        raise ContactFailed(f"{final} answered {code}{unfollowed}")
    return code


def send_event(
    http: TreqLike, clock: IReactorTime, bound: float, server: str, device: str, event: str, body: dict[str, Any]
) -> "defer.Deferred[int]":
    """POST ``event`` for ``device`` to ``server``; fires with 200 or fails within ``bound`` s
    (:class:`ContactFailed`, ``defer.TimeoutError`` or a transport error)."""
    data = json.dumps(body).encode("utf-8")
    return defer.Deferred.fromCoroutine(_send(http, clock, bound, event_url(server, device, event), data))
