"""Mapping a TFTP filename to a file inside the root, and nothing outside it."""

from __future__ import annotations

import os

from .packets import ERR_ACCESS, ERR_NOT_FOUND


class PathRefused(Exception):
    """The name cannot be served; carries the TFTP error code and message to send."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


class FileNotFound(PathRefused):
    """ERROR 1: answered at once, since boot loaders probe a series of names."""

    def __init__(self, message: str = "file not found") -> None:
        super().__init__(ERR_NOT_FOUND, message)


class AccessViolation(PathRefused):
    """ERROR 2: outside the root, not a regular file, unreadable, an illegal name."""

    def __init__(self, message: str = "access violation") -> None:
        super().__init__(ERR_ACCESS, message)


def _has_control(name: bytes) -> bool:
    return any(b < 32 or b == 127 for b in name)


def resolve(root: bytes, filename: bytes) -> bytes:
    """The real path that filename names under root; raise PathRefused when it must not be served.

    The check is made on the fully resolved path so a symlink (anywhere in the path) can never lead
    out of the root, while links that stay inside are still served.
    """
    name = filename.lstrip(b"/")
    if not name or b"\\" in name or _has_control(name):
        raise AccessViolation("illegal filename")
    if b".." in name.split(b"/"):
        raise AccessViolation()
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, name))
    if real != real_root and not real.startswith(real_root.rstrip(b"/") + b"/"):
        raise AccessViolation()
    if not os.path.lexists(real):
        raise FileNotFound()
    return real
