"""Helpers for the inventory tests: simulated inventories served on loopback for one test, and
sources pointed at them."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor

from mozpool.fakes.inventory import FakeMozillaInventory, FakeNetBox, FakeSystem, pandas
from mozpool.inventory.http import JSONGetter, http_client
from mozpool.inventory.mozilla import MozillaInventory
from mozpool.inventory.netbox import NetBoxInventory, auth_header

SERVER = "img1.example.com:8010"

__all__ = ["FakeSystem", "pandas", "serve", "mozilla", "netbox", "SERVER"]


async def serve(test: Any, fake: Any, endpoint: str = "tcp:0:interface=127.0.0.1") -> str:
    """Listen with ``fake`` for the duration of ``test``; its base URL."""
    port, url = await fake.listen(reactor, endpoint)
    test.addCleanup(port.stopListening)
    test.addCleanup(fake.stop)
    return url


async def mozilla(test: Any, systems: list[FakeSystem], *, api: str = "bulk", filter: str = "", clock: Any = reactor,
                  password: str = "secret", ca_certs: str = "", endpoint: str = "tcp:0:interface=127.0.0.1",
                  **fake_kw: Any) -> tuple[FakeMozillaInventory, MozillaInventory]:
    fake = FakeMozillaInventory(reactor, systems, username="mozpool", password="secret")
    for k, v in fake_kw.items():
        setattr(fake, k, v)
    url = await serve(test, fake, endpoint)
    getter = JSONGetter(http_client(reactor, ca_certs), clock, auth=("mozpool", password))
    return fake, MozillaInventory(getter, url, filter, api)


async def netbox(test: Any, systems: list[FakeSystem], *, token: str = "0123abcd", fake_token: str | None = None,
                 filter: str = "", clock: Any = reactor, **source_kw: Any) -> tuple[FakeNetBox, NetBoxInventory]:
    fake = FakeNetBox(reactor, systems, token=token if fake_token is None else fake_token)
    url = await serve(test, fake)
    getter = JSONGetter(http_client(reactor), clock, headers=auth_header(token))
    return fake, NetBoxInventory(getter, url, filter, **source_kw)
