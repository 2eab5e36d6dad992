"""Benchmark: the read API of a daemon holding 10,000 devices, on SQLite and MariaDB, beside the
ceiling of the stack (a bare twisted.web resource returning the same bytes).

    PYTHONPATH=. python bench/api.py            # 10,000 devices, 10 s per measurement
    PYTHONPATH=. python bench/api.py --quick    # 2,000 devices, 3 s per measurement
    PYTHONPATH=. python bench/api.py --profile sqlite   # also a cProfile of the daemon under load

The daemon is a real ``twistd -n mozpool`` process (no --fakes): the schema and devices come from
``mozpool-db create-schema`` / ``load-fixture``.  The fixture's devices are then set to ``ready``
with no timer, so LifeGuard stays idle and what is measured is the API alone (10,000 devices in
``new`` would all start a self-test against relay boards that do not exist).  Load comes from
``wrk`` in its own process; for the state endpoint it rotates over every device name.

Targets: ``state/?cache=1`` at >= 0.5 of the ceiling's requests/s; ``list/?details=1`` of 10,000
devices under 250 ms p99 (one connection: latency, not queueing).
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

from bench.daemons import Daemon, free_port, get_json, http_call  # noqa: E402
from bench.databases import Backends, load_fixture, sql  # noqa: E402
from bench.loadgen import Ceiling, wrk  # noqa: E402
from bench.report import finish, say, table  # noqa: E402

STATE_PATH = "/api/device/panda-%04d/state/?cache=1"
UNCACHED_PATH = "/api/device/panda-%04d/state/"
LIST_PATH = "/api/device/list/?details=1"

STATE_CONNECTIONS = 16
LIST_CONNECTIONS = 1


def measure_daemon(backend: str, db_url: str, workdir: str, options: argparse.Namespace) -> dict[str, Any]:
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
    try:
        # Capture the bodies the ceiling will serve, and check the daemon's answers.
        code, list_body = http_call(port, "GET", LIST_PATH)
        assert code == 200, (code, list_body[:200])
        listed = get_json(port, LIST_PATH)["devices"]
        assert len(listed) == n, f"listed {len(listed)} devices, loaded {n}"
        code, state_body = http_call(port, "GET", STATE_PATH % 1)
        assert code == 200 and b"ready" in state_body, (code, state_body)
        result["list_bytes"] = len(list_body)
        result["state_body"] = state_body
        result["list_body"] = list_body
        url = f"http://127.0.0.1:{port}"
        secs = options.seconds
        wrk(url + STATE_PATH % 1, seconds=1, connections=STATE_CONNECTIONS, rotate=(STATE_PATH, n))  # warm-up
        result["state"] = wrk(url + STATE_PATH % 1, seconds=secs, connections=STATE_CONNECTIONS,
                              rotate=(STATE_PATH, n))
        result["uncached"] = wrk(url + UNCACHED_PATH % 1, seconds=secs, connections=STATE_CONNECTIONS,
                                 rotate=(UNCACHED_PATH, n))
        result["list"] = wrk(url + LIST_PATH, seconds=secs, connections=LIST_CONNECTIONS)
        result["list4"] = wrk(url + LIST_PATH, seconds=secs, connections=4)
        metrics_code, _ = http_call(port, "GET", "/metrics")
        result["metrics_code"] = metrics_code
    finally:
        daemon.stop()
    result["problems"] = daemon.log_problems()
    if prof and os.path.exists(prof):
        result["profile"] = prof
    return result


def measure_ceiling(workdir: str, list_body: bytes, state_body: bytes, options: argparse.Namespace) -> dict[str, Any]:
    ceiling = Ceiling(workdir, {"/api/device/list/": list_body}, state_body)
    try:
        url = f"http://127.0.0.1:{ceiling.port}"
        n = options.devices
        secs = options.seconds
        wrk(url + STATE_PATH % 1, seconds=1, connections=STATE_CONNECTIONS, rotate=(STATE_PATH, n))
        return {
            "state": wrk(url + STATE_PATH % 1, seconds=secs, connections=STATE_CONNECTIONS, rotate=(STATE_PATH, n)),
            "list": wrk(url + LIST_PATH, seconds=secs, connections=LIST_CONNECTIONS),
            "list4": wrk(url + LIST_PATH, seconds=secs, connections=4),
        }
    finally:
        ceiling.stop()


def print_profile(path: str, limit: int = 25) -> None:
    say(f"\ncProfile of the daemon ({path}), top {limit} by cumulative time:")
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(limit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 devices, 3 s per measurement")
    p.add_argument("--devices", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--backends", default="sqlite,mariadb")
    p.add_argument("--profile", choices=("sqlite", "mariadb"), help="run that back-end's daemon under cProfile")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    options = p.parse_args(argv)
    options.devices = options.devices or (2000 if options.quick else 10000)
    options.seconds = options.seconds or (3.0 if options.quick else 10.0)

    workdir = tempfile.mkdtemp(prefix="mozpool-bench-api-")
    results: dict[str, dict[str, Any]] = {}
    backends = Backends(options.backends, workdir)
    try:
        for backend, url in backends:
            say(f"[{backend}] loading {options.devices} devices and starting the daemon ...")
            results[backend] = measure_daemon(backend, url, os.path.join(workdir, backend), options)
            r = results[backend]
            say(f"[{backend}] fixture {r['load_s']:.1f} s, daemon answering after {r['startup_s']:.1f} s, "
                f"list body {r['list_bytes']:,} bytes")
        if not results:
            say("no back-end measured")
            return 1
        first = next(iter(results.values()))
        say("[ceiling] bare twisted.web resource serving the captured bodies ...")
        ceiling = measure_ceiling(workdir, first["list_body"], first["state_body"], options)
    finally:
        backends.close()

    rows = []
    for name, r in [*results.items(), ("ceiling", ceiling)]:
        for key, label, conns in (("state", "state/?cache=1", STATE_CONNECTIONS), ("uncached", "state/ (no cache)",
                                  STATE_CONNECTIONS), ("list", "list/?details=1", LIST_CONNECTIONS),
                                  ("list4", "list/?details=1", 4)):
            if key not in r:
                continue
            m = r[key]
            ceil = ceiling.get(key)
            ratio = f"{m['rps'] / ceil['rps']:.2f}" if ceil and name != "ceiling" else ""
            rows.append([name, label, conns, m["requests"], m["rps"], m["p50"], m["p99"], m["max"], m["errors"], ratio])
    say(f"\n{options.devices:,} devices, {options.seconds:g} s per measurement, wrk (1 thread) on 127.0.0.1, "
        f"{os.cpu_count()} CPUs")
    say(table(["server", "endpoint", "conns", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "errors",
               "x ceiling"], rows))

    say("\nTargets:")
    ok_all = True
    for name, r in results.items():
        ratio = r["state"]["rps"] / ceiling["state"]["rps"]
        p99 = r["list"]["p99"]
        ok1, ok2 = ratio >= 0.5, p99 < 250
        ok_all &= ok1 and ok2
        say(f"  {name:8s} state/?cache=1 at {ratio:.2f} of the ceiling (target >= 0.5): {'met' if ok1 else 'MISSED'}; "
            f"list/?details=1 p99 {p99:.0f} ms (target < 250 ms): {'met' if ok2 else 'MISSED'}")
    for name, r in results.items():
        errs = sum(r[k]["errors"] for k in ("state", "uncached", "list", "list4"))
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
