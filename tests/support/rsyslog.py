"""A private rsyslogd (Debian's) listening on a loopback UDP port and writing what it receives
to a file, for the syslog system test.  Needs no root configuration and touches no /dev/log."""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.trial.unittest import SkipTest

TEMPLATE = "%syslogfacility-text% %syslogseverity-text% %app-name% %structured-data% %msg%\\n"


def rsyslogd_path() -> str:
    found = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
    if found is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("rsyslogd is missing (bin/run-tests installs Debian's rsyslog)")
        raise SkipTest("rsyslogd is not installed (apt-get install rsyslog)")
    return found


def _udp_bound(port: int) -> bool | None:
    """Whether a socket is bound to UDP 127.0.0.1:``port`` (None: cannot tell), read from
    /proc/net/udp so that the port itself is never touched."""
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as f:
            return any(line.split()[1:2] == [wanted] for line in f.readlines()[1:])
    except OSError:
        return None


class _Ended(protocol.ProcessProtocol):
    def __init__(self, log_path: str) -> None:
        self.ended: defer.Deferred[Any] = defer.Deferred()
        self.log = open(log_path, "ab")

    def outReceived(self, data: bytes) -> None:
        self.log.write(data)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.log.close()
        self.ended.callback(None)


class PrivateRsyslog:
    def __init__(self, directory: str, port: int) -> None:
        self.dir = os.path.abspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port
        self.output = os.path.join(self.dir, "received.log")
        self.conf = os.path.join(self.dir, "rsyslog.conf")
        with open(self.conf, "w") as f:
            f.write(
                f'global(workDirectory="{self.dir}")\n'
                'module(load="imudp")\n'
                f'input(type="imudp" address="127.0.0.1" port="{port}")\n'
                f'template(name="plain" type="string" string="{TEMPLATE}")\n'
                f'*.* action(type="omfile" file="{self.output}" template="plain")\n'
            )
        self.process: Any = None
        self.proto: _Ended | None = None

    async def start(self) -> None:
        binary = rsyslogd_path()
        self.proto = _Ended(os.path.join(self.dir, "rsyslogd.out"))
        pid = os.path.join(self.dir, "rsyslogd.pid")
        if os.path.exists(pid):
            os.unlink(pid)
        self.process = reactor.spawnProcess(self.proto, binary, [binary, "-n", "-f", self.conf, "-i", pid],
                                            env=dict(os.environ), path=self.dir)
        # imudp binds at start-up: wait for the port (however slowly a busy machine starts it),
        # so that no line sent after this returns is lost.
        deadline = reactor.seconds() + 30
        while not self.proto.ended.called:
            bound = _udp_bound(self.port)
            if bound is None:
                await task.deferLater(reactor, 0.5, lambda: None)  # no /proc: the old guess
                break
            if bound:
                break
            if reactor.seconds() > deadline:
                raise AssertionError(f"rsyslogd did not bind UDP 127.0.0.1:{self.port} within 30 s")
            await task.deferLater(reactor, 0.05, lambda: None)
        if self.proto.ended.called:
            with open(os.path.join(self.dir, "rsyslogd.out"), "rb") as f:
                raise AssertionError("rsyslogd exited: " + f.read().decode(errors="replace"))

    async def stop(self) -> None:
        if self.process is not None and self.proto is not None and not self.proto.ended.called:
            self.process.signalProcess(signal.SIGTERM)
            await self.proto.ended

    def lines(self) -> list[str]:
        if not os.path.exists(self.output):
            return []
        with open(self.output, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
