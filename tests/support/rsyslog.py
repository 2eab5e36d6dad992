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
        await task.deferLater(reactor, 0.5, lambda: None)  # imudp binds at start-up
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
