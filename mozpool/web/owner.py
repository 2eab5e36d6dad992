"""Ownership redirects and the browser ``Origin`` check (spec 2.2 - 2.4), in one place.

Every call that acts on a device, relay board or request goes through
:meth:`OwnerCheck.require`: unknown object -> 404, another server's object -> 302 to the same
path on the owner, a foreign browser origin -> 403.  Preflights are answered locally.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from mozpool.db.pool import Database
from mozpool.serverurl import base_url
from mozpool.web import queries
from mozpool.web.errors import Forbidden, NotFound, Redirect

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-CSRF-Token"

_WHAT = {"device": "device", "request": "request", "relay": "relay board"}


def origin_of(request: IRequest) -> str | None:
    """The ``Origin`` header as sent; None when absent (not a browser's cross-origin call).
    Every origin a browser sends is checked: ``http://`` and ``https://`` ones by their host,
    and ``null`` (a sandboxed frame, a file) or anything malformed is refused."""
    raw = request.getHeader(b"origin")
    if raw is None:
        return None
    return raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)




def location(request: IRequest, owner: str) -> bytes:
    """``http://{owner}{path as received}[?{query}]`` (``https://`` for a TLS server): the raw
    request target, unchanged."""
    return base_url(owner).encode("utf-8") + request.uri


class OwnerCheck:
    """Decides whether this server (``fqdn``) answers a call or sends it to the owner."""

    def __init__(self, db: Database, fqdn: str) -> None:
        self.db = db
        self.fqdn = fqdn

    def _check_origin(self, request: IRequest, origin: str, servers: set[str]) -> None:
        known = {base_url(s) for s in (*servers, self.fqdn)}
        scheme, _, host = origin.partition("://")
        same_origin = scheme in ("http", "https") and host and host.encode("latin-1", "replace") == request.getHeader(b"host")
        if origin not in known and not same_origin:
            raise Forbidden(f"origin {origin!r} is not a known imaging server")
        request.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
        request.setHeader(b"Vary", b"Origin")

    async def check_origin(self, request: IRequest) -> None:
        """The Origin check alone, for calls any server answers (request creation)."""
        origin = origin_of(request)
        if origin is not None:
            self._check_origin(request, origin, await self.db.runInteraction(queries.known_servers))

    async def require(self, request: IRequest, kind: str, key: Any) -> int:
        """The object's database id, once it exists, is ours and the origin is acceptable."""
        origin = origin_of(request)
        found = await self.db.runInteraction(queries.owner, kind, key, origin is not None)
        if found is None:
            raise NotFound(f"unknown {_WHAT[kind]} {key}")
        object_id, owner, servers = found
        if owner != self.fqdn:
            raise Redirect(location(request, owner))
        if origin is not None:
            self._check_origin(request, origin, servers)
        return int(object_id)

    async def preflight(self, request: IRequest) -> None:
        """A browser preflight (OPTIONS): answered here, whoever owns the object."""
        origin = origin_of(request)
        if origin is not None:
            servers = await self.db.runInteraction(queries.known_servers)
            self._check_origin(request, origin, servers)
        request.setHeader(b"Access-Control-Allow-Methods", ALLOW_METHODS.encode("ascii"))
        request.setHeader(b"Access-Control-Allow-Headers", ALLOW_HEADERS.encode("ascii"))
