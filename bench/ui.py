"""Benchmark: the operator web UI and its event stream on a daemon holding 10,000 devices.

    PYTHONPATH=. python bench/ui.py            # 10,000 devices, 100 subscribers, 30 s CPU window
    PYTHONPATH=. python bench/ui.py --quick    # 2,000 devices, 100 subscribers, 10 s CPU window

The daemon is a real ``twistd -n mozpool`` process at time scale 1 (no --fakes), on SQLite; its
devices come from ``mozpool-db create-schema`` / ``load-fixture`` and are then set to ``ready``
with no timer, so LifeGuard stays idle and what is measured is the UI and the stream alone.

1. **Devices page.**  Debian's Chromium (headless, driven through its chromedriver with
   Selenium, both paths given so nothing is downloaded) loads ``/ui/devices`` and a few of its
   views.  Times are the browser's own, from the start of the navigation: the first table row in
   the DOM (a MutationObserver installed before the page's scripts), the rows painted (the task
   after the next animation frame), and DOMContentLoaded (the page's deferred scripts -- htmx
   and mozpool.js -- have run: the rows are clickable and the filters work).  *Usable* is the
   later of the last two.  The first load uses a fresh profile (nothing cached); the others are
   the median of ``--loads`` loads.
   Then one interaction: a click on the "name" column header until the re-sorted rows show.
   Reference: ``GET /api/device/list/?details`` of the same pool (every device, the call a script
   would make), timed from this process.  Target: usable in under 1 s.
2. **Event latency.**  ``--subscribers`` clients (asyncio, plain sockets, in this process) follow
   ``/api/events`` with the filter the pool pages use.  Changes are made through the API (new
   comments, and forced state changes between ``locked_out`` and ``troubleshooting``, neither
   of which starts any work), one every 0.3 s; each change's latency is from just before its
   POST is sent to the arrival of its event at a subscriber.  Reference: the same with one
   subscriber.  Target: p99 under 1 s with 100 subscribers.
3. **Idle CPU.**  The daemon's user+system CPU (``/proc/PID/stat``, threads included) over the
   window with the subscribers connected and nothing changing.  Reference: the same window with
   no subscriber.  Target: under 2 % of a core.

Needs ``chromium`` and ``chromium-driver`` from Debian and the ``selenium`` package (the test
extra): ``apt-get install chromium chromium-driver``; ``pip install -e '.[test]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.daemons import cpu_seconds, Daemon, free_port, get_json, http_call  # noqa: E402
from bench.databases import load_fixture, sql  # noqa: E402
from bench.report import finish, say, table  # noqa: E402

CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)
#: The event types the pool-wide pages follow (mozpool/web/ui/pages.py POOL_EVENTS).
POOL_TYPES = "device_state,request_state,request_device,device_comments,device_environment"
LIST_PATH = "/api/device/list/?details=1"

#: Runs in every page before its own scripts: when the first device row enters the DOM.
ROW_PROBE = """
window.__mpBench = {};
new MutationObserver(function (records, observer) {
  if (document.querySelector('[data-testid="device-row"]')) {
    window.__mpBench.firstRow = performance.now();
    observer.disconnect();
    // The frame that draws them: its animation callback, then the task after it (the paint).
    requestAnimationFrame(function () {
      setTimeout(function () { window.__mpBench.painted = performance.now(); }, 0);
    });
  }
}).observe(document, {childList: true, subtree: true});
"""

#: After the load: the page's own timings, in ms from the start of the navigation.
TIMINGS = """
var nav = performance.getEntriesByType('navigation')[0];
return {
  ttfb: nav.responseStart, response: nav.responseEnd,
  dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
  firstRow: window.__mpBench ? window.__mpBench.firstRow || null : null,
  painted: window.__mpBench ? window.__mpBench.painted || null : null,
  rows: document.querySelectorAll('[data-testid="device-row"]').length,
  htmx: !!window.htmx,
  bytes: nav.transferSize || nav.encodedBodySize || 0,
};
"""

VIEWS = (
    ("first page, by name", "/ui/devices"),
    ("sorted by state, desc", "/ui/devices?sort=state&dir=desc"),
    ("name search", "/ui/devices?name=77"),
    ("last page", "/ui/devices?page=LAST"),
)


# --------------------------------------------------------------------------- the browser


def chromium_paths() -> tuple[str, str]:
    binary = os.environ.get("MOZPOOL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("MOZPOOL_CHROMEDRIVER") or shutil.which("chromedriver")
    if not binary or not driver:
        raise SystemExit("chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    return binary, driver


def start_browser(profile: str) -> Any:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise SystemExit("the selenium package is needed: pip install -e '.[test]'") from None
    binary, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1280,900")
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    browser.command_executor.client_config.timeout = 60
    browser.set_page_load_timeout(60)
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ROW_PROBE})
    return browser


def load_page(browser: Any, url: str) -> dict[str, Any]:
    browser.get(url)  # returns after the load event
    deadline = time.monotonic() + 10
    while True:
        t = browser.execute_script(TIMINGS)
        if t["painted"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if not t["rows"] or t["firstRow"] is None or t["painted"] is None:
        raise RuntimeError(f"{url}: no device rows shown ({t})")
    if not t["htmx"]:
        raise RuntimeError(f"{url}: htmx did not load")
    t["usable"] = max(t["painted"], t["dcl"])
    return t


def sort_click(browser: Any) -> float:
    """Click the "name" header (htmx swaps the table in place); ms until the re-sorted rows show."""
    first = browser.execute_script('return document.querySelector(\'[data-testid="device-row"]\').dataset.device;')
    return browser.execute_async_script("""
        var done = arguments[arguments.length - 1], first = arguments[0], start = performance.now();
        document.querySelector('[data-testid="sort-name"]').click();
        (function check() {
          var row = document.querySelector('[data-testid="device-row"]');
          if (row && row.dataset.device !== first) {
            requestAnimationFrame(function () { done(performance.now() - start); });
          } else if (performance.now() - start > 20000) {
            done(-1);
          } else {
            setTimeout(check, 2);
          }
        })();
    """, first)


def measure_pages(port: int, workdir: str, options: argparse.Namespace) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    last_page = (options.devices + 99) // 100
    profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
    browser = start_browser(profile)
    out: dict[str, Any] = {"views": {}}
    try:
        out["cold"] = load_page(browser, base + "/ui/devices")
        if options.verbose:
            say(f"    cold: {out['cold']}")
        for label, path in VIEWS:
            url = base + path.replace("LAST", str(last_page))
            runs = [load_page(browser, url) for _ in range(options.loads)]
            if options.verbose:
                for r in runs:
                    say(f"    {label}: {r}")
            out["views"][label] = {k: statistics.median(r[k] or 0 for r in runs)
                                   for k in ("ttfb", "firstRow", "painted", "dcl", "usable", "rows", "bytes")}
            out["views"][label]["max_usable"] = max(r["usable"] for r in runs)
        clicks = []
        for _ in range(options.loads):
            load_page(browser, base + "/ui/devices")
            clicks.append(sort_click(browser))
        out["sort_click"] = statistics.median(clicks)
        out["sort_click_max"] = max(clicks)
    finally:
        browser.quit()
    # The reference: the whole pool as JSON, as a script reads it.
    times = []
    for _ in range(options.loads):
        t = time.monotonic()
        code, body = http_call(port, "GET", LIST_PATH)
        times.append(1000 * (time.monotonic() - t))
        assert code == 200, code
    out["list_ms"] = statistics.median(times)
    out["list_bytes"] = len(body)
    return out


# --------------------------------------------------------------------------- the event stream


class Subscriber:
    """One /api/events client on a plain socket: every event's arrival time, by (type, key)."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.seen: dict[tuple[str, str], float] = {}
        self.events = 0
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer = writer
        writer.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAccept: text/event-stream\r\n"
                     "\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"/api/events answered {head[:200]!r}")
        chunked = b"transfer-encoding: chunked" in head.lower()
        self.connected.set()
        buffer = b""
        while True:
            if chunked:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    return
                data = await reader.readexactly(size + 2)
                buffer += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
                buffer += data
            while b"\n\n" in buffer:
                message, buffer = buffer.split(b"\n\n", 1)
                self._message(message, time.monotonic())

    def _message(self, message: bytes, now: float) -> None:
        kind, data = None, None
        for line in message.split(b"\n"):
            if line.startswith(b"event: "):
                kind = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        if kind is None or data is None:
            return
        self.events += 1
        payload = json.loads(data)
        if kind == "device_comments":
            self.seen.setdefault((kind, str(payload.get("comments"))), now)
        elif kind == "device_state":
            self.seen.setdefault((kind, f"{payload.get('device')}:{payload.get('state')}"), now)

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.run())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


async def post(port: int, path: str, body: Any) -> int:
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    return int(reply.split(b" ", 2)[1])


async def connect(port: int, count: int) -> list[Subscriber]:
    subs = [Subscriber(port, "/api/events?type=" + POOL_TYPES) for _ in range(count)]
    for s in subs:
        s.start()
    await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in subs)), 60)
    return subs


async def latency_run(port: int, subscribers: int, changes: int, device: str, tag: str) -> dict[str, Any]:
    state = get_json(port, f"/api/device/{device}/state/")["state"]
    other = {"locked_out": "troubleshooting", "troubleshooting": "locked_out"}
    if state not in other:
        raise RuntimeError(f"{device} is in {state}, not locked_out or troubleshooting")
    subs = await connect(port, subscribers)
    try:
        await asyncio.sleep(0.5)
        latencies, missing = [], 0
        for i in range(changes):
            if i % 2 == 0:
                text = f"bench {tag} {i}"
                key = ("device_comments", text)
                t0 = time.monotonic()
                code = await post(port, f"/api/device/{device}/set-comments/", {"comments": text})
            else:
                key = ("device_state", f"{device}:{other[state]}")
                t0 = time.monotonic()
                code = await post(port, f"/api/device/{device}/state-change/{state}/to/{other[state]}/", {})
                state = other[state]
            if code != 200:
                raise RuntimeError(f"change {i} answered {code}")
            deadline = t0 + 5
            while any(key not in s.seen for s in subs) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            for s in subs:
                # forget it: the same state comes again two changes on
                at = s.seen.pop(key, None)
                if at is None:
                    missing += 1
                else:
                    latencies.append(at - t0)
            await asyncio.sleep(max(0.0, t0 + 0.3 - time.monotonic()))
        latencies.sort()
        return {
            "subscribers": subscribers, "changes": changes, "deliveries": len(latencies), "missing": missing,
            "p50": 1000 * latencies[len(latencies) // 2],
            "p99": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "max": 1000 * latencies[-1],
        }
    finally:
        for s in subs:
            s.close()
        await asyncio.sleep(0.2)


async def idle_cpu(pid: int, port: int, subscribers: int, window: float) -> dict[str, Any]:
    subs = await connect(port, subscribers) if subscribers else []
    try:
        await asyncio.sleep(2.0)  # let the connections settle
        c0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(window)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        alive = sum(1 for s in subs if s.task is not None and not s.task.done())
        return {"subscribers": subscribers, "alive": alive, "cpu": (c1 - c0) / (t1 - t0), "window": t1 - t0}
    finally:
        for s in subs:
            s.close()
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 devices, 10 s CPU window, 3 loads per view")
    p.add_argument("--devices", type=int)
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--changes", type=int, help="changes timed per latency run (default 40, quick 20)")
    p.add_argument("--window", type=float, help="idle CPU window, seconds (default 30, quick 10)")
    p.add_argument("--loads", type=int, help="page loads per view (default 7, quick 3)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, database)")
    p.add_argument("--verbose", action="store_true", help="print every page load's timings")
    options = p.parse_args(argv)
    options.devices = options.devices or (2000 if options.quick else 10000)
    options.changes = options.changes or (20 if options.quick else 40)
    options.window = options.window or (10.0 if options.quick else 30.0)
    options.loads = options.loads or (3 if options.quick else 7)
    chromium_paths()

    workdir = tempfile.mkdtemp(prefix="mozpool-bench-ui-")
    db_url = "sqlite:///" + os.path.join(workdir, "mozpool.sqlite")
    port = free_port()
    say(f"loading {options.devices:,} devices and starting the daemon ...")
    t = time.monotonic()
    load_fixture(db_url, f"127.0.0.1:{port}", options.devices)
    sql(db_url, [("UPDATE devices SET state = 'ready', state_timeout = NULL", ())])
    # The device whose changes are timed starts parked, where forced changes start no work.
    device = "panda-0001"
    sql(db_url, [("UPDATE devices SET state = 'locked_out' WHERE name = ?", (device,))])
    daemon = Daemon(os.path.join(workdir, "daemon"), db_url, port=port)
    up = daemon.start()
    say(f"fixture {time.monotonic() - t - up:.1f} s, daemon answering after {up:.1f} s")
    try:
        listed = get_json(port, "/api/device/list/")["devices"]
        assert len(listed) == options.devices, len(listed)
        say("[pages] headless Chromium on /ui/devices ...")
        pages = measure_pages(port, workdir, options)
        say("[events] latency with 1 and with {} subscribers ...".format(options.subscribers))
        one = asyncio.run(latency_run(port, 1, options.changes, device, "one"))
        many = asyncio.run(latency_run(port, options.subscribers, options.changes, device, "many"))
        say(f"[cpu] idle daemon, {options.window:.0f} s with no subscriber and with {options.subscribers} ...")
        idle0 = asyncio.run(idle_cpu(daemon.pid, port, 0, options.window))
        idle = asyncio.run(idle_cpu(daemon.pid, port, options.subscribers, options.window))
    finally:
        daemon.stop()
    problems = daemon.log_problems()

    say(f"\n{options.devices:,} devices, SQLite, time scale 1, {os.cpu_count()} CPUs")
    say("\n1. Devices page in headless Chromium (ms from the start of the navigation; median of "
        f"{options.loads} loads)")
    rows = []
    c = pages["cold"]
    rows.append(["first load, fresh profile", c["ttfb"], c["firstRow"], c["painted"], c["dcl"], c["usable"],
                 c["usable"], c["rows"]])
    for label, v in pages["views"].items():
        rows.append([label, v["ttfb"], v["firstRow"], v["painted"], v["dcl"], v["usable"], v["max_usable"],
                     int(v["rows"])])
    say(table(["view", "first byte", "row in DOM", "rows painted", "scripts run", "usable", "max usable", "rows"],
              rows))
    say(f"   click on a column header until the re-sorted rows show: median {pages['sort_click']:.0f} ms, "
        f"max {pages['sort_click_max']:.0f} ms")
    say(f"   reference: GET {LIST_PATH} ({pages['list_bytes']:,} bytes, every device): "
        f"median {pages['list_ms']:.0f} ms")

    say("\n2. From a change (POST) to its event at every /api/events subscriber")
    say(table(["subscribers", "changes", "deliveries", "missing", "p50 ms", "p99 ms", "max ms"],
              [[r["subscribers"], r["changes"], r["deliveries"], r["missing"], r["p50"], r["p99"], r["max"]]
               for r in (one, many)]))

    say("\n3. Idle daemon CPU")
    say(table(["subscribers", "connected at end", "window s", "cpu % of a core"],
              [[r["subscribers"], r["alive"], r["window"], 100 * r["cpu"]] for r in (idle0, idle)]))

    worst_usable = max([c["usable"]] + [v["max_usable"] for v in pages["views"].values()])
    say("\nTargets:")
    say(f"  devices page usable in {worst_usable:.0f} ms at worst (target < 1000 ms): "
        f"{'met' if worst_usable < 1000 else 'MISSED'}")
    say(f"  event p99 with {options.subscribers} subscribers {many['p99']:.0f} ms (target < 1000 ms), "
        f"{many['missing']} missing: {'met' if many['p99'] < 1000 and not many['missing'] else 'MISSED'}")
    say(f"  idle CPU with {options.subscribers} subscribers {100 * idle['cpu']:.2f} % of a core (target < 2 %): "
        f"{'met' if idle['cpu'] < 0.02 else 'MISSED'}")
    if problems:
        say("  log problems:")
        for line in problems:
            say("    " + line)
    finish(workdir, options.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
