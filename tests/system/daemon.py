"""Start the real daemon (`twistd -n mozpool ...`) as a child process on free loopback ports, and
talk to it over HTTP only.  Used by the system tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any

import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

import mozpool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mozpool.__file__)))


def free_port(kind: int = socket.SOCK_STREAM, count: int = 1) -> int:
    """A port on 127.0.0.1 that is free now (for ``count`` consecutive ports when asked)."""
    for _ in range(200):
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if count == 1 or port + count < 65000 and all(_free(port + i, kind) for i in range(1, count)):
            return port
    raise RuntimeError("no free port range")


def free_board_ports(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports below the ephemeral range, where the
    simulated boards (which give their port up between connections) are safe from outgoing
    connections taking it."""
    import random

    for _ in range(500):
        base = random.randrange(20000, 32000 - count)
        if all(_free(base + i, socket.SOCK_STREAM) for i in range(count)):
            return base
    raise RuntimeError("no free board ports")


def _free(port: int, kind: int) -> bool:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class _Output(protocol.ProcessProtocol):
    def __init__(self, path: str) -> None:
        self.log = open(path, "ab")
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.log.write(data)
        self.log.flush()

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.log.close()
        self.ended.callback(reason.value)


class _PooledClient:
    """treq's module functions' signature (``pool=``) over an HTTPClient with its own agent."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, url: str, pool: Any = None, **kw: Any) -> Any:
        return self.client.get(url, **kw)

    def request(self, method: str, url: str, pool: Any = None, **kw: Any) -> Any:
        return self.client.request(method, url, **kw)


class Daemon:
    """One imaging server: its own directory, HTTP and TFTP ports, relay-board ports."""

    def __init__(self, test: TestCase, fakes: int = 4, db: str | None = None, time_scale: float = 0.01,
                 fqdn: str | None = None, config: str = "", extra_args: tuple[str, ...] = (),
                 tls: tuple[str, str, str] | None = None, board_ports: bool = True) -> None:
        """``tls``: (key file, certificate file, CA file): the API listens with TLS, its name
        is ``https://127.0.0.1:PORT``, and it trusts that CA for other servers.  Without
        ``board_ports`` the daemon picks its simulated boards' ports itself."""
        self.fakes = fakes
        self.dir = os.path.abspath(test.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.tftp_port = free_port(socket.SOCK_DGRAM)
        self.relay_base = free_board_ports(max(1, (fakes + 31) // 32))
        self.fqdn = fqdn or (f"https://127.0.0.1:{self.port}" if tls else f"127.0.0.1:{self.port}")
        self.db = db or "sqlite:///" + os.path.join(self.dir, "mozpool.sqlite")
        self.config_path = os.path.join(self.dir, "mozpool.ini")
        with open(self.config_path, "w") as f:
            ports = f"relay_base_port = {self.relay_base}\n" if board_ports else ""
            f.write(f"[fakes]\n{ports}seed = 7\n{config}\n")
        self.args = [
            "--config", self.config_path, "--port", str(self.port), "--listen-host", "127.0.0.1",
            "--tftp-port", str(self.tftp_port), "--tftp-root", os.path.join(self.dir, "tftproot"),
            "--db", self.db, "--fqdn", self.fqdn, "--fakes", str(fakes), "--time-scale", str(time_scale),
            *extra_args,
        ]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http: Any = treq
        if tls:
            from treq.client import HTTPClient
            from twisted.web.client import Agent

            from mozpool.endpoints import tls_policy

            key, cert, ca = tls
            self.args += ["--endpoint", f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
            with open(self.config_path, "a") as f:
                f.write(f"[server]\nca_certs = {ca}\n")
            self.http = _PooledClient(HTTPClient(Agent(reactor, contextFactory=tls_policy(ca), pool=self.pool)))
        self.process: Any = None
        self.output: _Output | None = None
        #: sent as a bearer token with every call when set
        self.token: str | None = None
        test.addCleanup(self.stop)

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "twistd.log")

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    async def start(self, timeout: float = 30) -> None:
        self.output = _Output(self.log_path)
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("MOZPOOL_CONFIG", None)
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                "mozpool", *self.args]
        self.process = reactor.spawnProcess(self.output, sys.executable, argv, env=env, path=self.dir)
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            try:
                response = await self.http.get(self.url + "/api/version/", timeout=2, pool=self.pool)
                await response.content()
                if response.code == 200:
                    return
            except Exception:
                pass
            if self.output.ended.called:
                raise AssertionError("daemon exited:\n" + self.log_text()[-3000:])
            await task.deferLater(reactor, 0.2, lambda: None)
        raise AssertionError("daemon did not answer in time:\n" + self.log_text()[-3000:])

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.output is None or self.output.ended.called:
            return
        self.process.signalProcess(sig)
        ended = self.output.ended
        timer = reactor.callLater(20, lambda: self.output and not ended.called and self.process.signalProcess("KILL"))
        await ended
        if timer.active():
            timer.cancel()

    async def kill9(self) -> None:
        await self.stop(signal.SIGKILL)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        response = await self.http.request(method, self.url + path, data=data, timeout=20, allow_redirects=False,
                                           pool=self.pool, headers=headers)
        text = await response.content()
        try:
            return response.code, json.loads(text) if text else None
        except ValueError:
            return response.code, text

    async def get(self, path: str) -> Any:
        """The 200 answer's body.  A daemon answers HTTP before its schema exists and says 503
        "database not ready" meanwhile (by design): a read right after start waits that out."""
        deadline = reactor.seconds() + 30
        while True:
            code, body = await self.call("GET", path)
            not_ready = code == 503 and isinstance(body, dict) and str(body.get("error", "")).startswith(
                "database not ready")
            if not (not_ready and reactor.seconds() < deadline):
                break
            await task.deferLater(reactor, 0.2, lambda: None)
        assert code == 200, (path, code, body)
        return body

    async def wait_for(self, check: Any, timeout: float = 60, what: str = "condition") -> Any:
        """Poll ``check()`` (async, returning a truthy value when done) until it holds."""
        deadline = reactor.seconds() + timeout
        last: Any = None
        while reactor.seconds() < deadline:
            last = await check()
            if last:
                return last
            await task.deferLater(reactor, 0.25, lambda: None)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n" + self.log_text()[-3000:])

    async def device_states(self) -> dict[str, str]:
        devices = (await self.get("/api/device/list/?details"))["devices"]
        return {d["name"]: d["state"] for d in devices}

    async def wait_ready(self, names: list[str] | None = None, timeout: float = 90) -> None:
        async def ready() -> bool:
            code, body = await self.call("GET", "/api/device/list/?details")
            if code == 503:
                return False  # the schema is still being created
            assert code == 200, (code, body)
            states = {d["name"]: d["state"] for d in body["devices"]}
            mine = [d for d in body["devices"] if d["imaging_server"] == self.fqdn]
            if names is None and len(mine) < self.fakes:
                return False  # not seeded yet: an empty list is not a ready pool
            wanted = names or list(states)
            return all(states.get(n) == "ready" for n in wanted)

        await self.wait_for(ready, timeout, "devices ready")

    async def request(self, device: str = "any", **body: Any) -> tuple[int, Any]:
        body.setdefault("assignee", "system-test")
        body.setdefault("duration", 3600)
        body.setdefault("image", "android")
        return await self.call("POST", f"/api/device/{device}/request/", body)

    async def request_state(self, request_id: int) -> str:
        return (await self.get(f"/api/request/{request_id}/status/"))["state"]

    async def wait_request(self, request_id: int, states: tuple[str, ...] = ("ready",), timeout: float = 60) -> str:
        async def done() -> str | None:
            code, body = await self.call("GET", f"/api/request/{request_id}/status/")
            if code == 503:
                return None  # the database is away (or just back): ask again
            assert code == 200, (request_id, code, body)
            state = body["state"]
            final = state in ("ready", "closed") or state.startswith("failed_")
            return state if (state in states or final) else None

        return await self.wait_for(done, timeout, f"request {request_id} to reach {states}")
