"""Benchmark: three imaging servers on a 3-node MariaDB Galera cluster (each daemon on its own
node) against the same three on one plain MariaDB server -- each daemon's CPU in steady state,
and the time to allocate 1,000 simultaneous ``any`` requests spread over the three.

    PYTHONPATH=. python bench/scale.py            # 2,000 devices, 60 s window, 1,000 requests
    PYTHONPATH=. python bench/scale.py --quick    # 600 devices, 20 s window, 300 requests

Set-up, per back-end: a fresh database; the schema, then each daemon's share of the devices
(fixture rows owned by its fqdn, on simulated relay boards at free ports) loaded through that
daemon's own node; every device put in ``ready`` with the ``android`` image, its deadline spread
evenly over the next 600 s, so each ``ready`` timeout runs the real health check (a SUT verify
against the simulated agent over TCP) at the spec's rate.  The daemons run with ``--fakes N`` at
time scale 1.

Steady state: each daemon process's user+system CPU from /proc/<pid>/stat over the window
(adbapi's threads included); the database servers' CPU (all three nodes together) apart.

Allocation: the requests POSTed at once from this process (asyncio, one connection each),
spread evenly over the three daemons, then ``/api/request/list/`` polled on one daemon (on
Galera: another node than two thirds of the writers) until every request has a device; the
devices must be distinct.

Both back-ends are the test suite's private servers (labservers/mariadb.py, and the same
server with wsrep on in labservers/galera.py): identical mariadbd options, so the figures
compare Galera itself.

Target: Galera within 1.5x of the single server, for CPU and for allocation time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.daemons import (  # noqa: E402
    ROOT, Daemon, child_env, cpu_seconds, free_port_range, get_json, mozpool_db, python, raise_fd_limit,
)
from bench.databases import sql_query, utc_text  # noqa: E402
from bench.pool import READY_TIMEOUT, _post, seed_ready  # noqa: E402
from bench.report import finish, say, table  # noqa: E402

DEVICES_PER_BOARD = 32
SERVERS = 3
TARGET = 1.5


# --------------------------------------------------------------------------- set-up


def load_share(db_url: str, fqdn: str, devices: int, prefix: str, relay_base_port: int) -> None:
    """``devices`` fixture rows owned by ``fqdn`` through ``db_url`` (a child process: the
    fixture code is asynchronous and task.react ends its process)."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from twisted.internet import defer, task\n"
        "from mozpool.db import fixtures\n"
        "from mozpool.db.pool import Database\n"
        "from mozpool.timeutil import dbnow\n"
        "async def go(reactor):\n"
        "    db = Database.fromURL(%r, reactor, timeout=300)\n"
        "    try:\n"
        "        await fixtures.load_fixture(db, %r, %d, dbnow(reactor), prefix=%r, relay_base_port=%d)\n"
        "    finally:\n"
        "        db.close()\n"
        "task.react(lambda reactor: defer.ensureDeferred(go(reactor)))\n"
    ) % (ROOT, db_url, fqdn, devices, prefix, relay_base_port)
    out = subprocess.run([python(), "-c", code], env=child_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    if out.returncode:
        raise RuntimeError(f"loading {fqdn}'s devices failed: {out.stderr[-2000:]}")


# --------------------------------------------------------------------------- allocation


async def _fire(ports: list[int], count: int, timeout: float) -> list[Any]:
    body = json.dumps({"assignee": "bench", "duration": 3600, "image": "android", "environment": "any"}).encode()

    async def one(i: int) -> Any:
        try:
            return await _post(ports[i % len(ports)], "/api/device/any/request/", body, timeout)
        except Exception as e:
            return e

    return await asyncio.gather(*(one(i) for i in range(count)))


def allocate(daemons: list[Daemon], count: int, timeout: float) -> dict[str, Any]:
    start = time.monotonic()
    results = asyncio.run(_fire([d.port for d in daemons], count, timeout))
    posted = time.monotonic() - start
    ids, codes, latencies, errors = [], {}, [], []
    for r in results:
        if isinstance(r, Exception):
            errors.append(repr(r))
            continue
        code, payload, _, total = r
        codes[code] = codes.get(code, 0) + 1
        latencies.append(total)
        if code == 200:
            ids.append(json.loads(payload)["request"]["id"])
        else:
            errors.append(f"{code} {payload[:200]!r}")
    wanted = set(ids)
    assigned: dict[int, str] = {}
    watcher = daemons[-1]
    while time.monotonic() - start < timeout:
        listed = get_json(watcher.port, "/api/request/list/")["requests"]
        assigned = {r["id"]: r["assigned_device"] for r in listed if r["id"] in wanted and r["assigned_device"]}
        if len(assigned) == len(wanted):
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    latencies.sort()
    return {
        "posted_s": posted, "all_assigned_s": elapsed if wanted and len(assigned) == len(wanted) else None,
        "created": len(ids), "assigned": len(assigned), "distinct": len(set(assigned.values())),
        "codes": codes, "errors": errors[:5], "n_errors": len(errors),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
    }


# --------------------------------------------------------------------------- one back-end


def run_backend(name: str, urls: list[str], db_pids: list[int], workdir: str, options: argparse.Namespace) -> dict[str, Any]:
    """Three daemons, daemon i on ``urls[i]`` (three nodes, or one server three times)."""
    share = [options.devices // SERVERS + (1 if i < options.devices % SERVERS else 0) for i in range(SERVERS)]
    # Below the ephemeral range, where the first daemon's simulated SUT agents (port 0) cannot
    # take the next daemon's HTTP port before it starts.
    ports: list[int] = []
    for _ in range(SERVERS):
        ports.append(free_port_range(1, start=(ports[-1] + 1) if ports else 19000, stop=20000))
    t = time.monotonic()
    mozpool_db(urls[0], "create-schema")
    bases = []
    taken: set[int] = set(ports)
    for i in range(SERVERS):
        boards = (share[i] + DEVICES_PER_BOARD - 1) // DEVICES_PER_BOARD
        base = free_port_range(boards, start=20000 + 4000 * i, stop=20000 + 4000 * (i + 1))
        assert not taken & set(range(base, base + boards))
        taken |= set(range(base, base + boards))
        bases.append(base)
        load_share(urls[i], f"127.0.0.1:{ports[i]}", share[i], f"s{i + 1}-panda", base)
    total = sum(share)
    seed_ready(urls[0], total, lead=options.lead)
    res: dict[str, Any] = {"seed_s": time.monotonic() - t, "devices": total}
    daemons = [
        Daemon(os.path.join(workdir, f"daemon{i + 1}"), urls[i], port=ports[i], fakes=share[i], time_scale=1.0,
               relay_base=bases[i])
        for i in range(SERVERS)
    ]
    t = time.monotonic()
    try:
        for d in daemons:
            d.start(timeout=600)
        for d in daemons:
            while "simulated devices on" not in d.log_text():
                if time.monotonic() - t > 600 or (d.proc is not None and d.proc.poll() is not None):
                    raise RuntimeError("simulated pool did not start:\n" + d.log_text()[-3000:])
                time.sleep(0.2)
        res["startup_s"] = time.monotonic() - t
        time.sleep(options.settle)
        cpu0 = [d.cpu_seconds() for d in daemons]
        db0 = sum(cpu_seconds(p) for p in db_pids)
        t0, since = time.monotonic(), utc_text()
        time.sleep(options.window)
        spent = time.monotonic() - t0
        res["cpu"] = [(d.cpu_seconds() - c) / spent for d, c in zip(daemons, cpu0)]
        res["db_cpu"] = (sum(cpu_seconds(p) for p in db_pids) - db0) / spent
        res["window_s"] = spent
        checks = sql_query(urls[0], "SELECT message, COUNT(*) FROM device_logs WHERE ts >= ? AND source = 'sut'"
                                    " AND message LIKE ? GROUP BY message", (since, "SUT verify%"))
        res["checks_ok"] = sum(c for m, c in checks if m == "SUT verify ok")
        res["checks_failed"] = sum(c for m, c in checks if m != "SUT verify ok")
        res["expected_checks"] = total * spent / READY_TIMEOUT
        say(f"[{name}] steady state: " + ", ".join(f"{100 * c:.1f}%" for c in res["cpu"])
            + f" of a core per daemon; database {100 * res['db_cpu']:.1f}%; "
            f"{res['checks_ok']}/{res['expected_checks']:.0f} health checks ok")
        cpu0 = [d.cpu_seconds() for d in daemons]
        db0 = sum(cpu_seconds(p) for p in db_pids)
        t0 = time.monotonic()
        res["alloc"] = a = allocate(daemons, options.requests, options.alloc_timeout)
        spent = time.monotonic() - t0
        a["cpu"] = [(d.cpu_seconds() - c) / spent for d, c in zip(daemons, cpu0)]
        a["db_cpu"] = (sum(cpu_seconds(p) for p in db_pids) - db0) / spent
        say(f"[{name}] allocation: {a['assigned']}/{a['created']} assigned in "
            f"{a['all_assigned_s'] if a['all_assigned_s'] is not None else 'n/a'} s; codes {a['codes']}")
    finally:
        for d in daemons:
            d.stop(timeout=120)
    res["problems"] = [p for d in daemons for p in d.log_problems(4)]
    res["reruns"] = sum(d.count("running the transaction again") for d in daemons)
    res["claim_conflicts"] = sum(d.count("was claimed by another request") for d in daemons)
    return res


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="600 devices, 20 s window, 300 requests")
    p.add_argument("--devices", type=int)
    p.add_argument("--window", type=float, help="steady-state CPU window, seconds")
    p.add_argument("--requests", type=int)
    p.add_argument("--backends", default="mariadb,galera")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    options = p.parse_args(argv)
    options.devices = options.devices or (600 if options.quick else 2000)
    options.window = options.window or (20.0 if options.quick else 60.0)
    options.requests = options.requests or (300 if options.quick else 1000)
    options.settle = 5.0 if options.quick else 15.0
    options.lead = 10.0
    options.alloc_timeout = 180.0
    if options.requests > options.devices:
        p.error("more requests than devices")
    raise_fd_limit()

    # The cluster and the single server are the test suite's (tests/support/): the same
    # mariadbd options on both sides, so the comparison is of Galera alone.
    from labservers.galera import GaleraCluster, galeraUnavailableReason
    from labservers.mariadb import PrivateMariaDB

    workdir = tempfile.mkdtemp(prefix="mozpool-bench-scale-")
    results: dict[str, dict[str, Any]] = {}
    for backend in options.backends.split(","):
        if backend == "mariadb":
            say(f"[mariadb] one server, three daemons, {options.devices:,} devices ...")
            server = PrivateMariaDB()
            try:
                server.start()
                url = server.createDatabase(f"mozpool_scale_{os.getpid()}")
                results["mariadb"] = run_backend("mariadb", [url] * SERVERS, [server._process.pid],  # type: ignore[union-attr]
                                                 os.path.join(workdir, "mariadb"), options)
            finally:
                server.close()
        elif backend == "galera":
            reason = galeraUnavailableReason()
            if reason:
                say(f"[galera] skipped: {reason}")
                continue
            say(f"[galera] three nodes, a daemon on each, {options.devices:,} devices ...")
            cluster = GaleraCluster(SERVERS)
            try:
                cluster.start()
                _, urls = cluster.createDatabase()
                results["galera"] = run_backend("galera", urls, [n.pid for n in cluster.nodes],
                                                os.path.join(workdir, "galera"), options)
            finally:
                cluster.close()
        else:
            p.error(f"unknown back-end {backend!r}")

    say(f"\n{options.devices:,} devices in ready over {SERVERS} daemons at time scale 1 (health check every "
        f"600 s each), {os.cpu_count()} CPUs")
    rows = []
    for name, r in results.items():
        a = r["alloc"]
        rows.append([
            name, r["startup_s"], " / ".join(f"{100 * c:.1f}" for c in r["cpu"]), 100 * r["db_cpu"],
            f"{r['checks_ok']}/{r['expected_checks']:.0f}", f"{a['assigned']}/{options.requests}",
            f"{a['all_assigned_s']:.2f}" if a["all_assigned_s"] is not None else "n/a", a["posted_s"],
            a["p50_ms"], a["p99_ms"], a["distinct"], a["n_errors"], " / ".join(f"{100 * c:.0f}" for c in a["cpu"]),
            100 * a["db_cpu"], r["reruns"],
        ])
    say(table(["db", "start s", "cpu % per daemon", "db cpu %", "checks ok/exp", "assigned", "alloc s",
               "POSTs s", "POST p50 ms", "POST p99 ms", "distinct", "errors", "alloc cpu % per daemon",
               "alloc db cpu %", "reruns"], rows))
    if "mariadb" in results and "galera" in results:
        single, galera = results["mariadb"], results["galera"]
        cpu_s, cpu_g = sum(single["cpu"]) / SERVERS, sum(galera["cpu"]) / SERVERS
        alloc_s, alloc_g = single["alloc"]["all_assigned_s"], galera["alloc"]["all_assigned_s"]
        say("\nTarget: Galera within 1.5x of the single server")
        say(f"  steady-state CPU per daemon (mean of three): {100 * cpu_g:.2f}% vs {100 * cpu_s:.2f}% of a core "
            f"= {cpu_g / cpu_s:.2f}x: {'met' if cpu_g <= TARGET * cpu_s else 'MISSED'}")
        if alloc_s and alloc_g:
            ok = alloc_g <= TARGET * alloc_s and galera["alloc"]["distinct"] == options.requests
            say(f"  {options.requests} requests allocated in {alloc_g:.2f} s vs {alloc_s:.2f} s "
                f"= {alloc_g / alloc_s:.2f}x: {'met' if ok else 'MISSED'}")
        else:
            say(f"  allocation did not finish: galera {alloc_g}, single {alloc_s}: MISSED")
    for name, r in results.items():
        a = r["alloc"]
        if a["n_errors"]:
            say(f"  {name}: request errors ({a['n_errors']}): {a['errors']}")
        if r["problems"]:
            say(f"  {name}: log problems:")
            for line in r["problems"]:
                say("    " + line)
    finish(workdir, options.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
