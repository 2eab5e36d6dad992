"""PXE config files under the TFTP root: ``pxelinux.cfg/01-aa-bb-cc-dd-ee-ff`` per device.

Written atomically (a temporary file beside the target, then ``os.replace``) so a TFTP client sees
the old or the new file, never half of one.  These are tiny local writes, done on the reactor
thread as the spec allows.
"""

from __future__ import annotations

import os
import re
import secrets

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
