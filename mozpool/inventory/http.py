"""GET-and-parse-JSON for the inventory sources: through treq, TLS verified, every request
bounded on an injected clock, every failure one :class:`InventoryError` naming the URL."""

from __future__ import annotations

import json
from typing import Any, Coroutine, Mapping, TypeVar

import treq
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mozpool.inventory.model import InventoryError

T = TypeVar("T")

#: seconds one request may take, answer body included (spec 7.1)
REQUEST_TIMEOUT = 30.0
#: the largest answer read; a bulk export of every system in a big inventory is a few MiB
MAX_BODY = 256 * 1024 * 1024


def http_client(reactor: Any, ca_certs: str = "") -> Any:
    """A treq client whose HTTPS is verified against ``ca_certs`` (PEM) or the system's trust
    store; no connections are kept between runs."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from mozpool.endpoints import tls_policy

    agent = Agent(reactor, contextFactory=tls_policy(ca_certs or None), pool=HTTPConnectionPool(reactor, persistent=False))
    return HTTPClient(agent)


class JSONGetter:
    """``await get(url)``: the parsed JSON of a 200 answer, or InventoryError."""

    def __init__(
        self,
        http: Any,
        clock: IReactorTime,
        *,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.http = http
        self.clock = clock
        self.auth = auth
        self.headers = {"Accept": "application/json", **(headers or {})}
        self.timeout = timeout

    async def _get(self, url: str) -> tuple[int, bytes]:
        response = await self.http.get(url, auth=self.auth, headers=self.headers)
        body: list[bytes] = []
        size = [0]

        def collect(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > MAX_BODY:
                raise InventoryError(f"GET {url}: answer larger than {MAX_BODY} bytes")
            body.append(data)

        await treq.collect(response, collect)
        return response.code, b"".join(body)

    async def get(self, url: str) -> Any:
        try:
            code, body = await bounded(self._get(url), self.timeout, self.clock)
        except defer.TimeoutError:
            raise InventoryError(f"GET {url}: no complete answer within {self.timeout:g} s") from None
        except (InventoryError, defer.CancelledError):
            raise
        except Exception as e:
            if any(getattr(r, "check", lambda *a: False)(defer.CancelledError) for r in getattr(e, "reasons", ())):
                raise defer.CancelledError() from e  # the run was stopped, as the request was
            raise InventoryError(f"GET {url}: {_why(e)}") from e
        if code != 200:
            raise InventoryError(f"GET {url}: HTTP {code}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise InventoryError(f"GET {url}: the answer is not JSON ({e})") from None


async def bounded(work: Coroutine[Any, Any, T], seconds: float, clock: IReactorTime) -> T:
    """``work``'s result, or TimeoutError once ``seconds`` pass on ``clock`` (``work`` is then
    cancelled: whatever error the cancelled request raises, the caller sees the timeout)."""
    running = defer.Deferred.fromCoroutine(work)
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        running.cancel()

    timer = clock.callLater(seconds, expire)
    try:
        return await running
    except Exception:
        if expired:
            raise defer.TimeoutError(f"not done within {seconds:g} s") from None
        raise
    finally:
        if timer.active():
            timer.cancel()


def _why(e: Exception) -> str:
    """A readable reason from treq's and the agent's errors (which wrap Failures in lists)."""
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join((r.getErrorMessage() or r.type.__name__) if hasattr(r, "getErrorMessage") else str(r)
                         for r in reasons)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def require(value: Any, kind: type, what: str) -> Any:
    """``value`` when it is a ``kind``, else InventoryError saying ``what`` was wrong."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InventoryError(f"{what}: expected {kind.__name__}, got {type(value).__name__}")
    return value
