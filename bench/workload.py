"""Benchmark (issue 14): a compressed day on a simulated pool, three ways -- the original
behaviour, the request queue, the queue with a warm pool.

    PYTHONPATH=. .venv/bin/python bench/workload.py            # 50 devices, about 5 minutes a way
    PYTHONPATH=. .venv/bin/python bench/workload.py --quick    # half the day curve's length
    PYTHONPATH=. .venv/bin/python bench/workload.py --ways queue,warm

The day: Poisson arrivals (by thinning) whose rate follows a CI lab's day -- quiet night, a
morning ramp, a midday peak above the pool's capacity, an afternoon plateau, an evening tail --
played over ``--day`` nominal seconds (default 3.5 h: the 24 h curve about seven times faster, so
a run takes five minutes), asking on average ``--load`` (0.55) of the pool's capacity, which puts
the midday peak just above it.  Device timings, request durations and queue timeouts stay
nominal; everything, the daemon's and this client's, runs at ``--time-scale`` (default 0.02: a
nominal second is 20 ms).  Each request: ``android`` (70 %) or ``b2g`` (30 %, with ``b2gbase``),
priority 50 (70 %), 90 (10 %) or 20 (20 %), one of six assignees, held 5 (50 %), 15 (35 %) or
45 (15 %) minutes once ready, then returned.  10 % of imagings fail (``--fail '*:android_downloading:0.1'``
and the same for b2g): LifeGuard retries after the phase's timeout, or gives the device up.
Every way replays the same arrivals on a fresh daemon (``--fakes 50``, SQLite).

The three ways:

- **original**: the behaviour before the queue.  The daemon has no switch for it, so the client
  emulates it: each attempt is a request with ``queue_timeout = 0`` (no device free: it fails at
  once with ``failed_device_busy``), retried every 10 nominal seconds -- the original's
  ``finding_device`` poll -- until 600 nominal seconds have passed since the first attempt, as
  long as the original kept retrying; then the request has failed.  No order among waiting
  requests (whichever retry comes first wins), no ETA, no warm pool.
- **queue**: one request with ``queue_timeout = 600`` (nominal), matched by the queue.
- **warm**: the same, with ``[warm_pool]`` (``--warm``; default ``auto = true``, ``spares = 20%``,
  ``max_concurrent = 6``).

Measured (times in nominal seconds): served / failed; p50 and p95 request-to-ready (from the
client's first POST to the request's transition to ``ready`` in the state history, to the
millisecond); device utilisation (share of device time holding a request that is ``ready``, and
holding a claim at all, over the day); imagings and power cycles sent; the ETA's error -- the
first ``queue.eta`` the status call shows for a request, against the time it was really
``ready``: median absolute error, and median relative error (over the wait still ahead when the
estimate was read); and *failed while a device was free*: a failed request during whose wait
the pool sampler (every 25 nominal seconds) twice in a row saw a ``ready`` device nobody held.

Targets (the issue's): no request fails while it could have been served within its
``queue_timeout``; with the warm pool, p50 request-to-ready at most a third of the original's;
the ETA's median error under 25 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.daemons import Daemon, free_port_range, raise_fd_limit  # noqa: E402
from bench.report import finish, say, table  # noqa: E402

IMAGES = (("android", 0.7), ("b2g", 0.3))
PRIORITIES = ((50, 0.7), (90, 0.1), (20, 0.2))
HOLDS = ((300, 0.5), (900, 0.35), (2700, 0.15))
ASSIGNEES = tuple(f"ci-{i}" for i in range(1, 7))
B2GBASE = "http://builds.example.com/b2g/base"
QUEUE_TIMEOUT = 600.0
#: the original's finding_device poll, and how long it kept retrying (nominal seconds)
ORIGINAL_RETRY = 10.0
ORIGINAL_GIVE_UP = 600.0
#: nominal seconds an imaging takes with the simulated devices, roughly (for the capacity)
IMAGING = 220.0
#: the warm way's [warm_pool]: a fifth of the pool kept warm with what the last hour asked for
DEFAULT_WARM = "auto = true\nspares = 20%\nmax_concurrent = 6\n"
FINAL = ("ready", "closed", "expired")


def pick(rng: random.Random, choices: tuple[tuple[Any, float], ...]) -> Any:
    x, total = rng.random(), 0.0
    for value, p in choices:
        total += p
        if x < total:
            return value
    return choices[-1][0]


def day_rate(hour: float) -> float:
    """The day's shape (1.0: the mean load asked for is reached at 1 / mean of this curve)."""
    points = [(0, 0.2), (6, 0.2), (9, 1.4), (12, 1.4), (12.5, 0.9), (13.5, 0.9), (14, 1.2), (17, 1.2), (20, 0.3),
              (24, 0.2)]
    for (h0, r0), (h1, r1) in zip(points, points[1:]):
        if h0 <= hour <= h1:
            return r0 + (r1 - r0) * (hour - h0) / (h1 - h0) if h1 > h0 else r1
    return 0.2


@dataclass(frozen=True)
class Arrival:
    at: float  # nominal seconds from the start of the day
    image: str
    priority: int
    hold: float
    assignee: str


def arrivals(day: float, devices: int, load: float, seed: int) -> list[Arrival]:
    """Poisson arrivals over ``day`` nominal seconds by thinning; the mean rate asks for ``load``
    of the pool's capacity (devices / mean device time per request)."""
    rng = random.Random(seed)
    mean_hold = sum(h * p for h, p in HOLDS)
    capacity = devices / (mean_hold + IMAGING)
    mean_shape = sum(day_rate(24 * i / 1000) for i in range(1000)) / 1000
    peak = max(day_rate(24 * i / 1000) for i in range(1000))
    base = load * capacity / mean_shape
    out, t = [], 0.0
    while True:
        t += rng.expovariate(base * peak)
        if t >= day:
            return out
        if rng.random() < day_rate(24 * t / day) / peak:
            out.append(Arrival(t, pick(rng, IMAGES), pick(rng, PRIORITIES),
                               pick(rng, HOLDS) * rng.uniform(0.8, 1.2), rng.choice(ASSIGNEES)))


# --- a small asyncio HTTP client (HTTP/1.0: the server closes; no chunking) -----------------------

async def call(port: int, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    code = int(head.split(b" ", 2)[1]) if head else 0
    try:
        return code, json.loads(payload) if payload.strip() else None
    except ValueError:
        return code, payload


@dataclass
class Outcome:
    arrival: Arrival
    started: float = 0.0  # time.time() of the first POST
    ids: list[int] = field(default_factory=list)
    final: str = ""
    eta: float | None = None  # the first estimate seen (POSIX)
    eta_read: float | None = None  # when it was read
    ready_at: float | None = None  # from the state history
    attempts: int = 0


class Tracker:
    """Follows ``request_state`` on /api/events (one stream) and wakes whoever waits for a request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.states: dict[int, str] = {}
        self.waiters: dict[int, list[asyncio.Future[str]]] = {}
        self.task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def follow(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"GET /api/events?type=request_state HTTP/1.0\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
        await writer.drain()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        self.connected.set()
        event, data = "", []
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                line = line.rstrip(b"\r\n")
                if not line:
                    if event == "request_state" and data:
                        self.seen(json.loads(b"\n".join(data)))
                    event, data = "", []
                elif line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data.append(line[5:].strip())
        finally:
            writer.close()

    def seen(self, data: dict[str, Any]) -> None:
        rid, state = int(data["request"]), str(data["state"])
        self.states[rid] = state
        if state in FINAL or state.startswith("failed_"):
            for f in self.waiters.pop(rid, []):
                if not f.done():
                    f.set_result(state)

    async def final(self, rid: int, timeout: float) -> str:
        state = self.states.get(rid, "")
        if state in FINAL or state.startswith("failed_"):
            return state
        f: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(rid, []).append(f)
        try:
            return await asyncio.wait_for(f, timeout)
        except asyncio.TimeoutError:
            code, body = await call(self.port, "GET", f"/api/request/{rid}/status/")
            return str(body.get("state")) if code == 200 and isinstance(body, dict) else "unknown"


def parse_utc(text: str) -> float:
    text = text.rstrip("Z").replace("T", " ")
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()


# --- one way ---------------------------------------------------------------------------------------

@dataclass
class Run:
    way: str
    outcomes: list[Outcome]
    day_start: float
    day_end: float
    free_samples: list[tuple[float, int]]
    db_path: str
    devices: int
    time_scale: float
    problems: list[str]
    failed_devices: list[str]


class Way:
    def __init__(self, way: str, workdir: str, args: argparse.Namespace, plan: list[Arrival]) -> None:
        self.way = way
        self.args = args
        self.plan = plan
        self.ts = args.time_scale
        self.dir = os.path.join(workdir, way)
        os.makedirs(self.dir, exist_ok=True)
        self.db_path = os.path.join(self.dir, "mozpool.sqlite")
        ini = os.path.join(self.dir, "workload.ini")
        boards = (args.devices + 31) // 32
        with open(ini, "w") as f:
            f.write(f"[fakes]\nseed = {args.seed}\nrelay_base_port = {free_port_range(boards)}\n")
            if way == "warm":
                f.write("[warm_pool]\n" + args.warm.replace("\\n", "\n") + "\n")
        fail = [a for image in ("android", "b2g") for a in ("--fail", f"*:{image}_downloading:{args.fail_rate}")]
        self.daemon = Daemon(os.path.join(self.dir, "daemon"), "sqlite:///" + self.db_path, fakes=args.devices,
                             time_scale=self.ts, extra_args=["--config", ini, *fail], seed=args.seed)
        self.free_samples: list[tuple[float, int]] = []

    def nominal(self, wall: float) -> float:
        return wall / self.ts

    async def settle(self, timeout: float) -> None:
        """Every device ready (and, with a warm pool, its imagings done) twice in a row."""
        deadline, calm = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            code, body = await call(self.daemon.port, "GET", "/api/device/list/?details")
            devices = body.get("devices", []) if code == 200 and isinstance(body, dict) else []
            calm = calm + 1 if len(devices) == self.args.devices and all(d["state"] == "ready" for d in devices) else 0
            if calm >= 2:
                return
            await asyncio.sleep(max(0.25, 20 * self.ts))
        raise RuntimeError(f"{self.way}: the pool did not settle within {timeout:.0f} s")

    async def sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                code, body = await call(self.daemon.port, "GET", "/api/device/list/?details")
                if code == 200:
                    free = sum(1 for d in body["devices"] if d["state"] == "ready" and d.get("request_id") is None)
                    self.free_samples.append((time.time(), free))
            except Exception:
                pass
            try:
                await asyncio.wait_for(stop.wait(), 25 * self.ts)
            except asyncio.TimeoutError:
                pass

    async def watch_eta(self, o: Outcome, rid: int, tracker: Tracker) -> None:
        """Read the status while the request waits, until it shows an estimate."""
        while o.eta is None:
            code, body = await call(self.daemon.port, "GET", f"/api/request/{rid}/status/")
            if code != 200 or not isinstance(body, dict) or body.get("state") not in ("new", "finding_device"):
                return
            place = body.get("queue")
            if isinstance(place, dict) and place.get("eta"):
                o.eta, o.eta_read = parse_utc(place["eta"]), time.time()
                return
            await asyncio.sleep(max(0.1, 5 * self.ts))

    async def one(self, a: Arrival, start: float, tracker: Tracker) -> Outcome:
        o = Outcome(a)
        await asyncio.sleep(max(0.0, start + a.at * self.ts - time.time()))
        o.started = time.time()
        # A CI job asks for long enough to wait, be imaged and run (durations are the caller's own
        # seconds: the daemon does not scale them), renews to what its run needs once ready, and
        # returns the device when done.
        duration = math.ceil((QUEUE_TIMEOUT + 3 * IMAGING + a.hold) * self.ts) + 1
        body: dict[str, Any] = {"assignee": a.assignee, "duration": duration, "image": a.image, "priority": a.priority,
                                "queue_timeout": 0 if self.way == "original" else max(1, round(QUEUE_TIMEOUT * self.ts))}
        if a.image == "b2g":
            body["b2gbase"] = B2GBASE
        give_up = o.started + ORIGINAL_GIVE_UP * self.ts
        while True:
            o.attempts += 1
            code, created = await call(self.daemon.port, "POST", "/api/device/any/request/", body)
            if code != 200:
                o.final = f"http {code}"
                return o
            rid = int(created["request"]["id"])
            o.ids.append(rid)
            eta = asyncio.ensure_future(self.watch_eta(o, rid, tracker)) if self.way != "original" else None
            state = await tracker.final(rid, QUEUE_TIMEOUT * self.ts + 1500 * self.ts + 30)
            if eta is not None:
                eta.cancel()
            if self.way == "original" and state == "failed_device_busy" and time.time() < give_up:
                await asyncio.sleep(ORIGINAL_RETRY * self.ts)
                continue
            o.final = state
            break
        if state == "ready":
            await call(self.daemon.port, "POST", f"/api/request/{o.ids[-1]}/renew/",
                       {"duration": math.ceil(a.hold * self.ts) + 1})
            await asyncio.sleep(a.hold * self.ts)
            await call(self.daemon.port, "POST", f"/api/request/{o.ids[-1]}/return/")
        return o

    async def drive(self) -> tuple[list[Outcome], float, float]:
        tracker = Tracker(self.daemon.port)
        follow = asyncio.ensure_future(tracker.follow())
        await asyncio.wait_for(tracker.connected.wait(), 30)
        await self.settle(120 + 2000 * self.ts)
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(self.sample(stop))
        start = time.time() + 0.5
        outcomes = await asyncio.gather(*(self.one(a, start, tracker) for a in self.plan))
        stop.set()
        await sampler
        follow.cancel()
        return list(outcomes), start, start + self.args.day * self.ts

    def run(self) -> Run:
        say(f"  {self.way}: starting a daemon with {self.args.devices} simulated devices ...")
        self.daemon.start()
        try:
            outcomes, start, end = asyncio.run(self.drive())
            with sqlite3.connect(self.db_path) as db:
                for o in outcomes:
                    if o.final == "ready":
                        row = db.execute("SELECT MIN(ts) FROM state_history WHERE kind = 'request' AND request_id = ?"
                                         " AND to_state = 'ready'", (o.ids[-1],)).fetchone()
                        o.ready_at = parse_utc(row[0]) if row and row[0] else None
                failed_devices = [r[0] for r in db.execute(
                    "SELECT name || ' (' || state || ')' FROM devices WHERE state LIKE 'failed_%' ORDER BY name")]
        finally:
            self.daemon.stop()
        problems = self.daemon.log_problems()
        return Run(self.way, outcomes, start, end, self.free_samples, self.db_path, self.args.devices, self.ts,
                   problems, failed_devices)


# --- the figures ---------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def figures(r: Run) -> dict[str, Any]:
    ts = r.time_scale
    served = [o for o in r.outcomes if o.final == "ready" and o.ready_at is not None]
    failed = [o for o in r.outcomes if o.final != "ready"]
    waits = [(o.ready_at - o.started) / ts for o in served if o.ready_at is not None]
    etas = [o for o in served if o.eta is not None and o.eta_read is not None and o.ready_at is not None]
    abs_err = [abs(o.eta - o.ready_at) / ts for o in etas]  # type: ignore[operator]
    rel_err = [abs(o.eta - o.ready_at) / max(o.ready_at - o.eta_read, 1e-6) for o in etas]  # type: ignore[operator]
    # Failed while a device was free: two samples in a row during its wait saw a free device.
    free_while = 0
    for o in failed:
        end = o.started + (ORIGINAL_GIVE_UP if r.way == "original" else QUEUE_TIMEOUT) * ts
        seen = [n for t, n in r.free_samples if o.started <= t <= end]
        if any(a > 0 and b > 0 for a, b in zip(seen, seen[1:])):
            free_while += 1
    serving = claimed = 0.0
    with sqlite3.connect(r.db_path) as db:
        rows = db.execute("SELECT request_id, ts, from_state, to_state FROM state_history WHERE kind = 'request'"
                          " ORDER BY request_id, id").fetchall()
        images = db.execute("SELECT COUNT(*) FROM request_logs WHERE message LIKE 'sending please_image%'").fetchone()[0]
        cycles = db.execute(
            "SELECT COUNT(*) FROM request_logs WHERE message LIKE 'sending please_power_cycle%'").fetchone()[0]
        warm = db.execute("SELECT COUNT(*) FROM device_logs WHERE source = 'warm_pool' AND message LIKE"
                          " 'warm pool: imaging%'").fetchone()[0]
        stopped = db.execute("SELECT COUNT(*) FROM device_logs WHERE source = 'warm_pool' AND message LIKE"
                             " 'warm imaging stopped%'").fetchone()[0]
    by_request: dict[int, list[tuple[float, str | None, str]]] = {}
    for rid, when, old, new in rows:
        by_request.setdefault(int(rid), []).append((parse_utc(when), old, new))
    for history in by_request.values():
        ready_since = claim_since = None
        for when, _, new in history + [(r.day_end, None, "end")]:
            when = min(max(when, r.day_start), r.day_end)
            if new == "ready" and ready_since is None:
                ready_since = when
            elif new != "ready" and ready_since is not None:
                serving += when - ready_since
                ready_since = None
            if new == "contact_lifeguard" and claim_since is None:
                claim_since = when
            elif new in ("finding_device", "closed", "expired", "end") or new.startswith("failed_"):
                if claim_since is not None:
                    claimed += when - claim_since
                    claim_since = None
    window = (r.day_end - r.day_start) * r.devices
    return {
        "requests": len(r.outcomes), "served": len(served), "failed": len(failed),
        "failed_free": free_while, "p50": percentile(waits, 0.5), "p95": percentile(waits, 0.95),
        "serving": 100 * serving / window, "claimed": 100 * claimed / window,
        "imagings": images, "cycles": cycles, "warm": warm, "stopped": stopped,
        "eta_n": len(etas), "eta_abs": statistics.median(abs_err) if abs_err else math.nan,
        "eta_rel": 100 * statistics.median(rel_err) if rel_err else math.nan,
        "attempts": sum(o.attempts for o in r.outcomes),
        "finals": sorted({o.final for o in failed}),
    }


def dump(r: Run, path: str) -> None:
    """Every request's outcome and the free-device samples, for a closer look (--keep)."""
    with open(path, "w") as f:
        json.dump({"day": [r.day_start, r.day_end], "free": r.free_samples,
                   "requests": [{**o.arrival.__dict__, "started": o.started, "ids": o.ids, "final": o.final,
                                 "eta": o.eta, "eta_read": o.eta_read, "ready_at": o.ready_at} for o in r.outcomes]},
                  f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ways", default="original,queue,warm")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--day", type=float, default=3.5 * 3600.0, help="nominal seconds the day's curve is played over")
    parser.add_argument("--load", type=float, default=0.55, help="mean demand as a share of the pool's capacity")
    parser.add_argument("--fail-rate", type=float, default=0.1)
    parser.add_argument("--warm", default=DEFAULT_WARM, help="the [warm_pool] section of the warm way")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="half the day's length")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.quick:
        args.day /= 2
    raise_fd_limit()
    plan = arrivals(args.day, args.devices, args.load, args.seed)
    say(f"workload: {len(plan)} requests over {args.day / 3600:g} nominal hours on {args.devices} simulated devices "
        f"at time scale {args.time_scale:g} ({args.day * args.time_scale:.0f} s a way); "
        f"{args.fail_rate:.0%} of imagings fail")
    workdir = tempfile.mkdtemp(prefix="mozpool-workload-")
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, Run] = {}
    try:
        for way in args.ways.split(","):
            started = time.monotonic()
            runs[way] = Way(way, workdir, args, plan).run()
            results[way] = figures(runs[way])
            if args.keep:
                dump(runs[way], os.path.join(workdir, way, "outcomes.json"))
            say(f"  {way}: done in {time.monotonic() - started:.0f} s")
    finally:
        finish(workdir, args.keep)
    say("")
    say("(times in nominal seconds; utilisation over the day: devices holding a ready request / a claim)")
    say(table(
        ["way", "requests", "served", "failed", "failed, device free", "p50 to ready", "p95 to ready",
         "util ready %", "util claimed %", "imagings", "power cycles", "ETA n", "ETA median |err| s", "ETA median err %"],
        [[w, f["requests"], f["served"], f["failed"], f["failed_free"], f["p50"], f["p95"], f["serving"], f["claimed"],
          f["imagings"], f["cycles"], f["eta_n"], f["eta_abs"], f["eta_rel"]] for w, f in results.items()],
    ))
    for way, f in results.items():
        extra = f", warm imagings {f['warm']} (stopped {f['stopped']})" if way == "warm" else ""
        attempts = f", {f['attempts']} POSTs" if way == "original" else ""
        finals = f"; failures: {', '.join(f['finals'])}" if f["finals"] else ""
        say(f"  {way}{attempts}{extra}{finals}")
        r = runs[way]
        if r.failed_devices:
            say(f"    devices failed at the end: {', '.join(r.failed_devices)}")
        for line in r.problems:
            say("    log: " + line)
    if "original" in results and "warm" in results:
        o, w = results["original"]["p50"], results["warm"]["p50"]
        say(f"target: warm p50 <= original p50 / 3: {w:.0f} vs {o / 3:.0f} -> {'met' if w <= o / 3 else 'NOT met'}")
    for way in ("queue", "warm"):
        if way in results:
            f = results[way]
            eta = ("no request waited long enough to show an estimate" if not f["eta_n"] else
                   f"ETA median error {f['eta_rel']:.0f} % (< 25 %: {'met' if f['eta_rel'] < 25 else 'NOT met'})")
            say(f"target ({way}): no failure while a device was free: {f['failed_free']}; {eta}")


if __name__ == "__main__":
    main()
