"""Client endpoints for the devices and boards BMM talks to."""

from __future__ import annotations


from twisted.internet import error as neterror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IReactorTCP, IStreamClientEndpoint
from twisted.python.failure import Failure


def tcp_endpoint(reactor: IReactorTCP, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """IP literals (and ``localhost``, the simulated boards' and agents' host) connect directly,
    skipping name resolution and the resolver's thread pool; other names go through the reactor's
    resolver."""
    if host == "localhost":
        host = "127.0.0.1"
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


def connect_failure_reason(f: Failure, peer: str, host: str) -> str | None:
    """How a connection to ``peer`` (on ``host``) that could not be made reads in a device's
    log: refused, unresolvable, or another connect error; None for any other failure."""
    if f.check(neterror.ConnectionRefusedError):
        return f"connection refused by {peer}"
    if f.check(neterror.DNSLookupError):
        return f"cannot resolve {host}"
    if f.check(neterror.ConnectError):
        return f"cannot connect to {peer}: {f.getErrorMessage()}"
    return None
