"""Who is calling, and may they: bearer tokens, roles, machine credentials and the rule table.

Every route has one :class:`Rule` in :data:`RULES` (a test fails when a route has none).  A call
is authorised before its handler runs, in this order: the credential is read (none is
anonymous; a bad one is 401), the rule's role is checked (anonymous callers may read when
``[auth] anonymous_read``; otherwise 401; too small a role is 403), and a browser that signed in
with a cookie must echo its CSRF cookie in ``X-CSRF-Token`` on anything but a read.

Callers, by the credential they present (``Authorization: Bearer ...``, or the UI's cookie):

- a token from ``mozpool-token`` (``mpt_...``): its name and role;
- another imaging server (``mps_<fqdn>.<signature>``): signed with the cluster secret every
  server reads from the shared database; it acts with the operator role;
- a device in its live image (``mpb_...``): the per-boot token put in its PXE config when its
  boot was prepared; it may post its own live-boot events and read its boot config, nothing else.

In ``open`` mode (the default when the API listens on loopback only) every call is allowed, as
the original's trusted network assumed; a credential that is presented is still checked, so
audit lines name their callers.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from mozpool.db import tokens
from mozpool.db.pool import Database
from mozpool.lifeguard.interfaces import DEVICE_EVENTS
from mozpool.web.errors import ApiError, Forbidden, Unauthorized

REQUIRED = "required"
OPEN = "open"
MODES = (REQUIRED, OPEN)

#: The UI's sign-in cookies: the token itself (HttpOnly) and the CSRF value its pages echo.
TOKEN_COOKIE = b"mozpool_token"
CSRF_COOKIE = b"mozpool_csrf"
CSRF_HEADER = b"x-csrf-token"

#: How long a token lookup is trusted: a revocation takes effect within this many seconds.
TOKEN_CACHE_SECONDS = 5.0

PUBLIC = "public"  # anyone, whatever the configuration


@dataclass(frozen=True)
class Rule:
    #: the least role that may make the call (or PUBLIC)
    role: str
    #: a ``user`` may also make it for a request it created
    own_request: bool = False
    #: a device's per-boot token may make it for that device (live-boot events, boot config)
    device_boot: bool = False

    @property
    def reads(self) -> bool:
        return self.role in (PUBLIC, "reader")


READ = Rule("reader")
OPERATE = Rule("operator")

#: (route template, method) -> rule.  HEAD follows GET; OPTIONS (preflights) acts on nothing.
RULES: dict[tuple[str, str], Rule] = {
    ("/api/version/", "GET"): Rule(PUBLIC),
    ("/api/openapi.json", "GET"): Rule(PUBLIC),
    ("/api/whoami/", "GET"): Rule(PUBLIC),
    ("/api/server/list/", "GET"): READ,
    ("/api/device/list/", "GET"): READ,
    ("/api/device/{device}/request/", "POST"): Rule("user"),
    ("/api/request/list/", "GET"): READ,
    ("/api/request/{id}/details/", "GET"): READ,
    ("/api/request/{id}/status/", "GET"): READ,
    ("/api/request/{id}/log/", "GET"): READ,
    ("/api/request/{id}/renew/", "POST"): Rule("operator", own_request=True),
    ("/api/request/{id}/return/", "POST"): Rule("operator", own_request=True),
    ("/api/request/{id}/event/{event}/", "GET"): OPERATE,
    ("/api/request/{id}/event/{event}/", "POST"): OPERATE,
    ("/api/image/list/", "GET"): READ,
    ("/api/device/{device}/event/{event}/", "GET"): Rule("operator", device_boot=True),
    ("/api/device/{device}/event/{event}/", "POST"): Rule("operator", device_boot=True),
    ("/api/device/{device}/state-change/{old}/to/{new}/", "POST"): OPERATE,
    ("/api/device/{device}/status/", "GET"): READ,
    ("/api/device/{device}/state/", "GET"): READ,
    ("/api/device/{device}/power-cycle/", "POST"): OPERATE,
    ("/api/device/{device}/power-off/", "GET"): OPERATE,
    ("/api/device/{device}/power-off/", "POST"): OPERATE,
    ("/api/device/{device}/clear-pxe/", "POST"): OPERATE,
    ("/api/device/{device}/ping/", "GET"): OPERATE,
    ("/api/relay/{relay}/test/", "GET"): OPERATE,
    ("/api/device/{device}/log/", "GET"): READ,
    ("/api/device/{device}/bootconfig/", "GET"): Rule("reader", device_boot=True),
    ("/api/device/{device}/set-comments/", "POST"): OPERATE,
    ("/api/device/{device}/set-environment/", "POST"): OPERATE,
    ("/api/environment/list/", "GET"): READ,
    ("/api/bmm/pxe_config/list/", "GET"): READ,
    ("/api/bmm/pxe_config/{pxe}/details/", "GET"): READ,
    ("/api/events", "GET"): READ,
    ("/api/pool/summary/", "GET"): READ,
    # health (issue 15): reads
    ("/api/device/{device}/history/", "GET"): READ,
    ("/api/request/{id}/history/", "GET"): READ,
    ("/api/device/{device}/why/", "GET"): READ,
    ("/api/request/{id}/why/", "GET"): READ,
    ("/api/pool/boots/", "GET"): READ,
    # fault isolation (issue 15): power controllers' and servers' health
    ("/api/health/", "GET"): READ,
    ("/api/relay/{relay}/health/", "GET"): READ,
    ("/api/token/list/", "GET"): Rule("admin"),
    ("/api/token/create/", "POST"): Rule("admin"),
    ("/api/token/{name}/revoke/", "POST"): Rule("admin"),
    ("/metrics", "GET"): READ,
}


def rule_for(template: str, method: str) -> Rule:
    return RULES[(template, "GET" if method == "HEAD" else method)]


@dataclass(frozen=True)
class Caller:
    """Who a call comes from.  ``name`` is what audit lines say."""

    name: str
    role: str | None
    kind: str  # "token", "server", "device", "anonymous"
    #: the credential came from the UI's cookie (so CSRF applies)
    via_cookie: bool = False
    #: a per-boot device token's text, checked against the device the call names
    boot_token: str | None = None


ANONYMOUS = Caller("anonymous", None, "anonymous")


def _bearer(request: IRequest) -> tuple[str | None, bool]:
    """(credential, from the cookie?) of a call."""
    header = request.getHeader(b"authorization")
    if header is not None:
        scheme, _, value = header.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("use Authorization: Bearer <token>")
        return value.strip(), False
    cookie = request.getCookie(TOKEN_COOKIE)
    if cookie:
        return cookie.decode("latin-1"), True
    return None, False


class Authority:
    """Identifies callers and applies :data:`RULES` for one server."""

    def __init__(
        self, db: Database, clock: IReactorTime, mode: str = OPEN, anonymous_read: bool = True,
        cluster_secret: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"auth mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.db = db
        self.clock = clock
        self.mode = mode
        self.anonymous_read = anonymous_read
        #: set at start-up from the database (or the configuration)
        self.cluster_secret = cluster_secret
        #: credential -> (trusted until, its callers by a header and by the cookie, or None)
        self._cache: dict[str, tuple[float, tuple[Caller, Caller] | None]] = {}

    @property
    def reads_are_open(self) -> bool:
        """Anyone may read (no credential needs checking for a read)."""
        return self.mode == OPEN or self.anonymous_read

    async def identify(self, request: IRequest) -> Caller:
        credential, via_cookie = _bearer(request)
        caller = self._identify_now(credential, via_cookie)
        if caller is not None:
            return caller
        assert credential is not None
        return self._token_caller(await self._lookup(credential), via_cookie)

    def _identify_now(self, credential: str | None, via_cookie: bool) -> Caller | None:
        """:meth:`identify`'s answer when no database read is needed (raising as it does);
        None for a token that is not in the cache."""
        if credential is None:
            return ANONYMOUS
        if credential.startswith(tokens.SERVER_PREFIX):
            fqdn = tokens.server_of(self.cluster_secret, credential) if self.cluster_secret else None
            if fqdn is None:
                raise Unauthorized("invalid server credential")
            return Caller(f"server {fqdn}", "operator", "server")
        if credential.startswith(tokens.BOOT_PREFIX):
            return Caller("device boot token", None, "device", boot_token=credential)
        cached = self._cache.get(credential)
        if cached is None or cached[0] <= self.clock.seconds():
            return None
        return self._token_caller(cached[1], via_cookie)

    @staticmethod
    def _token_caller(callers: tuple[Caller, Caller] | None, via_cookie: bool) -> Caller:
        if callers is None:
            if via_cookie:
                return ANONYMOUS  # a stale sign-in: the browser reads on as anyone does
            raise Unauthorized("invalid or revoked token")
        return callers[via_cookie]

    async def _lookup(self, credential: str) -> tuple[Caller, Caller] | None:
        """The token's callers (by a header, by the cookie), None when it is unknown or revoked."""
        now = self.clock.seconds()
        cached = self._cache.get(credential)
        if cached is not None and cached[0] > now:
            return cached[1]
        info = await self.db.runInteraction(tokens.lookup, credential)
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded: a flood of bad tokens cannot grow it
        callers = None if info is None else (
            Caller(info.name, info.role, "token"), Caller(info.name, info.role, "token", via_cookie=True))
        self._cache[credential] = (now + TOKEN_CACHE_SECONDS, callers)
        return callers

    async def authorize(self, request: IRequest, template: str, kw: Mapping[str, str]) -> Caller:
        """The caller, once it may make this call; raises 401/403 otherwise."""
        method = request.method.decode("ascii", "replace")
        if method == "OPTIONS":
            return ANONYMOUS
        rule = rule_for(template, method)
        caller = await self.identify(request)
        if self._allowed_now(request, rule, caller):
            return caller
        if caller.kind == "device":
            if await self._boot_token_fits(caller, kw):
                return caller
            raise Forbidden("a device's boot token may only post its own live-boot events")
        creator = await self.db.runInteraction(_creator, kw.get("id", ""))  # rule.own_request
        if creator is _MISSING or creator == caller.name:
            return caller  # (an unknown request is the handler's 404)
        raise Forbidden(f"request {kw.get('id')} was made by another user")

    def _allowed_now(self, request: IRequest, rule: Rule, caller: Caller) -> bool:
        """The part of :meth:`authorize` that reads no database: True when ``caller`` may make
        the call, False when the database decides (a device's boot token for its own device, a
        ``user`` acting on a request it may have made); raises 401/403 as authorize does."""
        if self.mode == OPEN or rule.role == PUBLIC:
            return True
        if caller.kind == "device":
            if rule.device_boot:
                return False
            raise Forbidden("a device's boot token may only post its own live-boot events")
        if caller.kind == "anonymous":
            if rule.role == "reader" and self.anonymous_read:
                return True
            raise Unauthorized("this call needs a token: Authorization: Bearer <token> (see mozpool-token)")
        if caller.via_cookie and not rule.reads:
            self._check_csrf(request)
        if tokens.role_at_least(caller.role, rule.role):
            return True
        if rule.own_request and tokens.role_at_least(caller.role, "user"):
            return False
        raise Forbidden(f"token {caller.name!r} has role {caller.role}; this call needs {rule.role}")

    def authorize_now(self, request: IRequest, template: str) -> Caller | None:
        """:meth:`authorize` for a hot GET answered without a coroutine: the caller when it is
        known, without reading the database, that the call is allowed; None when the database
        must be asked or the call is refused (the route then answers it, 401/403 included)."""
        try:
            caller = self._identify_now(*_bearer(request))
            if caller is None or not self._allowed_now(request, rule_for(template, "GET"), caller):
                return None
        except ApiError:
            return None
        return caller

    async def _boot_token_fits(self, caller: Caller, kw: Mapping[str, str]) -> bool:
        device = kw.get("device")
        event = kw.get("event")
        if device is None or (event is not None and event not in DEVICE_EVENTS):
            return False
        assert caller.boot_token is not None
        return bool(await self.db.runInteraction(tokens.boot_token_matches, device, caller.boot_token))

    def _check_csrf(self, request: IRequest) -> None:
        expected = request.getCookie(CSRF_COOKIE)
        given = request.getHeader(CSRF_HEADER)
        if not expected or not given or not hmac.compare_digest(given, expected):
            raise Forbidden("missing or wrong X-CSRF-Token (sign in again if this persists)")


_MISSING = object()


def _creator(c: Any, request_id: str) -> Any:
    if not request_id.isdigit() or len(request_id) > 18:
        return _MISSING
    row = c.execute("SELECT created_by FROM requests WHERE id = ?", (int(request_id),)).fetchone()
    return _MISSING if row is None else row[0]


def default_mode(listen_host: str) -> str:
    """``open`` when the API listens on loopback only, else ``required``: a production
    listener is never open by accident."""
    import ipaddress

    host = listen_host.strip("[]")
    if host == "localhost":
        return OPEN
    try:
        return OPEN if ipaddress.ip_address(host).is_loopback else REQUIRED
    except ValueError:
        return REQUIRED


class SignedClient:
    """The treq-like client this server's own outgoing calls go through (MozPool asking a
    LifeGuard, LifeGuard reporting back): every call carries this server's credential."""

    def __init__(self, http: Any, authority: Authority, fqdn: str) -> None:
        self.http = http
        self.authority = authority
        self.fqdn = fqdn

    def _signed(self, kw: dict[str, Any]) -> dict[str, Any]:
        secret = self.authority.cluster_secret
        if secret is not None:
            headers = dict(kw.get("headers") or {})
            headers[b"Authorization"] = [b"Bearer " + tokens.server_token(secret, self.fqdn).encode("utf-8")]
            kw["headers"] = headers
        return kw

    def post(self, url: str, data: Any = None, **kw: Any) -> Any:
        return self.http.post(url, data=data, **self._signed(kw))

    def get(self, url: str, **kw: Any) -> Any:
        return self.http.get(url, **self._signed(kw))
