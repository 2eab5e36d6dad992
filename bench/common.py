"""Shared helpers for the daemon benchmarks (bench/api.py, bench/pool.py, bench/demo.py).

These are benchmark drivers, not daemon code: they block, use subprocess and threads freely, and
talk to the daemon over loopback HTTP from a process of their own (never from inside it).

Also runnable as the "ceiling" server of bench/api.py:

    python bench/common.py ceiling --port P --body /path=FILE [--body ...] [--default FILE]

a bare twisted.web Site answering GET with fixed bytes (a path's own body, or the default body
for any other path) -- what the stack costs with no routing, database or JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable, Iterator, Sequence

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


def _preexec() -> None:
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
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_preexec)
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


# --------------------------------------------------------------------------- MariaDB


class MariaDB:
    """A private mariadbd (tests/support/mariadb.py) for one benchmark run."""

    def __init__(self) -> None:
        from tests.support.mariadb import PrivateMariaDB, mariadbUnavailableReason

        reason = mariadbUnavailableReason()
        if reason:
            raise RuntimeError(reason)
        self.server = PrivateMariaDB()
        self.server.start()
        self._n = 0

    def database(self, prefix: str = "mozpool_bench") -> str:
        self._n += 1
        name = f"{prefix}_{os.getpid()}_{self._n}"
        self.server.dropDatabase(name)
        return self.server.createDatabase(name)

    def pid(self) -> int | None:
        p = getattr(self.server, "_process", None)
        return p.pid if p is not None else None

    def close(self) -> None:
        self.server.close()


class Backends:
    """The back-ends a benchmark runs on, each with a fresh database: SQLite in ``workdir``, and a
    private MariaDB started on first use (skipped with a message when it cannot start)."""

    def __init__(self, names: str, workdir: str) -> None:
        self.names = names.split(",")
        self.workdir = workdir
        self.mariadb: MariaDB | None = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for backend in self.names:
            if backend == "sqlite":
                yield backend, "sqlite:///" + os.path.join(self.workdir, "mozpool.sqlite")
                continue
            try:
                self.mariadb = self.mariadb or MariaDB()
            except Exception as e:
                say(f"[mariadb] skipped: {e}")
                continue
            yield backend, self.mariadb.database()

    def close(self) -> None:
        if self.mariadb is not None:
            self.mariadb.close()


def report_log_problems(r: dict[str, Any]) -> None:
    """The daemon-log findings every benchmark prints after its table."""
    if r["tick_skips"]:
        say(f"    'timeout tick still running; skipping one' logged {r['tick_skips']} times")
    if r["problems"]:
        say("    log problems:")
        for line in r["problems"]:
            say("      " + line)


def finish(workdir: str, keep: bool) -> None:
    if keep:
        say(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def sql(db_url: str, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
    """Run statements (``?`` placeholders) against the database directly, in one transaction."""
    from urllib.parse import unquote, urlsplit

    if db_url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(unquote(db_url[len("sqlite:///"):]), timeout=30)
        try:
            for stmt, params in statements:
                conn.execute(stmt, tuple(params))
            conn.commit()
        finally:
            conn.close()
        return
    import pymysql

    p = urlsplit(db_url)
    conn = pymysql.connect(host=p.hostname, port=p.port or 3306, user=unquote(p.username or ""),
                           password=unquote(p.password or ""), database=p.path.lstrip("/"), charset="utf8mb4",
                           autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            for stmt, params in statements:
                cur.execute(stmt.replace("?", "%s"), tuple(params))
        conn.commit()
    finally:
        conn.close()


def sql_query(db_url: str, stmt: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Rows of one query (``?`` placeholders), read directly from the database."""
    from urllib.parse import unquote, urlsplit

    if db_url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(unquote(db_url[len("sqlite:///"):]), timeout=30)
        try:
            return conn.execute(stmt, tuple(params)).fetchall()
        finally:
            conn.close()
    import pymysql

    p = urlsplit(db_url)
    conn = pymysql.connect(host=p.hostname, port=p.port or 3306, user=unquote(p.username or ""),
                           password=unquote(p.password or ""), database=p.path.lstrip("/"), charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            cur.execute(stmt.replace("?", "%s"), tuple(params))
            return list(cur.fetchall())
    finally:
        conn.close()


def utc_text(offset: float = 0.0) -> str:
    """The database's time text (UTC, whole seconds) for now + offset."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(time.time() + offset)))


def sql_executemany(db_url: str, stmt: str, rows: Sequence[Sequence[Any]]) -> None:
    from urllib.parse import unquote, urlsplit

    if db_url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(unquote(db_url[len("sqlite:///"):]), timeout=30)
        try:
            conn.executemany(stmt, [tuple(r) for r in rows])
            conn.commit()
        finally:
            conn.close()
        return
    import pymysql

    p = urlsplit(db_url)
    conn = pymysql.connect(host=p.hostname, port=p.port or 3306, user=unquote(p.username or ""),
                           password=unquote(p.password or ""), database=p.path.lstrip("/"), charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            cur.executemany(stmt.replace("?", "%s"), [tuple(r) for r in rows])
        conn.commit()
    finally:
        conn.close()


def load_fixture(db_url: str, fqdn: str, devices: int, relay_base_port: int | None = None) -> None:
    """Schema + N fixture devices owned by ``fqdn``.  With no relay base port, through the
    ``mozpool-db`` command as an operator would; with one, through the same fixture code
    (the command has no option for the relay ports)."""
    mozpool_db(db_url, "create-schema")
    if relay_base_port is None:
        mozpool_db(db_url, "load-fixture", "--devices", str(devices), fqdn=fqdn)
        return
    # task.react exits the process; run it in a child instead.
    code = (
        "import sys; sys.path.insert(0, %r); from bench.common import _load_child; _load_child(%r, %r, %d, %d)"
        % (ROOT, db_url, fqdn, devices, relay_base_port)
    )
    out = subprocess.run([python(), "-c", code], env=child_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    if out.returncode:
        raise RuntimeError(f"loading the fixture failed: {out.stderr[-2000:]}")


def _load_child(db_url: str, fqdn: str, devices: int, relay_base_port: int) -> None:
    from twisted.internet import defer, task

    from mozpool.db import fixtures
    from mozpool.db.pool import Database
    from mozpool.timeutil import dbnow

    async def go(reactor: Any) -> None:
        db = Database.fromURL(db_url, reactor, timeout=300)
        try:
            await fixtures.load_fixture(db, fqdn, devices, dbnow(reactor), relay_base_port=relay_base_port)
        finally:
            db.close()

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


# --------------------------------------------------------------------------- wrk


_WRK_DONE = r"""
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors_connect": %d, "errors_read": %d,' ..
    ' "errors_write": %d, "errors_status": %d, "errors_timeout": %d,' ..
    ' "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""

_WRK_ROTATE = r"""
local n = %(n)d
local i = 0
request = function()
  i = i %% n + 1
  return wrk.format("GET", string.format(%(fmt)r, i))
end
"""


def wrk(url: str, *, seconds: float, connections: int, threads: int = 1, rotate: tuple[str, int] | None = None,
        workdir: str | None = None, timeout: float = 10) -> dict[str, float]:
    """Run wrk against ``url``; ``rotate=(lua_format, n)`` cycles the path through n values
    (e.g. ``("/api/device/panda-%04d/state/?cache=1", 10000)``).  Returns rps and latencies (ms)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: apt-get install -y wrk")
    script = _WRK_DONE
    if rotate is not None:
        fmt, n = rotate
        script = (_WRK_ROTATE % {"n": n, "fmt": fmt}).replace("'", '"') + script
    fd, path = tempfile.mkstemp(suffix=".lua", dir=workdir)
    with os.fdopen(fd, "w") as f:
        f.write(script)
    try:
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, int(round(seconds)))}s",
                f"--timeout={int(timeout)}s", "-s", path, url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout + 60)
    finally:
        os.unlink(path)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    d = json.loads(line[len("WRKJSON "):])
    secs = d["duration_us"] / 1e6
    errors = sum(d[k] for k in d if k.startswith("errors_"))
    return {
        "requests": d["requests"], "rps": d["requests"] / secs if secs else 0.0,
        "p50": d["p50_us"] / 1000, "p90": d["p90_us"] / 1000, "p99": d["p99_us"] / 1000,
        "max": d["max_us"] / 1000, "mean": d["mean_us"] / 1000, "errors": errors,
        "non2xx": d["errors_status"],
    }


# --------------------------------------------------------------------------- the ceiling server


class Ceiling:
    """bench/common.py ceiling as a child process."""

    def __init__(self, workdir: str, bodies: dict[str, bytes], default: bytes) -> None:
        self.port = free_port()
        self.log_path = os.path.join(workdir, "ceiling.log")
        argv = [python(), os.path.abspath(__file__), "ceiling", "--port", str(self.port)]
        for i, (path, body) in enumerate(bodies.items()):
            f = os.path.join(workdir, f"ceiling-body-{i}")
            with open(f, "wb") as out:
                out.write(body)
            argv += ["--body", f"{path}={f}"]
        f = os.path.join(workdir, "ceiling-default")
        with open(f, "wb") as out:
            out.write(default)
        argv += ["--default", f]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=child_env(), stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_preexec)
        wait_http(self.port, "/", proc=self.proc, log_path=self.log_path, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _serve_ceiling(argv: list[str]) -> None:
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--body", action="append", default=[])
    p.add_argument("--default", required=True)
    a = p.parse_args(argv)
    bodies = {}
    for spec in a.body:
        path, _, file = spec.partition("=")
        with open(file, "rb") as f:
            bodies[path.encode()] = f.read()
    with open(a.default, "rb") as f:
        default = f.read()

    class Fixed(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            return bodies.get(request.path, default)

    site = Site(Fixed())
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log: the bare stack
    reactor.listenTCP(a.port, site, interface="127.0.0.1")
    reactor.run()


# --------------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join([line, sep, *body])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _numeric(v: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+[a-z%x]*", v))


def say(*args: Any) -> None:
    print(*args, flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "ceiling":
        _serve_ceiling(sys.argv[2:])
    else:
        print(__doc__)
