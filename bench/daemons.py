"""Running the daemon under test: free loopback ports, blocking HTTP to it, ``twistd -n mozpool``
as a child process with its own directory and log, ``mozpool-db``, and reading a process's CPU.

These are benchmark drivers, not daemon code: they block, use subprocess freely, and talk to the
daemon over loopback HTTP from a process of their own (never from inside it). Nothing here
imports ``tests/``: the few helpers the tests have too (a free port) are written again here.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one (10,000 simulated SUT agents listen)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port(kind: int = socket.SOCK_STREAM, count: int = 1) -> int:
    """A port on 127.0.0.1 free now (the first of ``count`` consecutive free ports)."""
    for _ in range(500):
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if count == 1:
            return port
        if port + count < 60000 and all(_free(port + i, kind) for i in range(1, count)):
            return port
    raise RuntimeError("no free port range")


def free_port_range(count: int, start: int = 20000, stop: int = 32000) -> int:
    """The first of ``count`` consecutive free TCP ports below the kernel's ephemeral range.

    Simulated relay boards stop listening while a client is connected and listen again after
    it leaves; a port from the ephemeral range can be taken in between by any outgoing
    connection or port-0 listener (the simulated SUT agents), and the board is then gone."""
    port = start
    while port + count < stop:
        bad = next((i for i in range(count) if not _free(port + i, socket.SOCK_STREAM)), None)
        if bad is None:
            return port
        port += bad + 1
    raise RuntimeError(f"no {count} free consecutive ports in {start}..{stop}")


def _free(port: int, kind: int) -> bool:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# --------------------------------------------------------------------------- HTTP (blocking)


def http_call(port: int, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def get_json(port: int, path: str, timeout: float = 60) -> Any:
    code, body = http_call(port, "GET", path, timeout=timeout)
    if code != 200:
        raise RuntimeError(f"GET {path} -> {code}: {body[:300]!r}")
    return json.loads(body)


def wait_http(port: int, path: str = "/api/version/", timeout: float = 120, proc: subprocess.Popen | None = None,
              log_path: str | None = None) -> float:
    """Poll until ``path`` answers 200; returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}):\n{tail(log_path)}")
        try:
            code, _ = http_call(port, "GET", path, timeout=5)
            if code == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no answer on port {port} within {timeout} s:\n{tail(log_path)}")


def tail(path: str | None, limit: int = 3000) -> str:
    if not path or not os.path.exists(path):
        return "(no log)"
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")[-limit:]


# --------------------------------------------------------------------------- processes


def python() -> str:
    return sys.executable


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("MOZPOOL_CONFIG", None)
    return env


def child_preexec() -> None:
    """In a benchmark's child, before exec: the open-file limit raised, and a session of its own."""
    raise_fd_limit()
    os.setsid()


def mozpool_db(db_url: str, *args: str, fqdn: str | None = None) -> str:
    """Run the ``mozpool-db`` console script (python -m mozpool.cli.db); its stdout."""
    argv = [python(), "-m", "mozpool.cli.db", "--db", db_url]
    if fqdn:
        argv += ["--fqdn", fqdn]
    out = subprocess.run(argv + list(args), env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"mozpool-db {' '.join(args)} failed: {out.stderr[-2000:]}")
    return out.stdout.strip()


class Daemon:
    """``twistd -n mozpool`` as a child process on loopback, with its own directory and log."""

    def __init__(self, workdir: str, db_url: str, *, port: int | None = None, fakes: int = 0,
                 time_scale: float | None = None, tftp: bool = False, relay_base: int | None = None,
                 twistd_args: Sequence[str] = (), extra_args: Sequence[str] = (), seed: int = 7) -> None:
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port = port or free_port()
        self.fqdn = f"127.0.0.1:{self.port}"
        self.db_url = db_url
        self.log_path = os.path.join(workdir, "twistd.log")
        args = ["--port", str(self.port), "--listen-host", "127.0.0.1", "--db", db_url, "--fqdn", self.fqdn]
        if fakes:
            self.tftp_port = free_port(socket.SOCK_DGRAM)
            config = os.path.join(workdir, "mozpool.ini")
            with open(config, "w") as f:
                f.write(f"[fakes]\nseed = {seed}\n")
                if relay_base:
                    f.write(f"relay_base_port = {relay_base}\n")
            args = ["--config", config, *args, "--fakes", str(fakes), "--tftp-port", str(self.tftp_port),
                    "--tftp-root", os.path.join(workdir, "tftproot")]
        else:
            args += ["--tftp-port", "0"]
        if time_scale is not None:
            args += ["--time-scale", repr(time_scale)]
        self.argv = [python(), "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                     *twistd_args, "mozpool", *args, *extra_args]
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self, timeout: float = 300) -> float:
        """Spawn and wait for /api/version/; returns seconds from spawn to the first answer."""
        self._log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv, cwd=self.dir, env=child_env(), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=child_preexec)
        return wait_http(self.port, timeout=timeout, proc=self.proc, log_path=self.log_path)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self._log.close()

    def log_text(self) -> str:
        return tail(self.log_path, 10**9)

    def log_problems(self, limit: int = 12) -> list[str]:
        """Lines of the log at error/critical level or with a traceback, for the report."""
        found = []
        for line in self.log_text().splitlines():
            if re.search(r"\b(ERROR|CRITICAL|Traceback|Unhandled|bug answering)\b", line) or \
                    re.search(r"#(error|critical)\]", line):
                found.append(line[:300])
        return found[-limit:] if limit else found

    def count(self, needle: str) -> int:
        return self.log_text().count(needle)


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of ``pid`` (its threads included) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int, peak: bool = False) -> float:
    """Resident memory of ``pid`` in MB (10^6 bytes) from /proc/<pid>/status: VmRSS now, or
    VmHWM (the peak so far) with ``peak``."""
    field = "VmHWM:" if peak else "VmRSS:"
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {field} for process {pid}")
