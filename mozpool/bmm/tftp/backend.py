"""Where the bytes of a read request come from: python-tx-tftp's backend seam, read-only.

``IBackend.get_reader(name)`` answers an RRQ's filename with an :class:`IReader` (``size``,
``read(n)``, ``finish()``), or raises :class:`FileNotFound` / :class:`AccessViolation`; it may also
return a Deferred firing with either, as tx-tftp's backends do. The server knows nothing of files:

- :class:`FilesystemBackend` serves the TFTP root with the confinement of spec bmm-protocols.md 5.5;
- :class:`mozpool.bmm.pxe.PXEConfigBackend` answers ``pxelinux.cfg/01-<mac>`` from the devices'
  current PXE configs in memory (as MAAS's rack daemon does) and hands every other name on.

A reader that :class:`IFileReader` describes is a regular file opened once at the RRQ; only those
can be handed over to a worker process (their descriptor travels, not their name).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.python.filepath import FilePath
from zope.interface import Attribute, Interface, implementer

from .paths import AccessViolation, FileNotFound, PathRefused, resolve


class IReader(Interface):
    """The bytes of one file, read front to back by one transfer (tx-tftp's IReader)."""

    size = Attribute("The size in bytes at open (for tsize), or None when not known.")

    def read(size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end."""

    def finish() -> None:
        """Release what the reader holds; called once on every way a transfer ends."""


class IFileReader(IReader):
    """A reader over a regular file's descriptor, which a worker process can be given."""

    def fileno() -> int:
        """The open descriptor (positioned at the start until the first read)."""

    def readinto(buffer: Any) -> int:
        """Fill ``buffer`` (a writable memoryview) as far as the file allows; the bytes read."""


class IBackend(Interface):
    """Turns the filename of an RRQ into a reader (tx-tftp's IBackend, reads only)."""

    def get_reader(name: bytes) -> Any:
        """An :class:`IReader` (or a Deferred firing with one) for ``name`` as the client sent it;
        raise (or fail with) :class:`FileNotFound` or :class:`AccessViolation`."""


@implementer(IReader)
class BytesReader:
    """Bytes held in memory: a PXE config rendered for one device."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0
        self.size: int | None = len(data)

    def read(self, size: int) -> bytes:
        start = self._pos
        self._pos = min(start + size, len(self._view))
        return self._view[start:self._pos].tobytes()

    def finish(self) -> None:
        self._view = memoryview(b"")
        self._pos = 0


@implementer(IFileReader)
class FileReader:
    """An open regular file, read unbuffered (one read() per call, nothing read ahead here)."""

    def __init__(self, f: Any, size: int) -> None:
        self._f = f
        self.size: int | None = size
        self.read = f.read  # type: ignore[method-assign]
        self.readinto = f.readinto  # type: ignore[method-assign]

    def read(self, size: int) -> bytes:  # replaced per instance by the file's own read
        return bytes(self._f.read(size))

    def readinto(self, buffer: Any) -> int:  # replaced per instance by the file's own readinto
        return int(self._f.readinto(buffer))

    def fileno(self) -> int:
        return int(self._f.fileno())

    @property
    def closed(self) -> bool:
        return bool(self._f.closed)

    def finish(self) -> None:
        self._f.close()


def open_regular(path: bytes) -> tuple[Any, int]:
    """Open a regular file for reading without following a last-moment symlink or blocking on a FIFO."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFound() from None
    except OSError:
        raise AccessViolation() from None
    if not stat.S_ISREG(st.st_mode):
        raise AccessViolation("not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFound() from None
    except OSError:
        raise AccessViolation() from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AccessViolation("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering=0), st.st_size


@implementer(IBackend)
class FilesystemBackend:
    """The files under ``root``, and nothing outside it (spec 5.5)."""

    def __init__(self, root: FilePath[Any] | str | bytes) -> None:
        root_path: str | bytes = root.path if isinstance(root, FilePath) else root
        self.root: bytes = os.fsencode(root_path)

    def get_reader(self, name: bytes) -> FileReader:
        f, size = open_regular(resolve(self.root, name))
        return FileReader(f, size)


__all__ = [
    "AccessViolation",
    "BytesReader",
    "FileNotFound",
    "FileReader",
    "FilesystemBackend",
    "IBackend",
    "IFileReader",
    "IReader",
    "open_regular",
    "PathRefused",
]
