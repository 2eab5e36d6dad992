"""The twisted.web Site for the API: what the tap should listen with."""

from __future__ import annotations

from twisted.web import server
from twisted.web.resource import IResource

from mozpool.web.api import MozpoolAPI


def makeSite(api: MozpoolAPI, ui: IResource | None = None) -> server.Site:
    """A Site rooted at the API.  Form-encoded and multipart bodies are not parsed by Twisted:
    bodies are JSON whatever their Content-Type (spec 1.3), and a multipart parse failure would
    answer a bare 400 before the API sees the call."""
    return server.Site(api.resource(ui), parsePOSTFormSubmission=False)
