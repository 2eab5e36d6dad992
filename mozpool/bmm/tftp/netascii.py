"""Block sources: where a transfer's payload bytes come from, in octet or netascii form."""

from __future__ import annotations

from typing import Any, Protocol


class BlockSource(Protocol):
    """Hands out the payload of consecutive DATA blocks, one read per call."""

    def read(self, size: int) -> bytes:
        """Up to size bytes; fewer only at the end of the stream."""

    def close(self) -> None:
        """Release the file and anything read ahead."""

    def buffered_bytes(self) -> int:
        """Bytes read from the file and not yet handed out."""


def to_netascii(data: bytes) -> bytes:
    """LF -> CR LF and bare CR -> CR NUL (RFC 764), the only conversions netascii asks for."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def from_netascii(data: bytes) -> bytes:
    """The inverse of to_netascii, for tests and clients (CR LF -> LF, CR NUL -> CR)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")


class OctetSource:
    """Bytes as stored, straight from the reader (an unbuffered file: one read() per block).

    A regular file only reads short at its end; the transfer confirms that with one more read.
    ``readinto`` is there when the reader has it (a file): the transfer then reads into its own
    reused buffer instead of allocating each block.
    """

    def __init__(self, f: Any) -> None:
        self._f = f
        self.read = f.read  # type: ignore[method-assign]
        readinto = getattr(f, "readinto", None)
        if readinto is not None:
            self.readinto = readinto
        fileno = getattr(f, "fileno", None)
        if fileno is not None:
            self.fileno = fileno  # a regular file: the transfer reads ahead into its own ring
        self._close = getattr(f, "finish", None) or f.close

    def read(self, size: int) -> bytes:  # replaced per instance by the reader's own read
        return bytes(self._f.read(size))

    def close(self) -> None:
        self._close()

    def buffered_bytes(self) -> int:
        return 0  # unbuffered: each read is one read() syscall


class NetasciiSource:
    """Converts on the fly; the bytes a conversion pushes past a block boundary wait in a buffer.

    Between reads that carry is under 2 * max(size, _CHUNK) bytes: one raw read of at most
    max(size, _CHUNK) bytes at most doubles when converted.
    """

    _CHUNK = 8192

    def __init__(self, f: Any) -> None:
        self._f = f
        self._close = getattr(f, "finish", None) or f.close
        self._pending = b""
        self._eof = False

    def read(self, size: int) -> bytes:
        while len(self._pending) < size and not self._eof:
            raw = self._f.read(max(size, self._CHUNK))
            if not raw:
                self._eof = True
                break
            self._pending += to_netascii(raw)
        out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def close(self) -> None:
        self._pending = b""
        self._close()

    def buffered_bytes(self) -> int:
        return len(self._pending)
