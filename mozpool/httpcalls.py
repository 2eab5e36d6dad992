"""One POST from this imaging server to another (or to itself over HTTP): MozPool's ``please_*``
events to a device's LifeGuard and LifeGuard's imaging results to a request's server.

A server that does not own the device or request answers with a redirect to its owner
(http-api.md 2.3, 2.5); the caller follows one, with the same method and body, and takes the
answer after that as final. The whole call, redirect included, is bounded on the injected clock.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

#: the statuses followed (302 is what our servers send; the others keep method and body too here)
REDIRECTS = frozenset({301, 302, 307, 308})

JSON_HEADERS = {b"Content-Type": [b"application/json"]}


class TreqLike(Protocol):
    """The part of ``treq`` (``treq.client.HTTPClient``, ``treq.testing.StubTreq``) we use."""

    def post(self, url: str, data: Any = None, **kwargs: Any) -> "defer.Deferred[Any]": ...


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


async def _post(http: TreqLike, url: str, body: bytes) -> tuple[int, str]:
    response = await http.post(url, data=body, headers=JSON_HEADERS, allow_redirects=False)
    await _drain(response)
    location = _location(response) if response.code in REDIRECTS else None
    if location is not None:
        url = location
        response = await http.post(url, data=body, headers=JSON_HEADERS, allow_redirects=False)
        await _drain(response)
    return int(response.code), url


def post_following(
    http: TreqLike, clock: IReactorTime, url: str, body: bytes, bound: float
) -> "defer.Deferred[tuple[int, str]]":
    """POST the JSON ``body`` to ``url``, following one redirect (a second is answered, not
    followed; so is one without a Location). Fires with the last status and the URL that gave
    it, or fails within ``bound`` seconds: ``defer.TimeoutError`` when the bound passed, else the
    transport's error."""
    d = defer.Deferred.fromCoroutine(_post(http, url, body))
    d.addTimeout(bound, clock, onTimeoutCancel=_timed_out)
    return d


def _timed_out(result: Any, bound: float) -> Any:
    """Whatever the cancel became (a connection attempt fails with ConnectingCancelledError,
    not CancelledError), a POST cut off by its bound is a TimeoutError."""
    if isinstance(result, Failure):
        raise defer.TimeoutError(f"no answer within {bound:g} s")
    return result
