"""Where an imaging server is reached.  A server is named by its fqdn (``host[:port]``), which is
its row in the database; one that serves its API over TLS is named ``https://host[:port]``, so
every server and client that looks it up calls it the right way.  Every URL of a server is built
here."""

from __future__ import annotations


def base_url(fqdn: str) -> str:
    """``http://fqdn``, or the name itself when it carries its scheme."""
    return fqdn.rstrip("/") if "://" in fqdn else "http://" + fqdn


def host_port(fqdn: str) -> str:
    """The ``host[:port]`` of a server name."""
    return fqdn.split("://", 1)[1].rstrip("/") if "://" in fqdn else fqdn


def host(fqdn: str) -> str:
    """The host alone (brackets of an IPv6 literal removed)."""
    hp = host_port(fqdn)
    if hp.startswith("["):
        return hp[1:hp.index("]")]
    return hp.rsplit(":", 1)[0] if hp.count(":") == 1 else hp
