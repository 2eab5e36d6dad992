"""BMM as the layers above see it: hardware operations on devices, by name or by row.

:class:`Hardware` implements :class:`IDeviceHardware` for LifeGuard over the wire-level clients
(power through :class:`mozpool.bmm.power.PowerControl`, ping, SUT agent) and the PXE files, and logs every outcome against the device (source
``bmm`` or ``sut``).  :class:`BMMActions` implements the HTTP API's ``IBMM`` (the BMM endpoints)
on top of it.
"""

from __future__ import annotations

from functools import wraps
from typing import Any, Callable, Coroutine

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from mozpool.logconfig import Logger
from zope.interface import implementer

from mozpool.bmm import pxe, queries
from mozpool.bmm.interfaces import IBMM, DeviceInfo, IDeviceHardware, IPowerControl
from mozpool.bmm.ping import IPinger
from mozpool.bmm.sut import ISUTAgent
from mozpool.db import devices, logs, tokens
from mozpool.db.pool import Database
from mozpool.errors import UnknownObject
from mozpool.timeutil import dbnow

log = Logger()

#: (device name, source, message) -> fire-and-forget log write
DeviceLogger = Callable[[str, str, str], Any]
#: (device name, token hash) -> the write of a new boot token's hash
BootTokenStore = Callable[[str, str], Any]


def database_boot_tokens(db: Database) -> BootTokenStore:
    def store(name: str, hashed: str) -> "defer.Deferred[Any]":
        d = db.runInteraction(tokens.store_boot_token, name, hashed)
        d.addErrback(lambda f: log.warn("boot token for {name} not stored: {f}", name=name, f=f.getErrorMessage()))
        return d

    return store


def database_logger(db: Database, clock: IReactorTime) -> DeviceLogger:
    """Log lines into ``device_logs`` by device name; a failed write is only logged."""

    def write(name: str, source: str, message: str) -> "defer.Deferred[Any]":
        log.info("device {device}: {message}", device=name, source=source, message=logs.printable(message))
        d = db.runInteraction(logs.add_device_log_by_name, name, source, message, dbnow(clock))
        d.addErrback(lambda f: log.warn("device log for {name} not written: {f}", name=name, f=f.getErrorMessage()))
        return d

    return write


@implementer(IDeviceHardware)
class Hardware:
    def __init__(
        self, power: IPowerControl, pinger: IPinger, sut: ISUTAgent, tftp_root: str, ipaddress: str,
        device_log: DeviceLogger,
        boot_tokens: BootTokenStore | None = None, pxe_configs: pxe.PXEConfigs | None = None,
    ) -> None:
        self.power = power
        #: the devices' PXE configs, which the TFTP server answers from (files only by default)
        self.pxe_configs = pxe_configs if pxe_configs is not None else pxe.PXEConfigs(tftp_root, files=True)
        #: stores the hash of a new boot's token (device name, hash); None: no boot tokens
        self.boot_tokens = boot_tokens
        self.pinger = pinger
        self.sut = sut
        self.tftp_root = tftp_root
        self.ipaddress = ipaddress
        self.device_log = device_log
        #: log lines of synchronous operations still being written
        self.log_writes: set[defer.Deferred[Any]] = set()

    async def _relay(self, device: DeviceInfo, what: str, op: Callable[[Any], Any]) -> Any:
        """The driver's result itself (a PowerResult: truthy when it worked), so a failure's
        reason reaches LifeGuard's fault isolation (issue 15: a board that did not answer is
        evidence against it; an operation cancelled or still queued is not)."""
        await self.device_log(device.name, "bmm", f"{what} started")
        result = await op(device.relay_info)
        if result:
            note = getattr(result, "note", "")
            await self.device_log(device.name, "bmm", f"{what} succeeded" + (f" ({note})" if note else ""))
        else:
            reason = getattr(result, "reason", "") or "unknown error"
            await self.device_log(device.name, "bmm", f"{what} failed: {reason}")
        return result

    def power_cycle(self, device: DeviceInfo) -> "defer.Deferred[bool]":
        return defer.Deferred.fromCoroutine(self._relay(device, "power-cycle", self.power.power_cycle))

    def power_off(self, device: DeviceInfo) -> "defer.Deferred[bool]":
        return defer.Deferred.fromCoroutine(self._relay(device, "power-off", self.power.power_off))

    def ping(self, device: DeviceInfo) -> "defer.Deferred[bool]":
        async def go() -> bool:
            ok = bool(await self.pinger.ping(device.fqdn))
            await self.device_log(device.name, "bmm", "ping " + ("ok" if ok else "failed"))
            return ok

        return defer.Deferred.fromCoroutine(go())

    def _sut(self, device: DeviceInfo, what: str, op: Callable[..., Any]) -> "defer.Deferred[bool]":
        async def go() -> bool:
            lines: list[Any] = []
            result = await op(device.fqdn, lambda line: lines.append(self.device_log(device.name, "sut", line)))
            await defer.gatherResults([d for d in lines if isinstance(d, defer.Deferred)])
            if result:
                await self.device_log(device.name, "sut", f"{what} ok")
            else:
                await self.device_log(device.name, "sut", f"{what} failed: {getattr(result, 'reason', '')}")
            return bool(result)

        return defer.Deferred.fromCoroutine(go())

    def sut_verify(self, device: DeviceInfo) -> "defer.Deferred[bool]":
        return self._sut(device, "SUT verify", self.sut.verify)

    def sut_sdcard_check(self, device: DeviceInfo) -> "defer.Deferred[bool]":
        return self._sut(device, "SD card check", self.sut.check_sdcard)

    def set_pxe(self, device: DeviceInfo, contents: str) -> None:
        token = ""
        if pxe.BOOTTOKEN in contents and self.boot_tokens is not None:
            token = tokens.new_token(tokens.BOOT_PREFIX)
            self._write_later(self.boot_tokens(device.name, tokens.token_hash(token)))
        self.pxe_configs.set(device.mac_address, contents, self.ipaddress, token)
        self._log_later(device, "PXE config set")

    def clear_pxe(self, device: DeviceInfo) -> None:
        self.pxe_configs.clear(device.mac_address)
        self._log_later(device, "PXE config cleared")

    def _log_later(self, device: DeviceInfo, message: str) -> None:
        """The PXE calls are synchronous: their log lines are written in the background."""
        self._write_later(self.device_log(device.name, "bmm", message))

    def _write_later(self, d: Any) -> None:
        if isinstance(d, defer.Deferred) and not d.called:
            self.log_writes.add(d)
            d.addBoth(lambda r: (self.log_writes.discard(d), r)[1])


def deferred(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., "defer.Deferred[Any]"]:
    """An ``async def`` method whose callers get a Deferred."""

    @wraps(fn)
    def call(*args: Any, **kw: Any) -> "defer.Deferred[Any]":
        return defer.Deferred.fromCoroutine(fn(*args, **kw))

    return call


@implementer(IBMM)
class BMMActions:
    """The BMM endpoints: the API has checked existence, ownership and input already."""

    def __init__(self, db: Database, hardware: Hardware) -> None:
        self.db = db
        self.hardware = hardware
        #: operations started and not finished (the API answers before they end)
        self.in_flight: set[defer.Deferred[Any]] = set()

    def _start(self, what: str, d: "defer.Deferred[Any]", name: str) -> None:
        self.in_flight.add(d)
        d.addErrback(lambda f: log.failure("{what} of {name} failed", f, what=what, name=name))
        d.addBoth(lambda _: self.in_flight.discard(d))

    def settle(self) -> "defer.Deferred[Any]":
        """Fires when every operation started so far has ended, its log lines written."""
        return defer.gatherResults(list(self.in_flight) + list(self.hardware.log_writes))

    async def _device(self, name: str) -> DeviceInfo:
        info = await self.db.runInteraction(queries.device_info, name)
        if info is None:
            raise UnknownObject(f"no such device {name}")
        return info

    @deferred
    async def power_cycle(self, name: str, pxe_config: str | None, boot_config: str | None) -> None:
        device = await self._device(name)
        if pxe_config is not None:
            contents = await self.db.runInteraction(queries.prepare_power_cycle, name, pxe_config, boot_config)
            if contents is None:
                raise UnknownObject(f"no such PXE config {pxe_config}")
            self.hardware.set_pxe(device, contents)
        else:
            self.hardware.clear_pxe(device)
        self._start("power-cycle", self.hardware.power_cycle(device), name)

    @deferred
    async def power_off(self, name: str) -> None:
        self._start("power-off", self.hardware.power_off(await self._device(name)), name)

    @deferred
    async def clear_pxe(self, name: str) -> None:
        self.hardware.clear_pxe(await self._device(name))

    @deferred
    async def ping(self, name: str) -> bool:
        return bool(await self.hardware.ping(await self._device(name)))

    @deferred
    async def relay_test(self, relay: str) -> bool:
        found = await self.db.runInteraction(devices.relay_board_owner, relay)
        if found is None:
            raise UnknownObject(f"no such relay board {relay}")
        return bool(await self.hardware.power.test_controller(found[0]))
