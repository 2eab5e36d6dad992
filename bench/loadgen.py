"""Load generators and the reference server: ``wrk`` with a JSON summary, and the "ceiling" server of
bench/api.py, also runnable by itself:

    python bench/loadgen.py ceiling --port P --body /path=FILE [--body ...] [--default FILE]

a bare twisted.web Site answering GET with fixed bytes (a path's own body, or the default body
for any other path) -- what the stack costs with no routing, database or JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.daemons import child_env, child_preexec, free_port, python, wait_http  # noqa: E402


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
    """bench/loadgen.py ceiling as a child process."""

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
                                     preexec_fn=child_preexec)
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


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "ceiling":
        _serve_ceiling(sys.argv[2:])
    else:
        print(__doc__)
