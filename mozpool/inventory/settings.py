"""``[inventory]``: where the device list comes from, and how often the daemon syncs with it
(spec bmm-protocols 7.1; the ``netbox`` and ``file`` sources are ours).

Only the standard library here, so :mod:`mozpool.config` can read the section at load time and
refuse a bad value before anything starts.
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field

SOURCES = ("mozilla", "netbox", "file")
APIS = ("bulk", "paginated")
DEFAULT_SYNC_INTERVAL = 3600.0

SECTION = "inventory"


@dataclass(frozen=True)
class InventorySettings:
    #: mozilla, netbox or file; empty when no inventory is configured
    source: str = ""
    url: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    #: NetBox API token (v1 "0123abcd...", or v2 "nbt_<key>.<token>")
    token: str = field(default="", repr=False)
    #: query terms appended to the inventory's query (Mozilla: the bulk export's q=; NetBox: the
    #: device list's filters, e.g. role=panda&site=mtv2)
    filter: str = ""
    #: Mozilla only: bulk (4.2.1) or paginated (4.1.x and earlier)
    api: str = "bulk"
    #: seconds between the daemon's runs; 0: the daemon never syncs
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    #: systems whose imaging server matches this (anchored at the start) are skipped
    ignore_devices_on_servers_re: str = ""
    #: NetBox: custom fields holding the relay and the imaging server
    relay_field: str = "mozpool_relay"
    imaging_server_field: str = "mozpool_imaging_server"
    #: NetBox: the custom field holding a power location with its driver
    #: (``pdudaemon://host:port/PDU/PORT``); when set on a device it wins over ``relay_field``
    power_field: str = "mozpool_power"
    #: NetBox: the interface whose MAC address PXE-boots the device (empty: its only one)
    interface: str = ""
    #: NetBox: appended to device names without a dot to make their fqdn
    domain: str = ""
    #: file: a CSV or YAML list of devices
    path: str = ""
    #: PEM CA certificates the inventory's TLS certificate is verified against (empty: the
    #: system's trust store)
    ca_certs: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.source)

    @property
    def timed(self) -> bool:
        """The daemon runs the sync every ``sync_interval`` seconds."""
        return self.configured and self.sync_interval > 0


def inventory_settings(parser: configparser.ConfigParser) -> InventorySettings:
    """The ``[inventory]`` section of ``parser``; ValueError naming the key when one is wrong.
    Values are read raw: passwords, filters and regular expressions may contain ``%``."""
    if not parser.has_section(SECTION):
        return InventorySettings()

    def get(key: str, default: str = "") -> str:
        return parser.get(SECTION, key, raw=True, fallback=default).strip()

    url = get("url").rstrip("/")
    path = get("path")
    source = get("source").lower() or ("mozilla" if url else "file" if path else "")
    if source not in ("", *SOURCES):
        raise ValueError(f"[inventory] source must be one of {', '.join(SOURCES)}, not {source!r}")
    if source in ("mozilla", "netbox"):
        if not url:
            raise ValueError(f"[inventory] url is required for source = {source}")
        if not re.match(r"https?://[^/]", url):
            raise ValueError(f"[inventory] url must start with https:// (or http://), not {url!r}")
    if source == "file" and not path:
        raise ValueError("[inventory] path is required for source = file")
    api = get("api", "bulk").lower()
    if api not in APIS:
        raise ValueError(f"[inventory] api must be bulk or paginated, not {api!r}")
    try:
        interval = float(get("sync_interval", str(DEFAULT_SYNC_INTERVAL)))
    except ValueError:
        interval = -1.0
    if not interval >= 0:
        raise ValueError(f"[inventory] sync_interval must be a number of seconds >= 0, not {get('sync_interval')!r}")
    ignore = get("ignore_devices_on_servers_re")
    try:
        re.compile(ignore)
    except re.error as e:
        raise ValueError(f"[inventory] ignore_devices_on_servers_re: {e}") from None
    ca_certs = get("ca_certs")
    if ca_certs and not os.path.isfile(ca_certs):
        raise ValueError(f"[inventory] ca_certs: no such file {ca_certs}")
    return InventorySettings(
        source=source, url=url, username=get("username"), password=get("password"), token=get("token"),
        filter=get("filter"), api=api, sync_interval=interval, ignore_devices_on_servers_re=ignore,
        relay_field=get("relay_field", "mozpool_relay"), power_field=get("power_field", "mozpool_power"),
        imaging_server_field=get("imaging_server_field", "mozpool_imaging_server"),
        interface=get("interface"), domain=get("domain").strip("."), path=path, ca_certs=ca_certs,
    )
