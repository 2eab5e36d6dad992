"""NetBox as the inventory: ``/api/dcim/devices/`` (paged, filtered by ``[inventory] filter``),
the MAC address from each device's interface in ``/api/dcim/interfaces/``, relay (or a power
location with its driver, which wins when set) and imaging server from custom fields.  Ours; the same rules and failsafes as Mozilla's inventory.

Every page is read, and the count NetBox announces checked, before anything is used: a device
added or removed while the pages are read would shift the offsets and hide another device,
which the sync would then delete.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from mozpool.inventory.http import JSONGetter, require
from mozpool.inventory.model import InventoryError, System
from mozpool.inventory.mozilla import query_text

DEVICES_PATH = "/api/dcim/devices/"
INTERFACES_PATH = "/api/dcim/interfaces/"
PAGE_SIZE = 100
#: device ids per interface query (about 1 KiB of query text)
IDS_PER_QUERY = 100
MAX_PAGES = 10_000
#: NetBox's device status meaning "on its way out", as Mozilla's "decommissioned"
DECOMMISSIONING = "decommissioning"


def auth_header(token: str) -> dict[str, str]:
    """NetBox's header for a v1 token (``Token <40 hex>``) or a v2 one (``Bearer nbt_...``)."""
    if not token:
        return {}
    return {"Authorization": f"Bearer {token}" if token.startswith("nbt_") else f"Token {token}"}


def _text(value: Any) -> str | None:
    """A custom field's value as text: a string, a number, or an object field's name."""
    if isinstance(value, dict):
        value = value.get("name") or value.get("display")
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _mac(interface: dict[str, Any]) -> str | None:
    """The interface's MAC: ``mac_address`` (before 4.2, and read-only since), else its primary
    MAC address object (4.2+)."""
    mac = interface.get("mac_address")
    if not mac and isinstance(interface.get("primary_mac_address"), dict):
        mac = interface["primary_mac_address"].get("mac_address")
    return mac if isinstance(mac, str) and mac else None


class NetBoxInventory:
    def __init__(
        self, getter: JSONGetter, url: str, filter: str = "", *, relay_field: str = "mozpool_relay",
        imaging_server_field: str = "mozpool_imaging_server", interface: str = "", domain: str = "",
        power_field: str = "mozpool_power",
    ) -> None:
        self.getter = getter
        self.url = url.rstrip("/")
        self.filter = filter
        self.relay_field = relay_field
        self.power_field = power_field
        self.imaging_server_field = imaging_server_field
        self.interface = interface
        self.domain = domain.strip(".")
        self.field_names = {
            "relay_info": f"custom field {relay_field}",
            "imaging_server": f"custom field {imaging_server_field}",
            "mac": f"interface {interface}" if interface else "an interface with a MAC address",
            "hardware_type": "device type manufacturer",
        }

    def describe(self) -> str:
        return f"NetBox at {self.url}"

    async def fetch(self) -> list[System]:
        query = f"limit={PAGE_SIZE}" + (f"&{query_text(self.filter)}" if self.filter else "")
        devices = await self._list(DEVICES_PATH, query)
        ids = [require(d.get("id"), int, "a NetBox device's id") for d in devices]
        interfaces: dict[int, list[tuple[str, str]]] = {}
        for start in range(0, len(ids), IDS_PER_QUERY):
            batch = "&".join(f"device_id={i}" for i in ids[start:start + IDS_PER_QUERY])
            if self.interface:
                batch += f"&name={quote(self.interface, safe='')}"
            for i in await self._list(INTERFACES_PATH, f"limit={PAGE_SIZE * 10}&{batch}"):
                owner = i.get("device")
                mac = _mac(i)
                if isinstance(owner, dict) and isinstance(owner.get("id"), int) and mac:
                    interfaces.setdefault(owner["id"], []).append((str(i.get("name", "")), mac))
        return [self._system(d, interfaces.get(d["id"], [])) for d in devices]

    def _rebase(self, following: str) -> str:
        """NetBox's absolute ``next`` URL on the configured origin: behind a proxy NetBox often
        names itself with the wrong scheme or host."""
        base, nxt = urlsplit(self.url), urlsplit(following)
        return urlunsplit((base.scheme, base.netloc, nxt.path, nxt.query, ""))

    async def _list(self, path: str, query: str) -> list[dict[str, Any]]:
        """Every result of a paged list, checked against the count NetBox announced."""
        url: str | None = f"{self.url}{path}?{query}"
        results: list[dict[str, Any]] = []
        count: int | None = None
        pages = 0
        while url is not None:
            pages += 1
            if pages > MAX_PAGES:
                raise InventoryError(f"NetBox's pages of {path} do not end")
            page = require(await self.getter.get(url), dict, f"GET {url}")
            announced = require(page.get("count"), int, f"GET {url}: 'count'")
            if count is not None and announced != count:
                raise InventoryError(f"NetBox's {path} changed while it was being read ({count} then {announced}); try again")
            count = announced
            for r in require(page.get("results"), list, f"GET {url}: 'results'"):
                results.append(require(r, dict, f"GET {url}: a result"))
            following = page.get("next")
            url = self._rebase(require(following, str, f"GET {url}: 'next'")) if following is not None else None
        ids = [r.get("id") for r in results]
        if len(results) != count or len(set(ids)) != len(ids):
            raise InventoryError(f"NetBox's {path} changed while it was being read ({len(results)} read, "
                                 f"{count} announced); try again")
        return results

    def _system(self, d: dict[str, Any], interfaces: list[tuple[str, str]]) -> System:
        name = d.get("name")
        if not isinstance(name, str) or not name:
            return System(hostname=f"(NetBox device {d['id']})", inventory_id=d["id"], skip="no name")
        hostname = name if "." in name or not self.domain else f"{name}.{self.domain}"
        status = d.get("status")
        status = status.get("value") if isinstance(status, dict) else status
        device_type = d.get("device_type") if isinstance(d.get("device_type"), dict) else {}
        manufacturer = device_type.get("manufacturer")
        fields = d.get("custom_fields") if isinstance(d.get("custom_fields"), dict) else {}
        skip = None
        if status == DECOMMISSIONING:
            skip = f"status {DECOMMISSIONING}"
        elif len(interfaces) > 1:
            names = ", ".join(sorted(n for n, _ in interfaces))
            skip = f"several interfaces with a MAC address ({names}): set [inventory] interface"
        return System(
            hostname=hostname, inventory_id=d["id"], mac=interfaces[0][1] if interfaces else None,
            imaging_server=_text(fields.get(self.imaging_server_field)),
            relay_info=_text(fields.get(self.power_field)) or _text(fields.get(self.relay_field)),
            hardware_type=_text(manufacturer), hardware_model=_text(device_type.get("model")) or "", skip=skip,
        )
