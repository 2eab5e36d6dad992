"""Test doubles for the simulated devices: a recording stand-in for the daemon's HTTP API, a
PXE store the "TFTP server" reads from, and an agent that records start/stop."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.web.resource import Resource
from twisted.web.server import Request

from mozpool.fakes.tftpclient import TFTPError, TFTPNotFound

ANDROID_CONFIG = (
    "default linux\n"
    "label linux\n"
    "  kernel http://127.0.0.1/live/uImage\n"
    "  append console=ttyO2,115200n8 rootwait ro mobile-imaging-url=http://127.0.0.1/scripts/{stage}.sh\n"
)


def pxe_config(stage: str) -> bytes:
    return ANDROID_CONFIG.format(stage=stage).encode()


class RecordingAPI(Resource):
    """The two endpoints a live image calls (http-api.md 4.1, 5.7), recording every event.

    ``on_event(device, event)`` lets a test play LifeGuard (e.g. clear the PXE config at
    ``mobile_init_started``).
    """

    isLeaf = True

    def __init__(self, on_event: Optional[Callable[[str, str], None]] = None) -> None:
        super().__init__()
        self.events: list[tuple[str, str, str]] = []
        self.bootconfigs: dict[str, str] = {}
        self.status = 200
        self.on_event = on_event

    def device_events(self, device: str) -> list[str]:
        return [e for (_, d, e) in self.events if d == device]

    def render(self, request: Request) -> bytes:
        parts = request.path.decode().strip("/").split("/")
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        if len(parts) == 5 and parts[:2] == ["api", "device"] and parts[3] == "event":
            self.events.append((request.method.decode(), parts[2], parts[4]))
            if self.on_event is not None:
                self.on_event(parts[2], parts[4])
            request.setResponseCode(self.status)
            return b"{}" if self.status == 200 else json.dumps({"error": "boom"}).encode()
        if len(parts) == 4 and parts[:2] == ["api", "device"] and parts[3] == "bootconfig":
            return (self.bootconfigs.get(parts[2]) or "{}").encode()
        request.setResponseCode(404)
        return b'{"error": "not found"}'


class PXEStore:
    """What the TFTP server would serve: path -> bytes; ``broken`` makes every read fail."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.reads: list[str] = []
        self.broken = False

    def fetch(self, path: str) -> "Deferred[bytes]":
        self.reads.append(path)
        if self.broken:
            return fail(TFTPError(0, "server on fire"))
        if path not in self.files:
            return fail(TFTPNotFound(1, "file not found"))
        return succeed(self.files[path])


class RecordingAgent:
    """Stands in for SimulatedSUTAgent: whether it listens, and the hook the device installs."""

    def __init__(self) -> None:
        self.listening = False
        self.starts = 0
        self.onReboot: Any = None

    def start(self) -> int:
        self.starts += 1
        self.listening = True
        return 20701

    def stop(self, dropConnections: bool = False) -> None:
        self.listening = False
