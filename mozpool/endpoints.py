"""Reading Twisted endpoint strings the way Twisted will: which interface a listener binds, and
the TLS trust for this server's own outgoing calls."""

from __future__ import annotations

import inspect
import re
from typing import Any

from twisted.internet import endpoints, ssl
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.web.client import BrowserLikePolicyForHTTPS

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def listening_interface(description: str) -> str | None:
    """The interface a stream-server endpoint string binds ('' for every interface), None for a
    unix socket.  Parsed by Twisted's own parser (nothing is bound), so a repeated or positional
    ``interface`` means here what it will mean to the listener; ValueError if unreadable."""
    try:
        if description.split(":", 1)[0].lower() == "ssl":
            # Twisted's ssl parser reads the key files; bind its parameters instead.
            args, kw = endpoints._parse(description)
            bound = inspect.signature(endpoints._parseSSL).bind(None, *args[1:], **kw)
            int(bound.arguments["port"])
            return str(bound.arguments.get("interface", ""))
        parsed = serverFromString(None, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"unreadable endpoint {description!r}: {e}") from None
    if isinstance(parsed, UNIXServerEndpoint):
        return None
    interface = getattr(parsed, "_interface", None)
    if not isinstance(parsed, (TCP4ServerEndpoint, TCP6ServerEndpoint)) or not isinstance(interface, str):
        raise ValueError(f"endpoint must listen on TCP, TLS or a unix socket: {description!r}")
    return interface


def tls_policy(ca_certs: str | None) -> Any:
    """How this server verifies other servers' certificates: the system's trust store, or the
    CA certificates of ``ca_certs`` (a PEM file) when given.  Always verified."""
    if not ca_certs:
        return BrowserLikePolicyForHTTPS()
    with open(ca_certs, "rb") as f:
        blocks = _PEM_CERT.findall(f.read())
    if not blocks:
        raise ValueError(f"no PEM certificate in {ca_certs}")
    roots = [ssl.Certificate.loadPEM(b) for b in blocks]
    return BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(roots))
