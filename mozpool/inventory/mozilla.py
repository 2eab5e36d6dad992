"""Mozilla's inventory: the bulk export with its status and server-model look-ups (4.2.1, spec
bmm-protocols 7.2) and the older paginated API (4.1.x, 7.3).  Everything is fetched and checked
before a single system is handed on: a failure anywhere is an InventoryError."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from mozpool.inventory.http import JSONGetter, require
from mozpool.inventory.model import InventoryError, System

BULK_PATH = "/en-US/bulk_action/export/"
STATUS_PATH = "/en-US/core/api/v1_core/systemstatus/{pk}/"
MODEL_PATH = "/en-US/core/api/v1_core/servermodel/{pk}/"
PAGINATED_PATH = "/en-US/tasty/v3/system/"
PAGE_LIMIT = 100
#: a bound on pages followed, against an inventory whose "next" never ends
MAX_PAGES = 10_000

RELAY_KEY = "system.relay.0"
#: a power location with its driver (``pdudaemon://host:port/PDU/PORT``, ``proxr://...``); when
#: present it is the device's relay_info, in place of system.relay.0
POWER_KEY = "system.power.0"
SERVER_KEY = "system.imaging_server.0"
MAC_KEY = "nic.0.mac_address.0"


def query_text(terms: str) -> str:
    """The filter as query text: characters a query may not hold are percent-encoded, the
    separators ``=``, ``&`` and ``/`` (and the other RFC 3986 sub-delimiters) are kept."""
    return quote(terms, safe="=&/!$'()*+,;:@?")


def _text(value: Any) -> str | None:
    """A key/value entry's value as text; None or empty means absent."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


class MozillaInventory:
    """``api`` ``bulk`` (default) or ``paginated``."""

    field_names = {
        "relay_info": RELAY_KEY,
        "imaging_server": SERVER_KEY,
        "mac": 'looking for SREG "nic0" with adapter "hw0"',
        "hardware_type": "server model",
    }

    def __init__(self, getter: JSONGetter, url: str, filter: str = "", api: str = "bulk") -> None:
        self.getter = getter
        self.url = url.rstrip("/")
        self.filter = filter
        self.api = api
        if api == "paginated":
            self.field_names = {**self.field_names, "mac": MAC_KEY}

    def describe(self) -> str:
        return f"Mozilla's inventory at {self.url} ({self.api} API)"

    async def fetch(self) -> list[System]:
        if self.api == "paginated":
            return await self._paginated()
        return await self._bulk()

    # -- the bulk export (4.2.1) ---------------------------------------------------------------

    async def _bulk(self) -> list[System]:
        url = f"{self.url}{BULK_PATH}?q={query_text(self.filter)}"
        answer = require(await self.getter.get(url), dict, f"GET {url}")
        systems = require(answer.get("systems"), dict, f"GET {url}: 'systems'")
        raw = []
        for key, o in systems.items():
            o = require(o, dict, f"system {key!r}")
            hostname = o.get("hostname") or key
            require(hostname, str, f"system {key!r}: hostname")
            pk = require(o.get("pk"), int, f"system {hostname}: pk")
            status, model = o.get("system_status"), o.get("server_model")
            for name, value in (("system_status", status), ("server_model", model)):
                if value is not None:
                    require(value, int, f"system {hostname}: {name}")
            raw.append((hostname, pk, status, model, o))
        # The look-ups, once per distinct key in this run (7.2), all before anything is used.
        statuses = {pk: await self._status(pk) for pk in sorted({r[2] for r in raw if r[2] is not None})}
        models = {pk: await self._model(pk) for pk in sorted({r[3] for r in raw if r[3] is not None})}
        return [self._bulk_system(hostname, pk, statuses.get(s), models.get(m), o) for hostname, pk, s, m, o in raw]

    async def _status(self, pk: int) -> str:
        url = self.url + STATUS_PATH.format(pk=pk)
        answer = require(await self.getter.get(url), dict, f"GET {url}")
        return require(answer.get("status"), str, f"GET {url}: 'status'")

    async def _model(self, pk: int) -> tuple[str, str]:
        url = self.url + MODEL_PATH.format(pk=pk)
        answer = require(await self.getter.get(url), dict, f"GET {url}")
        vendor = require(answer.get("vendor"), str, f"GET {url}: 'vendor'")
        return vendor, _text(answer.get("model")) or ""

    def _bulk_system(self, hostname: str, pk: int, status: str | None, model: tuple[str, str] | None,
                     o: dict[str, Any]) -> System:
        kv = {}
        for key, entry in (o.get("keyvalue_set") or {}).items():
            kv[key] = _text(entry.get("value")) if isinstance(entry, dict) else None
        mac = o.get("staticreg_set") or {}
        for step in ("nic0", "hwadapter_set", "hw0", "mac"):
            mac = mac.get(step) if isinstance(mac, dict) else None
        skip = None
        if status == "decommissioned":
            skip = "decommissioned"
        return System(
            hostname=hostname, inventory_id=pk, mac=_text(mac), imaging_server=kv.get(SERVER_KEY),
            relay_info=kv.get(POWER_KEY) or kv.get(RELAY_KEY), hardware_type=model[0] if model else None,
            hardware_model=model[1] if model else None, skip=skip,
        )

    # -- the paginated API (4.1.x) -------------------------------------------------------------

    async def _paginated(self) -> list[System]:
        path: str | None = f"{PAGINATED_PATH}?limit={PAGE_LIMIT}" + (f"&{query_text(self.filter)}" if self.filter else "")
        seen: set[str] = set()
        total: int | None = None
        systems: list[System] = []
        while path is not None:
            if path in seen or len(seen) >= MAX_PAGES:
                raise InventoryError(f"the inventory's pages do not end (at {path})")
            seen.add(path)
            url = self.url + path
            page = require(await self.getter.get(url), dict, f"GET {url}")
            meta = require(page.get("meta"), dict, f"GET {url}: 'meta'")
            objects = require(page.get("objects"), list, f"GET {url}: 'objects'")
            systems.extend(self._paged_system(o) for o in objects)
            count = meta.get("total_count")
            if isinstance(count, int):
                if total is not None and count != total:
                    raise InventoryError("the inventory changed while it was being read (its total went from "
                                         f"{total} to {count}); try again")
                total = count
            following = meta.get("next")
            if following is not None and not (isinstance(following, str) and following.startswith("/")):
                raise InventoryError(f"GET {url}: 'next' is not a path: {following!r}")
            path = following
        ids = [s.inventory_id for s in systems]
        if len(set(ids)) != len(ids) or (total is not None and len(ids) != total):
            raise InventoryError(f"the inventory changed while it was being read ({len(ids)} systems read, "
                                 f"{len(set(ids))} distinct, {total} announced); try again")
        return systems

    def _paged_system(self, o: Any) -> System:
        o = require(o, dict, "a system of the paginated API")
        hostname = require(o.get("hostname"), str, "a system's hostname")
        pk = require(o.get("id"), int, f"system {hostname}: id")
        kv = {}
        for entry in o.get("key_value") or []:
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                kv[entry["key"]] = _text(entry.get("value"))
        model = o.get("server_model")
        vendor = _text(model.get("vendor")) if isinstance(model, dict) else None
        return System(
            hostname=hostname, inventory_id=pk, mac=kv.get(MAC_KEY), imaging_server=kv.get(SERVER_KEY),
            relay_info=kv.get(POWER_KEY) or kv.get(RELAY_KEY), hardware_type=vendor,
            hardware_model=(_text(model.get("model")) or "") if vendor else None,
        )
