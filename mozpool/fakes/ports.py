"""Ports for simulated relay boards that no other daemon on this machine is using or will use.

Several daemons with ``--fakes`` on one machine share one loopback: a board must take a port
that is free now *and* not named in any device's ``relay_info`` in the shared database (another
server's board may be between connections, its port briefly given up, as real boards do).  A
port found busy at start-up is never assumed to be ours: the board moves to another and the
devices' ``relay_info`` follows it.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol

from mozpool.db import changes
from mozpool.db.pool import Cursor

#: Below Linux's ephemeral range (32768-60999), so an outgoing connection never takes a
#: board's port while it is given up between connections.
LOW, HIGH = 20000, 32000


def board_ports(relay_infos: Iterable[str | None]) -> set[int]:
    """The loopback board ports named by these ``relay_info`` values."""
    from mozpool.fakes.pool import loopback_location

    found = set()
    for info in relay_infos:
        location = loopback_location(info)
        if location is not None:
            found.add(location[1])
    return found


def referenced_ports(relay_infos: Iterable[str | None]) -> set[int]:
    """The loopback board and smart-plug ports named by these ``relay_info`` values."""
    from mozpool.fakes.pool import loopback_plug

    infos = list(relay_infos)
    plugs = {plug[2] for plug in map(loopback_plug, infos) if plug is not None}
    return board_ports(infos) | plugs


def all_relay_infos(c: Cursor) -> list[str | None]:
    return [r[0] for r in c.execute("SELECT relay_info FROM devices").fetchall()]


async def bindable(reactor: Any, port: int, interface: str = "127.0.0.1") -> bool:
    """Whether this process can listen on ``port`` now (tried, then given back)."""
    try:
        listening = reactor.listenTCP(port, Factory.forProtocol(Protocol), interface=interface)
    except CannotListenError:
        return False
    await listening.stopListening()
    return True


async def free_ports(reactor: Any, count: int, avoid: set[int], rng: random.Random | None = None,
                     interface: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports in [LOW, HIGH) that are bindable and not in ``avoid``."""
    rng = rng or random.Random()
    chosen: list[int] = []
    for _ in range(50 * max(count, 1)):
        if len(chosen) == count:
            return chosen
        port = rng.randrange(LOW, HIGH)
        if port in avoid or port in chosen:
            continue
        if await bindable(reactor, port, interface):
            chosen.append(port)
    raise RuntimeError(f"no {count} free ports for simulated relay boards between {LOW} and {HIGH}")


def move_board(c: Cursor, server_fqdn: str, old_port: int, new_port: int, now: str) -> int:
    """Rewire this server's devices (and its board row) from ``old_port`` to ``new_port``;
    how many devices moved (each journalled, for every server's pool view)."""
    rows = c.execute(
        "SELECT d.id, d.relay_info FROM devices d JOIN imaging_servers s ON s.id = d.imaging_server_id"
        " WHERE s.fqdn = ?", (server_fqdn,)).fetchall()
    moved = 0
    for device_id, info in rows:
        from mozpool.fakes.pool import loopback_location

        location = loopback_location(info)
        if location is None or location[1] != old_port:
            continue
        host, _, bank, relay = location
        c.execute("UPDATE devices SET relay_info = ? WHERE id = ?",
                  (f"{host}:{new_port}:bank{bank}:relay{relay}", device_id))
        changes.record(c, changes.DEVICE_ROW, now, device_id=int(device_id))
        moved += 1
    for host in ("localhost", "127.0.0.1"):
        c.execute("UPDATE relay_boards SET fqdn = ?, name = ? WHERE fqdn = ?",
                  (f"{host}:{new_port}", f"{host}-{new_port}", f"{host}:{old_port}"))
    return moved
