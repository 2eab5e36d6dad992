"""Ownership redirects and the browser ``Origin`` check (spec 2.2 - 2.4), in one place.

Every call that acts on a device, relay board or request goes through
:meth:`OwnerCheck.require`: unknown object -> 404, another server's object -> 302 to the same
path on the owner, a foreign browser origin -> 403.  Preflights are answered locally.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from mozpool.db.pool import Database
from mozpool.web import queries
from mozpool.web.errors import Forbidden, NotFound, Redirect

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Content-Type"

_WHAT = {"device": "device", "request": "request", "relay": "relay board"}


def origin_host(request: IRequest) -> str | None:
    """HOST of an ``Origin: http://HOST`` header; None when absent or not ``http://``."""
    raw = request.getHeader(b"origin")
    if raw is None:
        return None
    text = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    if not text.startswith("http://"):
        return None
    return text[len("http://"):]


def location(request: IRequest, owner: str) -> bytes:
    """``http://{owner}{path as received}[?{query}]``: the raw request target, unchanged."""
    return b"http://" + owner.encode("utf-8") + request.uri


class OwnerCheck:
    """Decides whether this server (``fqdn``) answers a call or sends it to the owner."""

    def __init__(self, db: Database, fqdn: str) -> None:
        self.db = db
        self.fqdn = fqdn

    def _check_origin(self, request: IRequest, host: str, servers: set[str]) -> None:
        if host != self.fqdn and host not in servers:
            raise Forbidden(f"origin http://{host} is not a known imaging server")
        request.setHeader(b"Access-Control-Allow-Origin", b"http://" + host.encode("utf-8"))

    async def require(self, request: IRequest, kind: str, key: Any) -> int:
        """The object's database id, once it exists, is ours and the origin is acceptable."""
        host = origin_host(request)
        found = await self.db.runInteraction(queries.owner, kind, key, host is not None)
        if found is None:
            raise NotFound(f"unknown {_WHAT[kind]} {key}")
        object_id, owner, servers = found
        if owner != self.fqdn:
            raise Redirect(location(request, owner))
        if host is not None:
            self._check_origin(request, host, servers)
        return int(object_id)

    async def preflight(self, request: IRequest) -> None:
        """A browser preflight (OPTIONS): answered here, whoever owns the object."""
        host = origin_host(request)
        if host is not None:
            servers = await self.db.runInteraction(queries.known_servers)
            self._check_origin(request, host, servers)
        request.setHeader(b"Access-Control-Allow-Methods", ALLOW_METHODS.encode("ascii"))
        request.setHeader(b"Access-Control-Allow-Headers", ALLOW_HEADERS.encode("ascii"))
