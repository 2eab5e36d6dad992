"""The MozPool client: the API's calls for CI jobs and people, over a list of servers.

- :mod:`mozpool.client.sync`: a blocking client for plain scripts (``Client``; its
  ``device()`` context manager requests a device, waits, hands it over and returns it).
- :mod:`mozpool.client.tx`: the same calls returning Deferreds, on treq (``MozpoolClient``).
- :mod:`mozpool.client.cli`: the ``mozpool`` command.

Both clients send the calls of one API table (:mod:`mozpool.client.api`) through the same
server rotation (:mod:`mozpool.client.plans`): servers tried in random order until one answers,
a request's calls sent to the server that owns it, redirects followed with method and body.
Servers and token come from the call, ``$MOZPOOL_SERVERS``/``$MOZPOOL_TOKEN`` or
``~/.config/mozpool/client.ini`` (:mod:`mozpool.client.config`).
"""

from __future__ import annotations

from typing import Any

from mozpool.client.api import QueuePlace, Request
from mozpool.client.base import Device
from mozpool.client.errors import (
    DeviceBusy,
    MozpoolError,
    NoServerReachable,
    NotFound,
    RequestFailed,
    WaitTimeout,
)
from mozpool.client.plans import Progress

__all__ = ["Client", "Device", "DeviceBusy", "MozpoolClient", "MozpoolError", "NoServerReachable", "NotFound",
           "Progress", "QueuePlace", "Request", "RequestFailed", "WaitTimeout"]


def __getattr__(name: str) -> Any:
    """``Client`` and ``MozpoolClient`` on first use, so a blocking script does not load treq
    and a Twisted program does not load http.client."""
    if name == "Client":
        from mozpool.client.sync import Client

        return Client
    if name == "MozpoolClient":
        from mozpool.client.tx import MozpoolClient

        return MozpoolClient
    raise AttributeError(name)
