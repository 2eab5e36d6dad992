"""A real pdudaemon (from PyPI, installed by ``bin/run-tests`` through the test extra) run as a
child process on a free loopback port, with a configuration the test writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from tests.system.daemon import _Output


def pdudaemon_executable() -> str | None:
    """The ``pdudaemon`` console script beside this Python, or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "pdudaemon")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("pdudaemon")


def require_pdudaemon() -> str:
    found = pdudaemon_executable()
    if found is None:
        message = "pdudaemon is not installed (pip install pdudaemon; it needs libsystemd-dev and pkg-config)"
        if os.environ.get("CI") == "true":
            raise AssertionError(message)
        raise SkipTest(message)
    return found


class PdudaemonProcess:
    """``pdudaemon --conf FILE`` with ``config`` (pdudaemon's JSON); stopped at the test's end."""

    def __init__(self, test: TestCase, config: dict[str, Any]) -> None:
        self.executable = require_pdudaemon()
        self.dir = os.path.abspath(test.mktemp())
        os.makedirs(self.dir)
        self.config_path = os.path.join(self.dir, "pdudaemon.conf")
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        self.host = config["daemon"]["hostname"]
        self.port = config["daemon"]["port"]
        self.url = f"http://{self.host}:{self.port}"
        self.log_path = os.path.join(self.dir, "pdudaemon.log")
        self.output: _Output | None = None
        self.process: Any = None
        test.addCleanup(self.stop)

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    async def start(self, timeout: float = 20) -> None:
        import treq
        from twisted.web.client import HTTPConnectionPool

        self.output = _Output(self.log_path)
        argv = [self.executable, "--conf", self.config_path, "--loglevel", "INFO"]
        self.process = reactor.spawnProcess(self.output, self.executable, argv, env=dict(os.environ), path=self.dir)
        pool = HTTPConnectionPool(reactor, persistent=False)
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            try:
                # A request without a port: refused at once, switching nothing.
                response = await treq.get(self.url + "/power/control/on", timeout=2, pool=pool)
                await response.content()
                return
            except Exception:
                pass
            if self.output.ended.called:
                raise AssertionError("pdudaemon exited:\n" + self.log_text()[-3000:])
            await task.deferLater(reactor, 0.2, lambda: None)
        raise AssertionError("pdudaemon did not answer in time:\n" + self.log_text()[-3000:])

    async def stop(self) -> None:
        if self.process is None or self.output is None or self.output.ended.called:
            return
        self.process.signalProcess(signal.SIGTERM)
        ended = self.output.ended
        timer = reactor.callLater(10, lambda: not ended.called and self.process.signalProcess("KILL"))
        await ended
        if timer.active():
            timer.cancel()
