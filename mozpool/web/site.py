"""The twisted.web Site for the API: what the tap should listen with."""

from __future__ import annotations

from twisted.web import server
from twisted.web.resource import IResource

from mozpool.web.api import MozpoolAPI


def makeSite(api: MozpoolAPI, ui: IResource | None = None, access_log: bool = False) -> server.Site:
    """A Site rooted at the API.  Form-encoded and multipart bodies are not parsed by Twisted:
    bodies are JSON whatever their Content-Type (spec 1.3), and a multipart parse failure would
    answer a bare 400 before the API sees the call.

    The per-request access log is off unless asked for: formatting it cost about a fifth of the
    CPU of the cheapest endpoint (bench/api.py), and ``/metrics`` counts every call anyway."""
    site = server.Site(api.resource(ui), parsePOSTFormSubmission=False)
    if not access_log:
        site.log = lambda request: None  # type: ignore[method-assign]
    return site
