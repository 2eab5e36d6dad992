"""Benchmark: the simulated pool (``--fakes N``) at time scale 0.01 -- time from daemon start to all
N devices ``ready``, and from an ``any`` android request to the request's ``ready``, for
N = 20, 200 and 2,000, against the nominal durations computed from the code's own constants.

    PYTHONPATH=. python bench/demo.py            # N = 20, 200, 2000; 3 requests each
    PYTHONPATH=. python bench/demo.py --quick    # N = 20, 200; 2 requests each

Nominal (happy path, every duration at its mean, scaled):

- start to ready (self-test): the device's relay cycle waits behind the others on its board
  (32 devices share one; each cycle holds the board for cycle pause + recovery pause), then
  power-off pause, ``booting``, ``mobile_init_started``, ``self_test_running``.
- request to ready (android): power-off pause, ``booting``, ``mobile_init_started``,
  ``android_downloading``, ``android_extracting``, ``android_rebooting``, then LifeGuard's
  ``sut_verifying`` timeout (its first SUT verify comes while the device is still rebooting, so
  the state waits out its timeout before verifying again), or the device's reboot if longer.

Target: request-to-ready within 1.2x the nominal sum at every N.  Every phase is its mean plus a
uniform spread (android_extracting is 90 +- 60 s), so one install's own time varies a lot; the
verdict uses the sum of the durations the assigned device really drew, which the simulator logs,
so that what is measured is the daemon's overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.daemons import Daemon, free_port_range, get_json, http_call, raise_fd_limit  # noqa: E402
from bench.report import finish, report_log_problems, say, table  # noqa: E402
from mozpool.bmm.relay import RelayTiming  # noqa: E402
from mozpool.fakes.device import PHASE_DURATIONS, REBOOT_SECONDS  # noqa: E402
from mozpool.fakes.relayboard import DEFAULT_RECOVERY_PAUSE  # noqa: E402
from mozpool.lifeguard.machine import TIMEOUTS  # noqa: E402
from mozpool.statemachine.core import POLL_INTERVAL  # noqa: E402

DEVICES_PER_BOARD = 32


def phase(name: str) -> float:
    return float(PHASE_DURATIONS[name][0])


def nominal_request_to_ready() -> tuple[float, list[tuple[str, float]]]:
    """Unscaled seconds of the android happy path, with its parts."""
    timing = RelayTiming()
    reboot_to_sut = phase("android_rebooting") + REBOOT_SECONDS + phase("booting")
    parts = [
        ("relay off->on (cycle_pause)", timing.cycle_pause),
        ("booting", phase("booting")),
        ("mobile_init_started", phase("mobile_init_started")),
        ("android_downloading", phase("android_downloading")),
        ("android_extracting", phase("android_extracting")),
        ("sut_verifying timeout (covers android_rebooting + reboot + booting = %g)" % reboot_to_sut,
         max(float(TIMEOUTS["sut_verifying"] or 0), reboot_to_sut)),
    ]
    return sum(p for _, p in parts), parts


_PHASE_LINE = re.compile(r"\] (\S+): (\w+) for ([\d.]+) s$", re.M)


def drawn_request_to_ready(log_text: str, device: str) -> float | None:
    """Unscaled seconds of the happy path as ``device`` really drew its phases for its latest
    install (the simulator logs each draw): the same sum as :func:`nominal_request_to_ready`,
    so the ratio to it is what the daemon adds, free of the phases' random spread."""
    phases = [(p, float(secs)) for d, p, secs in _PHASE_LINE.findall(log_text) if d == device]
    names = [p for p, _ in phases]
    if "android_downloading" not in names:
        return None
    i = len(names) - 1 - names[::-1].index("android_downloading")
    if i < 2 or names[i - 2:i] != ["booting", "mobile_init_started"] or names[i + 1:i + 4] != [
        "android_extracting", "android_rebooting", "booting"
    ]:
        return None
    booting, init, download, extract, reboot, booting2 = (secs for _, secs in phases[i - 2:i + 4])
    return RelayTiming().cycle_pause + booting + init + download + extract + max(
        float(TIMEOUTS["sut_verifying"] or 0), reboot + REBOOT_SECONDS + booting2
    )


def nominal_start_to_ready(n: int) -> float:
    """Unscaled seconds until the last device of a full board is ready after a self-test."""
    timing = RelayTiming()
    depth = min(n, DEVICES_PER_BOARD)
    slot = timing.cycle_pause + max(timing.recovery_pause, DEFAULT_RECOVERY_PAUSE)
    return (depth - 1) * slot + timing.cycle_pause + phase("booting") + phase("mobile_init_started") + \
        phase("self_test_running")


def wait_all_ready(daemon: Daemon, n: int, timeout: float) -> tuple[float | None, dict[str, Any]]:
    start = daemon.started_at
    summary: dict[str, Any] = {}
    while time.monotonic() - start < timeout:
        code, body = http_call(daemon.port, "GET", "/api/pool/summary/")
        if code == 503:  # the API listens while start-up creates the schema
            time.sleep(0.05)
            continue
        if code != 200:
            raise RuntimeError(f"GET /api/pool/summary/ -> {code}: {body[:300]!r}")
        summary = json.loads(body)
        if summary["by_category"]["idle"] == n:
            return time.monotonic() - start, summary
        time.sleep(0.05)
    return None, summary


def one_request(daemon: Daemon, timeout: float) -> tuple[float | None, str, str, list[tuple[float, str]], float | None]:
    """POST an ``any`` android request and poll (10 ms) until it is ready; also records the
    assigned device's state transitions with their times, for the phase breakdown, and the
    unscaled sum of the phases the device drew (None if not found in the log)."""
    t = time.monotonic()
    code, body = http_call(daemon.port, "POST", "/api/device/any/request/",
                           {"assignee": "bench", "duration": 3600, "image": "android", "environment": "any"})
    if code != 200:
        return None, f"POST {code}", body[:200].decode("utf-8", "replace"), [], None
    rid = json.loads(body)["request"]["id"]
    state, device = "", ""
    timeline: list[tuple[float, str]] = []
    while time.monotonic() - t < timeout:
        if not device:
            device = get_json(daemon.port, f"/api/request/{rid}/details/").get("assigned_device", "")
        if device:
            dstate = get_json(daemon.port, f"/api/device/{device}/state/")["state"]
            if not timeline or timeline[-1][1] != dstate:
                timeline.append((time.monotonic() - t, dstate))
        state = get_json(daemon.port, f"/api/request/{rid}/status/")["state"]
        if state == "ready":
            elapsed = time.monotonic() - t
            http_call(daemon.port, "POST", f"/api/request/{rid}/return/")
            return elapsed, state, device, timeline, drawn_request_to_ready(daemon.log_text(), device)
        if state.startswith("failed_") or state == "closed":
            break
        time.sleep(0.01)
    http_call(daemon.port, "POST", f"/api/request/{rid}/return/")
    return None, state, device, timeline, None


def run_n(n: int, scale: float, requests: int, workdir: str) -> dict[str, Any]:
    boards = (n + DEVICES_PER_BOARD - 1) // DEVICES_PER_BOARD
    daemon = Daemon(os.path.join(workdir, f"n{n}"), "sqlite:///" + os.path.join(workdir, f"n{n}.sqlite"),
                    fakes=n, time_scale=scale, relay_base=free_port_range(boards))
    res: dict[str, Any] = {"n": n}
    try:
        res["answer_s"] = daemon.start(timeout=120)
        res["ready_s"], summary = wait_all_ready(daemon, n, timeout=max(120.0, 0.1 * n))
        res["summary"] = summary["by_category"] if summary else {}
        res["requests"] = [one_request(daemon, timeout=120) for _ in range(requests)] if res["ready_s"] else []
    finally:
        daemon.stop()
    res["problems"] = daemon.log_problems()
    res["tick_skips"] = daemon.count("timeout tick still running")
    res["pxe_cycle_timeouts"] = daemon.count("handling timeout on pxe_power_cycling")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 20, 200; 2 requests each")
    p.add_argument("--sizes", help="comma-separated N values")
    p.add_argument("--requests", type=int)
    p.add_argument("--time-scale", type=float, default=0.01)
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    options = p.parse_args(argv)
    sizes = [int(x) for x in options.sizes.split(",")] if options.sizes else ([20, 200] if options.quick
                                                                               else [20, 200, 2000])
    requests = options.requests or (2 if options.quick else 3)
    scale = options.time_scale
    raise_fd_limit()

    req_nominal, parts = nominal_request_to_ready()
    workdir = tempfile.mkdtemp(prefix="mozpool-bench-demo-")
    results = []
    for n in sizes:
        say(f"[N={n}] starting a daemon with --fakes {n} --time-scale {scale:g} ...")
        r = run_n(n, scale, requests, workdir)
        results.append(r)
        times = [q[0] for q in r["requests"]]
        say(f"[N={n}] all ready after {r['ready_s']} s; requests to ready: "
            + ", ".join(f"{t:.2f}" if t is not None else "n/a" for t in times))

    say(f"\nTime scale {scale:g}; poll interval {POLL_INTERVAL * scale:g} s; {os.cpu_count()} CPUs")
    say(f"Nominal android request-to-ready: {req_nominal:g} s unscaled = {req_nominal * scale:.3f} s scaled:")
    for name, secs in parts:
        say(f"    {secs:6g} s  {name}")
    rows = []
    for r in results:
        times = [q[0] for q in r["requests"] if q[0] is not None]
        drawn = [q[0] / (q[4] * scale) for q in r["requests"] if q[0] is not None and q[4]]
        start_nominal = nominal_start_to_ready(r["n"]) * scale
        mean = sum(times) / len(times) if times else None
        worst = max(times) if times else None
        rows.append([
            r["n"], r["answer_s"], r["ready_s"] if r["ready_s"] is not None else "n/a", start_nominal,
            (r["ready_s"] / start_nominal) if r["ready_s"] else "n/a",
            ", ".join(f"{t:.2f}" for t in times) or "n/a", req_nominal * scale,
            f"{mean / (req_nominal * scale):.2f}" if mean else "n/a",
            f"{worst / (req_nominal * scale):.2f}" if worst else "n/a",
            ", ".join(f"{x:.2f}" for x in drawn) or "n/a",
            r["pxe_cycle_timeouts"],
        ])
    say(table(["N", "API up s", "all ready s", "nominal s", "x nominal", "request->ready s", "nominal s",
               "mean x", "worst x", "x drawn", "pxe_power_cycling timeouts"], rows))
    say("\n'x drawn': request-to-ready over the same sum with the durations the device really drew")
    say("(each phase is mean +- a uniform spread, so one install alone can take 0.6x-1.5x the mean sum).")
    say("\nTarget: request-to-ready within 1.2x the phase sum at every N (judged on the drawn sum)")
    for r in results:
        times = [q[0] for q in r["requests"] if q[0] is not None]
        drawn = [q[0] / (q[4] * scale) for q in r["requests"] if q[0] is not None and q[4]]
        worst = max(times) / (req_nominal * scale) if times else None
        worst_drawn = max(drawn) if drawn else None
        complete = len(times) == len(r["requests"]) == len(drawn)
        verdict = "met" if complete and worst_drawn is not None and worst_drawn <= 1.2 else "MISSED"
        say(f"  N={r['n']:5d}: worst {worst_drawn if worst_drawn is None else round(worst_drawn, 2)}x the drawn sum "
            f"({worst if worst is None else round(worst, 2)}x the mean sum) -> {verdict}")
        failed = [(q[1], q[2]) for q in r["requests"] if q[0] is None]
        if failed:
            say(f"    requests that did not reach ready: {failed}")
        if r["requests"] and r["requests"][0][3]:
            tl = r["requests"][0][3]
            steps = [f"{st} {(tl[i + 1][0] if i + 1 < len(tl) else r['requests'][0][0] or tl[i][0]) - at:.2f}"
                     for i, (at, st) in enumerate(tl)]
            say(f"    first request, device states (s in each, 10 ms polling; first seen at {tl[0][0]:.2f} s): "
                + ", ".join(steps))
        report_log_problems(r)
    finish(workdir, options.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
