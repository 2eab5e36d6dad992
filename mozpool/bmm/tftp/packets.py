"""TFTP packet codec (RFC 1350, RFC 2347), kept free of I/O so it can be tested on bytes alone."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RRQ = 1
WRQ = 2
DATA = 3
ACK = 4
ERROR = 5
OACK = 6

# Error codes (RFC 1350 section 5, RFC 2347).
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_DISK_FULL = 3
ERR_ILLEGAL = 4
ERR_UNKNOWN_TID = 5
ERR_EXISTS = 6
ERR_NO_USER = 7
ERR_OPTIONS = 8

_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")

ACK_PREFIX = _OPCODE.pack(ACK)
ERROR_PREFIX = _OPCODE.pack(ERROR)


class MalformedPacket(ValueError):
    """A datagram that does not parse as the packet its opcode claims to be."""


@dataclass
class Request:
    """A parsed RRQ or WRQ; names of modes and options are lower-cased."""

    opcode: int
    filename: bytes
    mode: str
    options: dict[str, str] = field(default_factory=dict)


def opcode_of(datagram: bytes) -> int | None:
    """The opcode of a datagram, or None when it is too short to carry one."""
    if len(datagram) < 2:
        return None
    return int(_OPCODE.unpack_from(datagram)[0])


def parse_request(datagram: bytes) -> Request:
    """Parse RRQ/WRQ; raise MalformedPacket for anything RFC 1350 would call illegal."""
    opcode = opcode_of(datagram)
    if opcode not in (RRQ, WRQ):
        raise MalformedPacket("not a request")
    body = datagram[2:]
    if not body.endswith(b"\0"):
        raise MalformedPacket("request not NUL-terminated")
    parts = body[:-1].split(b"\0")
    if len(parts) < 2:
        raise MalformedPacket("request without mode")
    filename, rawMode = parts[0], parts[1]
    if not filename:
        raise MalformedPacket("empty filename")
    try:
        mode = rawMode.decode("ascii").lower()
        options: dict[str, str] = {}
        rest = parts[2:]
        # A trailing option name without a value is ignored (RFC 2347 leaves it undefined).
        for i in range(0, len(rest) - 1, 2):
            name = rest[i].decode("ascii").lower()
            if name and name not in options:
                options[name] = rest[i + 1].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedPacket("non-ASCII mode or option") from None
    return Request(opcode, filename, mode, options)


def parse_ack(datagram: bytes) -> int:
    """The block number of an ACK."""
    if len(datagram) < 4 or datagram[:2] != ACK_PREFIX:
        raise MalformedPacket("not an ACK")
    return int(_HEADER.unpack_from(datagram)[1])


def parse_data(datagram: bytes) -> tuple[int, bytes]:
    """Block number and payload of a DATA packet (used by tests and the scripted bench client)."""
    if len(datagram) < 4 or opcode_of(datagram) != DATA:
        raise MalformedPacket("not a DATA packet")
    return int(_HEADER.unpack_from(datagram)[1]), datagram[4:]


def parse_error(datagram: bytes) -> tuple[int, str]:
    """Code and message of an ERROR packet."""
    if len(datagram) < 4 or opcode_of(datagram) != ERROR:
        raise MalformedPacket("not an ERROR packet")
    message = datagram[4:].split(b"\0", 1)[0]
    return int(_HEADER.unpack_from(datagram)[1]), message.decode("ascii", "replace")


def parse_oack(datagram: bytes) -> dict[str, str]:
    """Options of an OACK packet."""
    if opcode_of(datagram) != OACK:
        raise MalformedPacket("not an OACK")
    parts = datagram[2:].split(b"\0")
    return {
        parts[i].decode("ascii").lower(): parts[i + 1].decode("ascii")
        for i in range(0, len(parts) - 1, 2)
    }


def encode_request(
    filename: bytes, mode: str = "octet", options: dict[str, str] | None = None, opcode: int = RRQ
) -> bytes:
    """Build an RRQ/WRQ (for tests and the bench client)."""
    out = [_OPCODE.pack(opcode), filename, b"\0", mode.encode("ascii"), b"\0"]
    for name, value in (options or {}).items():
        out += [name.encode("ascii"), b"\0", value.encode("ascii"), b"\0"]
    return b"".join(out)


def encode_data(block: int, payload: bytes) -> bytes:
    """Build a DATA packet; block numbers wrap modulo 2^16."""
    return _HEADER.pack(DATA, block & 0xFFFF) + payload


def encode_ack(block: int) -> bytes:
    """Build an ACK packet."""
    return _HEADER.pack(ACK, block & 0xFFFF)


def encode_error(code: int, message: str) -> bytes:
    """Build an ERROR packet."""
    return _HEADER.pack(ERROR, code) + message.encode("ascii", "replace") + b"\0"


def encode_oack(options: dict[str, str]) -> bytes:
    """Build an OACK listing exactly the accepted options."""
    out = [_OPCODE.pack(OACK)]
    for name, value in options.items():
        out += [name.encode("ascii"), b"\0", value.encode("ascii"), b"\0"]
    return b"".join(out)

