"""PXE configs: ``pxelinux.cfg/01-aa-bb-cc-dd-ee-ff`` per device (spec bmm-protocols.md 4).

:class:`PXEConfigs` holds each device's current config, rendered, in memory, and
:class:`PXEConfigBackend` is how our TFTP server answers those names: straight from that table, as
MAAS's rack daemon does, so a boot loader never reads a file being replaced and a cleared config is
"file not found" at once. The table also keeps the spec's files under the TFTP root (``files``,
on by default): they let another TFTP server serve the root, and they are what the table is
rebuilt from after a restart (state-machines.md R-1: a device mid-boot must find its config
again). Written atomically (a temporary file beside the target, then ``os.replace``); these are
tiny local writes, done on the reactor thread as the spec allows.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any

from zope.interface import implementer

from mozpool.bmm.tftp.backend import BytesReader, FileNotFound, IBackend, IReader
from mozpool.logconfig import Logger

log = Logger()

_MAC = re.compile(r"[0-9a-f]{12}")


class BadMAC(ValueError):
    """Not a MAC address of 12 hex digits."""


def normalise_mac(mac: str) -> str:
    """Lower-case, without ``:`` or ``-``; anything but 12 hex digits is refused."""
    plain = mac.lower().replace(":", "").replace("-", "")
    if not _MAC.fullmatch(plain):
        raise BadMAC(f"invalid MAC address {mac!r}")
    return plain


def pxe_filename(mac: str) -> str:
    plain = normalise_mac(mac)
    return "01-" + "-".join(plain[i:i + 2] for i in range(0, 12, 2))


def pxe_path(tftp_root: str, mac: str) -> str:
    return os.path.join(tftp_root, "pxelinux.cfg", pxe_filename(mac))


#: Replaced by this server's address.
IPADDRESS = "%IPADDRESS%"
#: Replaced by the boot's own token, with which the live image posts its events (mozpool.web.auth).
BOOTTOKEN = "%BOOTTOKEN%"


def render(contents: str, ipaddress: str, boot_token: str = "") -> str:
    """The substitutions: this server's address, and the device's token for this boot."""
    return contents.replace(IPADDRESS, ipaddress).replace(BOOTTOKEN, boot_token)


def set_pxe_config(tftp_root: str, mac: str, contents: str, ipaddress: str, boot_token: str = "") -> str:
    """Write the rendered config for ``mac``; return its path."""
    target = pxe_path(tftp_root, mac)
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.path.basename(target)}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(render(contents, ipaddress, boot_token))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def clear_pxe_config(tftp_root: str, mac: str) -> None:
    """Remove the config for ``mac``; a missing file is success."""
    try:
        os.unlink(pxe_path(tftp_root, mac))
    except FileNotFoundError:
        pass


def read_pxe_config(tftp_root: str, mac: str) -> str | None:
    try:
        with open(pxe_path(tftp_root, mac), encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


_CONFIG_NAME = re.compile(rb"pxelinux\.cfg/01-((?:[0-9a-fA-F]{2}-){5}[0-9a-fA-F]{2})")


def mac_of_config_name(name: bytes) -> str | None:
    """The MAC (12 lowercase hex digits) whose config ``name`` asks for, or None for other names."""
    m = _CONFIG_NAME.fullmatch(name.lstrip(b"/"))
    return None if m is None else m.group(1).replace(b"-", b"").decode("ascii").lower()


class PXEConfigs:
    """Each device's current PXE config, rendered, by MAC: what TFTP serves for ``01-<mac>``.

    With ``files`` (the default) every change is also written to (or removed from)
    ``<tftp_root>/pxelinux.cfg/`` first, and the table starts from the files found there.
    """

    def __init__(self, tftp_root: str, files: bool = True) -> None:
        self.tftp_root = tftp_root
        self.files = files
        self._configs: dict[str, bytes] = {}
        if files:
            self.load()

    def load(self) -> int:
        """Read every ``01-<mac>`` file under the root into the table; how many were found."""
        directory = os.path.join(self.tftp_root, "pxelinux.cfg")
        try:
            names = os.listdir(directory)
        except OSError:
            return 0
        for name in names:
            mac = mac_of_config_name(b"pxelinux.cfg/" + os.fsencode(name))
            if mac is None:
                continue
            try:
                with open(os.path.join(directory, name), "rb") as f:
                    self._configs[mac] = f.read()
            except OSError as e:
                log.warn("PXE config {name} not loaded: {error}", name=name, error=e)
        return len(self._configs)

    def set(self, mac: str, contents: str, ipaddress: str, boot_token: str = "") -> None:
        """Render and keep ``contents`` for ``mac`` (and write its file, with ``files``)."""
        plain = normalise_mac(mac)
        if self.files:
            set_pxe_config(self.tftp_root, plain, contents, ipaddress, boot_token)
        self._configs[plain] = render(contents, ipaddress, boot_token).encode("utf-8")

    def clear(self, mac: str) -> None:
        """Forget the config for ``mac`` (and remove its file); none is fine."""
        plain = normalise_mac(mac)
        if self.files:
            clear_pxe_config(self.tftp_root, plain)
        self._configs.pop(plain, None)

    def get(self, mac: str) -> bytes | None:
        """The rendered config served for ``mac``, or None."""
        return self._configs.get(normalise_mac(mac))

    def __len__(self) -> int:
        return len(self._configs)


@implementer(IBackend)
class PXEConfigBackend:
    """``pxelinux.cfg/01-<mac>`` from :class:`PXEConfigs`; every other name from ``fallback``.

    A MAC with no config is "file not found" whatever lies on disk: the table is the truth, so a
    boot loader moves straight on to its next name (or its SD card).
    """

    def __init__(self, configs: PXEConfigs, fallback: IBackend) -> None:
        self.configs = configs
        self.fallback = fallback

    def get_reader(self, name: bytes) -> Any:
        mac = mac_of_config_name(name)
        if mac is None:
            return self.fallback.get_reader(name)
        data = self.configs.get(mac)
        if data is None:
            raise FileNotFound()
        reader: IReader = BytesReader(data)
        return reader
