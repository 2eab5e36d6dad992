"""A seeded pool: images, PXE configs, environments and N panda devices on relay boards.

Used by ``mozpool-db load-fixture`` and by ``--fakes N`` on first start.  Shared rows (images,
PXE configs, hardware type) are inserted unless present, so several servers on one database can
each load their own devices."""

from __future__ import annotations

import json
from typing import Any, Sequence

from mozpool.db import changes
from mozpool.db.catalog import server_id
from mozpool.db.errors import Conflict
from mozpool.db.pool import Cursor, Database

DEVICES_PER_BOARD = 32
#: The schema version that brought the change journal (a fixture may seed an older one to upgrade).
JOURNAL_VERSION = 3
#: Below Linux's ephemeral range (32768-60999), so outgoing connections never hold a board's port.
DEFAULT_RELAY_BASE_PORT = 20001
ENVIRONMENTS = ("prod", "staging")
#: Devices behind pdudaemon sit on simulated four-outlet smart plugs (mozpool.fakes.smartplug),
#: reached through the pdudaemon listening here unless told otherwise.
OUTLETS_PER_PLUG = 4
DEFAULT_PDUDAEMON = "127.0.0.1:16421"

#: name -> (boot_config_keys, can_reuse, hidden, has_sut_agent, pxe config, second stage)
IMAGES = {
    "android": ([], False, False, True, "android-install", "android-second-stage"),
    "b2g": (["b2gbase"], False, False, False, "b2g-install", "b2g-second-stage"),
    "self-test": ([], False, True, False, "self-test", "selftest-second-stage"),
    "maintenance": ([], False, True, False, "maintenance", "maintenance-second-stage"),
}

_PXE_TEMPLATE = (
    "default linux\n"
    "label linux\n"
    "  kernel http://%IPADDRESS%/live/uImage\n"
    "  initrd http://%IPADDRESS%/live/uInitrd\n"
    "  append console=ttyO2,115200n8 rootwait ro mobile-imaging-url=http://%IPADDRESS%/scripts/{stage}.sh"
    " mozpool-boot-token=%BOOTTOKEN%\n"
)


def _ensure(c: Cursor, select: str, key: tuple, insert: str, values: tuple) -> int:
    found = c.scalar(select, key)
    if found is not None:
        return int(found)
    try:
        c.execute(insert, values)
        return c.lastrowid
    except Conflict:
        # Another server inserted it first.  In its own InnoDB snapshot this transaction may not
        # see that row yet: then the whole seeding is tried again (the caller retries).
        found = c.scalar(select, key)
        if found is None:
            raise
        return int(found)


def seed_catalog(c: Cursor) -> int:
    """Images, PXE configs and the panda hardware type; returns the hardware type id."""
    hw = _ensure(c, "SELECT id FROM hardware_types WHERE type = ? AND model = ?", ("panda", ""),
                 "INSERT INTO hardware_types (type, model) VALUES (?, ?)", ("panda", ""))
    for name, (keys, reuse, hidden, sut, pxe, stage) in IMAGES.items():
        image_id = _ensure(
            c, "SELECT id FROM images WHERE name = ?", (name,),
            "INSERT INTO images (name, boot_config_keys, can_reuse, hidden, has_sut_agent) VALUES (?, ?, ?, ?, ?)",
            (name, json.dumps(keys), int(reuse), int(hidden), int(sut)),
        )
        pxe_id = _ensure(
            c, "SELECT id FROM pxe_configs WHERE name = ?", (pxe,),
            "INSERT INTO pxe_configs (name, description, contents, active) VALUES (?, ?, ?, 1)",
            (pxe, f"boot the live image and run {stage}", _PXE_TEMPLATE.format(stage=stage)),
        )
        _ensure(
            c, "SELECT image_id FROM image_pxe_configs WHERE image_id = ? AND hardware_type_id = ?", (image_id, hw),
            "INSERT INTO image_pxe_configs (image_id, hardware_type_id, pxe_config_id) VALUES (?, ?, ?)",
            (image_id, hw, pxe_id),
        )
    return hw


def plug_relay_info(pdudaemon: str, plug_port: int, outlet: int) -> str:
    """A device on outlet ``outlet`` of the simulated plug at ``127.0.0.1:plug_port``, which
    pdudaemon (at ``pdudaemon``, host:port) knows by that address."""
    return f"pdudaemon://{pdudaemon}/127.0.0.1:{plug_port}/{outlet}"


def plug_controller(pdudaemon: str, plug_port: int) -> tuple[str, str]:
    """(``relay_boards.name``, ``relay_boards.fqdn``) of a simulated plug, as the inventory sync
    derives them (mozpool.inventory.rules)."""
    return f"127.0.0.1-{plug_port}", f"pdudaemon://{pdudaemon}/127.0.0.1:{plug_port}"


def fake_device_rows(
    count: int, server: int, hw: int, now: str, prefix: str = "panda", relay_base_port: int = DEFAULT_RELAY_BASE_PORT,
    first: int = 0, board_ports: Sequence[int] | None = None, pdudaemon: int = 0,
    pdudaemon_address: str = DEFAULT_PDUDAEMON, plug_ports: Sequence[int] = (),
) -> list[tuple[Any, ...]]:
    """Rows for devices ``first`` .. ``first+count-1``: device i sits on board i div 32,
    bank (i mod 32) div 8 + 1, relay i mod 8 + 1, on ``localhost:<base+board>`` (or on the
    board's own port from ``board_ports``); except the last ``pdudaemon`` of them, which sit
    four to a simulated plug (on ``plug_ports``, in order) behind pdudaemon."""
    rows = []
    plugged_from = first + count - pdudaemon
    for i in range(first, first + count):
        board, slot = divmod(i, DEVICES_PER_BOARD)
        name = f"{prefix}-{i + 1:04d}"
        if i >= plugged_from:
            plug, outlet = divmod(i - plugged_from, OUTLETS_PER_PLUG)
            relay = plug_relay_info(pdudaemon_address, plug_ports[plug], outlet + 1)
        else:
            port = board_ports[board - first // DEVICES_PER_BOARD] if board_ports else relay_base_port + board
            relay = f"localhost:{port}:bank{slot // 8 + 1}:relay{slot % 8 + 1}"
        mac = f"02{server % 256:02x}{i:08x}"
        rows.append((name, f"{name}.fakes.mozpool.invalid", i + 1, "new", "{}", now, mac, server, relay,
                     ENVIRONMENTS[i % len(ENVIRONMENTS)], hw))
    return rows


def load_fixture(
    db: Database, fqdn: str, devices: int, now: str, prefix: str = "panda",
    relay_base_port: int = DEFAULT_RELAY_BASE_PORT, board_ports: Sequence[int] | None = None,
    pdudaemon: int = 0, pdudaemon_address: str = DEFAULT_PDUDAEMON, plug_ports: Sequence[int] = (),
) -> Any:
    """Seed the catalog and add ``devices`` new pandas owned by ``fqdn`` (the last
    ``pdudaemon`` of them behind simulated plugs on ``plug_ports``)."""

    def load(c: Cursor) -> int:
        server = server_id(c, fqdn)
        hw = seed_catalog(c)
        rows = fake_device_rows(devices, server, hw, now, prefix, relay_base_port, board_ports=board_ports,
                                pdudaemon=pdudaemon, pdudaemon_address=pdudaemon_address, plug_ports=plug_ports)
        c.executemany(
            "INSERT INTO devices (name, fqdn, inventory_id, state, state_counters, state_timeout, mac_address,"
            " imaging_server_id, relay_info, environment, hardware_type_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        boards = sorted({r[8].rsplit(":", 2)[0] for r in rows if not r[8].startswith("pdudaemon://")})
        controllers = [(board.replace(":", "-"), board) for board in boards]
        plugs = plug_ports[: -(-pdudaemon // OUTLETS_PER_PLUG)]
        controllers += [plug_controller(pdudaemon_address, p) for p in sorted(set(plugs))]
        for name, controller in controllers:
            _ensure(
                c, "SELECT id FROM relay_boards WHERE fqdn = ?", (controller,),
                "INSERT INTO relay_boards (name, fqdn, imaging_server_id, state, state_counters, state_timeout)"
                " VALUES (?, ?, ?, 'ready', '{}', ?)",
                (name, controller, server, now),
            )
        if int(c.scalar("SELECT MAX(version) FROM schema_version") or 0) >= JOURNAL_VERSION:
            changes.record(c, changes.RELOAD, now)  # many devices at once: every pool view reads them all again
        return len(rows)

    return db.runInteraction(load)
