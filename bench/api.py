"""Benchmark: the read API of a daemon holding 10,000 devices, on SQLite and MariaDB, beside the
ceiling of the stack (a bare twisted.web resource returning the same bytes), measured in the same
run and interleaved round by round, so load from elsewhere on the machine falls on both alike.

    PYTHONPATH=. python bench/api.py            # 10,000 devices, 3 rounds of 5 s per measurement
    PYTHONPATH=. python bench/api.py --quick    # 2,000 devices, 2 rounds of 3 s
    PYTHONPATH=. python bench/api.py --profile sqlite   # also a cProfile of the daemon under load

The daemon is a real ``twistd -n mozpool`` process (no --fakes): the schema and devices come from
``mozpool-db create-schema`` / ``load-fixture``.  The fixture's devices are then set to ``ready``
with no timer, so LifeGuard stays idle and what is measured is the API alone (10,000 devices in
``new`` would all start a self-test against relay boards that do not exist).  Load comes from
``wrk`` in its own process; for the state endpoint it rotates over every device name.  Each
figure is the median of the rounds.  Beside req/s, the server process's CPU per request is
shown (and its ratio, the ceiling's over ours): on a machine others are loading, it moves less.

Targets (issue 17): ``state/?cache=1`` at >= 0.8 of the ceiling's requests/s; ``list/?details=1``
of 10,000 devices at >= 0.5 of the ceiling serving the same bytes, p99 under 20 ms (one
connection: latency, not queueing).
"""

from __future__ import annotations

import argparse
import os
import pstats
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.daemons import Daemon, cpu_seconds, free_port, get_json, http_call, rss_mb  # noqa: E402
from bench.databases import Backends, load_fixture, sql  # noqa: E402
from bench.loadgen import Ceiling, wrk  # noqa: E402
from bench.report import finish, say, table  # noqa: E402

STATE_PATH = "/api/device/panda-%04d/state/?cache=1"
UNCACHED_PATH = "/api/device/panda-%04d/state/"
LIST_PATH = "/api/device/list/?details=1"

STATE_CONNECTIONS = 16
LIST_CONNECTIONS = 1


#: (key, label, path template, connections, rotate over the devices) of each measurement
MEASURES = (
    ("state", "state/?cache=1", STATE_PATH, STATE_CONNECTIONS, True),
    ("uncached", "state/ (no cache)", UNCACHED_PATH, STATE_CONNECTIONS, True),
    ("list", "list/?details=1", LIST_PATH, LIST_CONNECTIONS, False),
    ("list4", "list/?details=1", LIST_PATH, 4, False),
)


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds (errors summed)."""
    out: dict[str, float] = {}
    for key in runs[0]:
        values = sorted(r[key] for r in runs)
        out[key] = sum(values) if key in ("errors", "non2xx", "requests") else values[len(values) // 2]
    return out


def _wrk(url: str, pid: int, path: str, conns: int, rotate: bool, options: argparse.Namespace) -> dict[str, float]:
    """One wrk run, with the server process's CPU per request (less sensitive than req/s to
    load from elsewhere on the machine)."""
    n = options.devices
    before = cpu_seconds(pid)
    if rotate:
        found = wrk(url + path % 1, seconds=options.seconds, connections=conns, rotate=(path, n))
    else:
        found = wrk(url + path, seconds=options.seconds, connections=conns)
    found["cpu_us"] = 1e6 * (cpu_seconds(pid) - before) / max(found["requests"], 1)
    return found


def measure(backend: str, db_url: str, workdir: str, options: argparse.Namespace) -> dict[str, Any]:
    """The daemon on ``db_url`` and a ceiling serving its bodies, measured in turns."""
    n = options.devices
    port = free_port()
    fqdn = f"127.0.0.1:{port}"
    t = time.monotonic()
    load_fixture(db_url, fqdn, n)
    sql(db_url, [("UPDATE devices SET state = 'ready', state_timeout = NULL", ())])
    load_s = time.monotonic() - t
    twistd_args: list[str] = []
    prof = None
    if options.profile == backend:
        prof = os.path.join(workdir, "daemon.pstats")
        twistd_args = [f"--profile={prof}", "--profiler=cprofile", "--savestats"]
    daemon = Daemon(os.path.join(workdir, "daemon"), db_url, port=port, twistd_args=twistd_args)
    up = daemon.start()
    result: dict[str, Any] = {"load_s": load_s, "startup_s": up}
    ceiling = None
    try:
        # Capture the bodies the ceiling will serve, and check the daemon's answers.
        code, list_body = http_call(port, "GET", LIST_PATH)
        assert code == 200, (code, list_body[:200])
        listed = get_json(port, LIST_PATH)["devices"]
        assert len(listed) == n, f"listed {len(listed)} devices, loaded {n}"
        code, state_body = http_call(port, "GET", STATE_PATH % 1)
        assert code == 200 and b"ready" in state_body, (code, state_body)
        result["list_bytes"] = len(list_body)
        ceiling = Ceiling(workdir, {"/api/device/list/": list_body}, state_body)
        urls = {"daemon": f"http://127.0.0.1:{port}", "ceiling": f"http://127.0.0.1:{ceiling.port}"}
        pids = {"daemon": daemon.pid, "ceiling": ceiling.proc.pid}
        for url in urls.values():
            wrk(url + STATE_PATH % 1, seconds=1, connections=STATE_CONNECTIONS, rotate=(STATE_PATH, n))  # warm-up
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(options.rounds):
            for key, _label, path, conns, rotate in MEASURES:
                for who, url in urls.items():
                    if who == "ceiling" and key == "uncached":
                        continue  # the same bytes as the cached state
                    runs.setdefault((who, key), []).append(_wrk(url, pids[who], path, conns, rotate, options))
        result["daemon"] = {key: _median(r) for (who, key), r in runs.items() if who == "daemon"}
        result["ceiling"] = {key: _median(r) for (who, key), r in runs.items() if who == "ceiling"}
        metrics_code, _ = http_call(port, "GET", "/metrics")
        result["metrics_code"] = metrics_code
        result["rss_mb"] = rss_mb(daemon.pid)
    finally:
        if ceiling is not None:
            ceiling.stop()
        daemon.stop()
    result["problems"] = daemon.log_problems()
    if prof and os.path.exists(prof):
        result["profile"] = prof
    return result


def print_profile(path: str, limit: int = 25) -> None:
    say(f"\ncProfile of the daemon ({path}), top {limit} by cumulative time:")
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(limit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 devices, 2 rounds of 3 s")
    p.add_argument("--devices", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--rounds", type=int)
    p.add_argument("--backends", default="sqlite,mariadb")
    p.add_argument("--profile", choices=("sqlite", "mariadb"), help="run that back-end's daemon under cProfile")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    options = p.parse_args(argv)
    options.devices = options.devices or (2000 if options.quick else 10000)
    options.seconds = options.seconds or (3.0 if options.quick else 5.0)
    options.rounds = options.rounds or (2 if options.quick else 3)

    workdir = tempfile.mkdtemp(prefix="mozpool-bench-api-")
    results: dict[str, dict[str, Any]] = {}
    backends = Backends(options.backends, workdir)
    try:
        for backend, url in backends:
            say(f"[{backend}] loading {options.devices} devices, starting the daemon and its ceiling ...")
            bdir = os.path.join(workdir, backend)
            os.makedirs(bdir, exist_ok=True)
            results[backend] = measure(backend, url, bdir, options)
            r = results[backend]
            say(f"[{backend}] fixture {r['load_s']:.1f} s, daemon answering after {r['startup_s']:.1f} s, "
                f"list body {r['list_bytes']:,} bytes, daemon RSS {r['rss_mb']:.0f} MB")
        if not results:
            say("no back-end measured")
            return 1
    finally:
        backends.close()

    rows = []
    for name, r in results.items():
        for key, label, _path, conns, _rotate in MEASURES:
            for who in ("daemon", "ceiling"):
                m = r[who].get(key)
                if m is None:
                    continue
                ceil = r["ceiling"].get(key if key != "uncached" else "state")
                ratio = f"{m['rps'] / ceil['rps']:.2f}" if who == "daemon" and ceil else ""
                cpu_ratio = f"{ceil['cpu_us'] / m['cpu_us']:.2f}" if who == "daemon" and ceil else ""
                rows.append([f"{name} {who}", label, conns, m["requests"], m["rps"], m["p50"], m["p99"], m["max"],
                             m["errors"], f"{m['cpu_us']:.0f}", ratio, cpu_ratio])
    say(f"\n{options.devices:,} devices, median of {options.rounds} rounds of {options.seconds:g} s, wrk (1 thread) "
        f"on 127.0.0.1, {os.cpu_count()} CPUs; each ceiling serves its daemon's bytes")
    say(table(["server", "endpoint", "conns", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "errors",
               "CPU us/req", "x ceiling", "x ceiling (CPU)"], rows))

    say("\nTargets:")
    ok_all = True
    for name, r in results.items():
        d, c = r["daemon"], r["ceiling"]
        state = d["state"]["rps"] / c["state"]["rps"]
        listed = d["list"]["rps"] / c["list"]["rps"]
        p99 = d["list"]["p99"]
        ok1, ok2, ok3 = state >= 0.8, listed >= 0.5, p99 < 20
        ok_all &= ok1 and ok2 and ok3
        say(f"  {name:8s} state/?cache=1 at {state:.2f} of the ceiling (target >= 0.8): {'met' if ok1 else 'MISSED'}; "
            f"list/?details=1 at {listed:.2f} (target >= 0.5): {'met' if ok2 else 'MISSED'}, "
            f"p99 {p99:.1f} ms (target < 20 ms): {'met' if ok3 else 'MISSED'}")
    for name, r in results.items():
        errs = sum(m["errors"] for m in r["daemon"].values())
        if errs or r["problems"]:
            say(f"  {name}: {errs} HTTP errors; log problems:")
            for line in r["problems"]:
                say("    " + line)
        if "profile" in r:
            print_profile(r["profile"])
    finish(workdir, options.keep)
    if not ok_all:
        say("(a missed target is reported, not an error: exit status 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
