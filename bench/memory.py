"""Benchmark: the daemon's resident memory with 10,000 devices and 1,000 open requests (issue 17:
under 300 MB), on SQLite and MariaDB.

    PYTHONPATH=. python bench/memory.py                 # 10,000 devices, 1,000 requests
    PYTHONPATH=. python bench/memory.py --fakes         # also with the 10,000 devices simulated
    PYTHONPATH=. python bench/memory.py --quick         # 2,000 devices, 200 requests

Two set-ups, each a real ``twistd -n mozpool`` process:

- ``idle``: the fixture's devices ``ready`` with the ``android`` image and no timer, and the
  requests written to the database before the daemon starts (``ready``, each holding a device,
  expiring in two hours), as a daemon restarted in a busy pool finds them.
- ``fakes`` (with ``--fakes``): the daemon also runs the 10,000 simulated devices (their relay
  boards and SUT agents are in the same process), and the requests are made through the API
  (``POST /api/device/any/request/``, all at once) and allocated before memory is read.

Before reading memory the reads the pool view serves are made, so their encoded bodies exist:
the device list with details, the summary, the UI's devices table and overview, and
``state/?cache=1`` of every device.  Reported: VmRSS (now) and VmHWM (the peak) from
/proc/<pid>/status.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.daemons import Daemon, free_port, free_port_range, get_json, http_call, rss_mb  # noqa: E402
from bench.databases import Backends, load_fixture, sql, sql_executemany, sql_query, utc_text  # noqa: E402
from bench.loadgen import wrk  # noqa: E402
from bench.report import finish, say, table  # noqa: E402

TARGET_MB = 300
DEVICES_PER_BOARD = 32
STATE_PATH = "/api/device/panda-%04d/state/?cache=1"


def seed(db_url: str, n: int, requests: int, fqdn: str) -> None:
    """Every device ready with android and no timer; ``requests`` open requests holding the first
    devices."""
    image = sql_query(db_url, "SELECT id FROM images WHERE name = 'android'")[0][0]
    server = sql_query(db_url, "SELECT id FROM imaging_servers WHERE fqdn = ?", (fqdn,))[0][0]
    sql(db_url, [("UPDATE devices SET state = 'ready', image_id = ?, boot_config = '{}', state_counters = '{}',"
                  " state_timeout = NULL", (image,))])
    if not requests:
        return
    expires = utc_text(7200)
    sql_executemany(
        db_url,
        "INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id, boot_config,"
        " state, state_counters, state_timeout, environment) VALUES (?, 'any', ?, ?, ?, '{}', 'ready', '{}', NULL,"
        " 'any')",
        [(server, f"bench-{i}@example.com", expires, image) for i in range(requests)],
    )
    request_ids = [r[0] for r in sql_query(db_url, "SELECT id FROM requests ORDER BY id")]
    device_ids = [r[0] for r in sql_query(db_url, "SELECT id FROM devices ORDER BY id")]
    sql_executemany(db_url, "INSERT INTO device_requests (request_id, device_id) VALUES (?, ?)",
                    list(zip(request_ids, device_ids)))


def warm(port: int, n: int) -> dict[str, int]:
    """Make every read the view serves once (and the cached state of every device); body sizes."""
    sizes = {}
    for path in ("/api/device/list/", "/api/device/list/?details=1", "/api/pool/summary/", "/api/request/list/",
                 "/ui/devices", "/ui/", "/metrics"):
        code, body = http_call(port, "GET", path, timeout=120)
        if code != 200:
            raise RuntimeError(f"GET {path} -> {code}: {body[:300]!r}")
        sizes[path] = len(body)
    wrk(f"http://127.0.0.1:{port}" + STATE_PATH % 1, seconds=2, connections=8, rotate=(STATE_PATH, n))
    return sizes


def measure_idle(backend: str, db_url: str, workdir: str, options: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    fqdn = f"127.0.0.1:{port}"
    load_fixture(db_url, fqdn, options.devices)
    seed(db_url, options.devices, options.requests, fqdn)
    daemon = Daemon(os.path.join(workdir, "idle"), db_url, port=port)
    up = daemon.start(timeout=600)
    try:
        open_requests = len(get_json(port, "/api/request/list/")["requests"])
        sizes = warm(port, options.devices)
        time.sleep(options.settle)
        return {"startup_s": up, "open_requests": open_requests, "rss": rss_mb(daemon.pid),
                "peak": rss_mb(daemon.pid, peak=True), "sizes": sizes, "problems": daemon.log_problems()}
    finally:
        daemon.stop()


def measure_fakes(backend: str, db_url: str, workdir: str, options: argparse.Namespace) -> dict[str, Any]:
    from bench.pool import allocate

    n = options.devices
    port = free_port()
    fqdn = f"127.0.0.1:{port}"
    relay_base = free_port_range((n + DEVICES_PER_BOARD - 1) // DEVICES_PER_BOARD)
    load_fixture(db_url, fqdn, n, relay_base_port=relay_base)
    seed(db_url, n, 0, fqdn)
    daemon = Daemon(os.path.join(workdir, "fakes"), db_url, port=port, fakes=n, time_scale=1.0, relay_base=relay_base)
    start = time.monotonic()
    daemon.start(timeout=600)
    try:
        while "simulated devices on" not in daemon.log_text():
            if time.monotonic() - start > 600:
                raise RuntimeError("simulated pool did not start:\n" + daemon.log_text()[-3000:])
            time.sleep(0.2)
        up = time.monotonic() - start
        alloc = allocate(daemon, options.requests, 120)
        open_requests = len(get_json(port, "/api/request/list/")["requests"])
        sizes = warm(port, n)
        time.sleep(options.settle)
        return {"startup_s": up, "open_requests": open_requests, "assigned": alloc["assigned"],
                "rss": rss_mb(daemon.pid), "peak": rss_mb(daemon.pid, peak=True), "sizes": sizes,
                "problems": daemon.log_problems()}
    finally:
        daemon.stop(timeout=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 devices, 200 requests")
    p.add_argument("--devices", type=int)
    p.add_argument("--requests", type=int)
    p.add_argument("--fakes", action="store_true", help="also measure with the devices simulated in the daemon")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between the reads and the measurement")
    p.add_argument("--backends", default="sqlite,mariadb")
    p.add_argument("--keep", action="store_true")
    options = p.parse_args(argv)
    options.devices = options.devices or (2000 if options.quick else 10000)
    options.requests = options.requests or (200 if options.quick else 1000)

    workdir = tempfile.mkdtemp(prefix="mozpool-bench-memory-")
    rows = []
    ok = True
    backends = Backends(options.backends, workdir)
    try:
        for backend, url in backends:
            setups = [("idle", measure_idle)] + ([("fakes", measure_fakes)] if options.fakes else [])
            for setup, fn in setups:
                if setup == "fakes":  # a database of its own
                    url = (url.replace(".sqlite", "-fakes.sqlite") if backend == "sqlite"
                           else backends.mariadb.database())  # type: ignore[union-attr]
                say(f"[{backend}/{setup}] {options.devices:,} devices, {options.requests:,} requests ...")
                bdir = os.path.join(workdir, backend)
                os.makedirs(bdir, exist_ok=True)
                r = fn(backend, url, bdir, options)
                ok &= r["rss"] < TARGET_MB and r["peak"] < TARGET_MB
                rows.append([backend, setup, options.devices, r["open_requests"], r.get("assigned", r["open_requests"]),
                             f"{r['rss']:.0f}", f"{r['peak']:.0f}", f"{r['sizes']['/api/device/list/?details=1']:,}"])
                for line in r["problems"]:
                    say("    " + line)
    finally:
        backends.close()
    say(table(["back-end", "set-up", "devices", "open requests", "holding a device", "RSS MB", "peak MB",
               "list?details bytes"], rows))
    say(f"Target: RSS under {TARGET_MB} MB: {'met' if ok else 'MISSED'}")
    finish(workdir, options.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
