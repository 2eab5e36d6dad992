"""The operator's Python console into the running daemon, over SSH or telnet (twisted.conch).

Off unless ``--manhole ENDPOINT`` / ``[manhole] endpoint`` is set; always behind the configured
username and password; a listening address other than loopback (or a unix socket) is refused
unless ``[manhole] allow_remote`` is true.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.conch import manhole, manhole_ssh, telnet
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import checkers, portal
from twisted.internet import protocol
from twisted.internet.endpoints import serverFromString
from zope.interface import implementer

from mozpool.config import ConfigError
from mozpool.endpoints import listening_interface


def _split_kind(endpoint: str) -> tuple[str, str]:
    """('ssh' | 'telnet', the listening endpoint description)."""
    for kind in ("ssh", "telnet"):
        if endpoint.startswith(kind + ":"):
            return kind, endpoint[len(kind) + 1:]
    return "ssh", endpoint


def _interface(description: str) -> str | None:
    """The interface a tcp/tcp6 endpoint description binds, '' for all, None for unix: read by
    Twisted's own parser, so a repeated ``interface=`` or a positional interface means here what
    it will mean to the listener (the last one wins)."""
    try:
        return listening_interface(description)
    except ValueError as e:
        raise ConfigError(f"manhole: {e}") from None


def check_endpoint(endpoint: str, allow_remote: bool) -> None:
    """Refuse a manhole listening beyond loopback unless explicitly allowed."""
    kind, description = _split_kind(endpoint)
    if not description.split(":")[0] in ("tcp", "tcp6", "unix"):
        raise ConfigError(f"manhole endpoint must be tcp:, tcp6: or unix: (optionally after ssh: or telnet:): {endpoint!r}")
    iface = _interface(description)
    if iface is None or allow_remote:
        return
    try:
        loopback = iface != "" and (iface == "localhost" or ipaddress.ip_address(iface).is_loopback)
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"manhole endpoint {endpoint!r} listens beyond loopback; add interface=127.0.0.1 "
            "or set [manhole] allow_remote = true"
        )


class _TelnetLogin(telnet.AuthenticatingTelnetProtocol):
    """Telnet clients end lines with CR LF; the credentials are what comes before."""

    def telnet_User(self, line: bytes) -> Any:
        return super().telnet_User(line.rstrip(b"\r"))

    def telnet_Password(self, line: bytes) -> Any:
        return super().telnet_Password(line.rstrip(b"\r"))


@implementer(portal.IRealm)
class _TelnetRealm:
    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if telnet.ITelnetProtocol in interfaces:
            proto = telnet.TelnetBootstrapProtocol(insults.ServerProtocol, manhole.ColoredManhole, self.namespace)
            return telnet.ITelnetProtocol, proto, lambda: None
        raise NotImplementedError()


def make_manhole_factory(kind: str, username: str, password: str, namespace: dict[str, Any]) -> protocol.Factory:
    """An SSH (``kind='ssh'``) or telnet console factory behind one username and password."""
    if not password:
        raise ConfigError("the manhole needs [manhole] password")
    checker = checkers.InMemoryUsernamePasswordDatabaseDontUse(**{username: password.encode()})
    factory: protocol.Factory
    if kind == "telnet":
        tportal = portal.Portal(_TelnetRealm(namespace), [checker])
        factory = protocol.ServerFactory()
        factory.protocol = lambda: telnet.TelnetTransport(_TelnetLogin, tportal)  # type: ignore[assignment]
    else:
        realm = manhole_ssh.TerminalRealm()
        realm.chainedProtocolFactory = lambda: insults.ServerProtocol(manhole.ColoredManhole, namespace)
        factory = manhole_ssh.ConchFactory(portal.Portal(realm, [checker]))
        # A fresh host key per start: the console is a loopback tool, and this costs no disk state.
        key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        factory.publicKeys = {b"ssh-ed25519": key.public()}
        factory.privateKeys = {b"ssh-ed25519": key}
    return factory


def make_manhole_service(
    endpoint: str, username: str, password: str, namespace: dict[str, Any], reactor: Any, allow_remote: bool = False
) -> IService:
    """A service listening on ``endpoint`` with a console over ``namespace``."""
    check_endpoint(endpoint, allow_remote)
    kind, description = _split_kind(endpoint)
    factory = make_manhole_factory(kind, username, password, namespace)
    return StreamServerEndpointService(serverFromString(reactor, description), factory)


