"""Prometheus text exposition for ``/metrics`` (spec 7.3): HTTP counters kept in memory, pool
gauges read from the database with a few aggregate queries per scrape."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Iterable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The first bucket's bound: the calls :meth:`HTTPMetrics.tally` counts took no longer.
FIRST_BUCKET = BUCKETS[0]
#: The window of the boot telemetry families, in hours (issue 15).
BOOT_HOURS = 24
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


class HTTPMetrics:
    """Counts and durations of the calls this process served, by route template."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str], list[float]] = {}
        #: (method, route, status) -> [calls, seconds] of :meth:`tally`'s counters, not yet folded in
        self._tallies: dict[tuple[str, str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one call; its duration goes to the first bucket that holds it (made cumulative
        when scraped: this runs for every call, ``state/?cache=1``'s cheapest included)."""
        key = (method, route, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.durations.get((method, route))
        if hist is None:
            hist = self.durations[(method, route)] = [0.0] * (len(BUCKETS) + 2)
        hist[bisect_left(BUCKETS, seconds)] += 1  # index len(BUCKETS): only in +Inf
        hist[len(BUCKETS) + 1] += max(seconds, 0.0)  # sum

    def tally(self, method: str, route: str, status: int) -> list[float]:
        """A counter ``[calls, seconds]`` for the hottest path (``state/?cache=1`` answered at
        once), folded in when scraped: the caller adds each call that took 0 to
        :data:`FIRST_BUCKET` seconds to it (and hands any other to :meth:`observe`), at a fifth
        of an observe's cost."""
        key = (method, route, str(status))
        found = self._tallies.get(key)
        if found is None:
            found = self._tallies[key] = [0, 0.0]
        return found

    def _fold(self) -> None:
        for (method, route, status), counter in self._tallies.items():
            calls, seconds = counter
            if not calls:
                continue
            counter[0], counter[1] = 0, 0.0
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + int(calls)
            hist = self.durations.get((method, route))
            if hist is None:
                hist = self.durations[(method, route)] = [0.0] * (len(BUCKETS) + 2)
            hist[0] += calls
            hist[len(BUCKETS) + 1] += seconds

    def lines(self) -> Iterable[str]:
        self._fold()
        yield "# HELP mozpool_http_requests_total HTTP calls served by this process."
        yield "# TYPE mozpool_http_requests_total counter"
        for (method, route, status), n in sorted(self.requests.items()):
            yield f"mozpool_http_requests_total{_labels(method=method, route=route, status=status)} {n}"
        yield "# HELP mozpool_http_request_duration_seconds Time to answer, this process."
        yield "# TYPE mozpool_http_request_duration_seconds histogram"
        for (method, route), hist in sorted(self.durations.items()):
            below = 0
            for i, bound in enumerate(BUCKETS):
                below += int(hist[i])
                lab = _labels(method=method, route=route, le=repr(bound))
                yield f"mozpool_http_request_duration_seconds_bucket{lab} {below}"
            count = below + int(hist[len(BUCKETS)])
            lab = _labels(method=method, route=route, le="+Inf")
            yield f"mozpool_http_request_duration_seconds_bucket{lab} {count}"
            lab = _labels(method=method, route=route)
            yield f"mozpool_http_request_duration_seconds_sum{lab} {hist[len(BUCKETS) + 1]!r}"
            yield f"mozpool_http_request_duration_seconds_count{lab} {count}"


def boot_lines(summary: dict[str, Any]) -> Iterable[str]:
    """Boot telemetry (mozpool.health.telemetry): boots by outcome, and each phase's p50/p95 as a
    Prometheus summary, per image and hardware type, over the last :data:`BOOT_HOURS`."""
    yield f"# HELP mozpool_boots Boots started in the last {BOOT_HOURS} h, by outcome (running: not ended yet)."
    yield "# TYPE mozpool_boots gauge"
    for group in summary["groups"]:
        for outcome, n in sorted(group["outcomes"].items()):
            lab = _labels(image=group["image"], hardware_type=group["hardware_type"], outcome=outcome)
            yield f"mozpool_boots{lab} {n}"
    yield (f"# HELP mozpool_boot_phase_seconds Seconds each boot phase took, as this daemon observed it, over"
           f" the last {BOOT_HOURS} h.")
    yield "# TYPE mozpool_boot_phase_seconds summary"
    for group in summary["groups"]:
        for phase, stats in group["phases"].items():
            base = {"image": group["image"], "hardware_type": group["hardware_type"], "phase": phase}
            for q, key in (("0.5", "p50"), ("0.95", "p95")):
                yield f"mozpool_boot_phase_seconds{_labels(**base, quantile=q)} {stats[key]!r}"
            yield f"mozpool_boot_phase_seconds_sum{_labels(**base)} {stats['sum']!r}"
            yield f"mozpool_boot_phase_seconds_count{_labels(**base)} {stats['count']}"


def render(
    version: str, pool: dict[str, Any] | None, http: HTTPMetrics, events: Any = None,
    boots: dict[str, Any] | None = None,
) -> bytes:
    """The whole scrape; ``pool`` is None when the database did not answer; ``events`` is the
    event hub, when the daemon has one; ``boots`` the boot telemetry's summary, when there is one."""
    out = [
        "# HELP mozpool_build_info Version of this daemon.",
        "# TYPE mozpool_build_info gauge",
        f"mozpool_build_info{_labels(version=version)} 1",
        "# HELP mozpool_db_up 1 if the database answered this scrape.",
        "# TYPE mozpool_db_up gauge",
        f"mozpool_db_up {0 if pool is None else 1}",
    ]
    if pool is not None:
        out += ["# HELP mozpool_devices Devices in each state, pool-wide.", "# TYPE mozpool_devices gauge"]
        for state, n in sorted(pool["devices"].items()):
            out.append(f"mozpool_devices{_labels(state=state)} {n}")
        out += [
            "# HELP mozpool_devices_by_category Devices by hardware type and category (see /api/pool/summary/).",
            "# TYPE mozpool_devices_by_category gauge",
        ]
        for hwtype, cats in sorted(pool["by_category"].items()):
            for cat, n in cats.items():
                out.append(f"mozpool_devices_by_category{_labels(hardware_type=hwtype, category=cat)} {n}")
        out += ["# HELP mozpool_requests Requests in each state, closed excluded.", "# TYPE mozpool_requests gauge"]
        for state, n in sorted(pool["requests"].items()):
            out.append(f"mozpool_requests{_labels(state=state)} {n}")
        if "health" in pool:
            out.extend(health_lines(pool["health"]))
    if events is not None:
        out += [
            "# HELP mozpool_event_subscribers Open /api/events streams on this process.",
            "# TYPE mozpool_event_subscribers gauge",
            f"mozpool_event_subscribers {len(events.subscribers)}",
            "# HELP mozpool_events_published_total Events this process published.",
            "# TYPE mozpool_events_published_total counter",
            f"mozpool_events_published_total {events.published}",
            "# HELP mozpool_event_subscribers_dropped_total Streams dropped for not reading.",
            "# TYPE mozpool_event_subscribers_dropped_total counter",
            f"mozpool_event_subscribers_dropped_total {events.dropped}",
        ]
    if pool is not None and boots is not None:
        out.extend(boot_lines(boots))
    out.extend(http.lines())
    return ("\n".join(out) + "\n").encode("utf-8")


def health_lines(health: dict[str, Any]) -> Iterable[str]:
    """Fault isolation (issue 15): power controllers by health, each suspect one, held devices."""
    yield "# HELP mozpool_power_controllers Power controllers (relay boards, PDUs) by health, pool-wide."
    yield "# TYPE mozpool_power_controllers gauge"
    for state, n in sorted(health["boards"].items()):
        yield f"mozpool_power_controllers{_labels(health=state)} {n}"
    yield "# HELP mozpool_power_controller_suspect 1 for each suspect power controller."
    yield "# TYPE mozpool_power_controller_suspect gauge"
    for name, server in health["suspect"]:
        yield f"mozpool_power_controller_suspect{_labels(board=name, imaging_server=server)} 1"
    yield "# HELP mozpool_devices_held Devices held past their server's cap on automatic quarantines."
    yield "# TYPE mozpool_devices_held gauge"
    for server, n in sorted(health["held"].items()):
        yield f"mozpool_devices_held{_labels(imaging_server=server)} {n}"
