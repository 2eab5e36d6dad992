"""Two real daemons (two imaging servers) on one machine against one private MariaDB database,
each with its own simulated devices: shared reads, cross-server requests, owner redirects
(http-api.md section 2, state-machines.md section 2)."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mozpool.db.fixtures import DEVICES_PER_BOARD
from labservers.mariadb import mariadbURL
from tests.system.daemon import Daemon


async def raw_call(d: Daemon, method: str, url: str, body: Any = None) -> tuple[int, dict[str, list[str]], Any]:
    """One HTTP call to an absolute ``url``, redirects not followed: status, headers, parsed body."""
    data = None if body is None else json.dumps(body).encode()
    response = await treq.request(method, url, data=data, timeout=20, allow_redirects=False, pool=d.pool)
    text = await response.content()
    headers = {k.decode().lower(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()}
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return response.code, headers, parsed


async def two_servers(
    test: TestCase, fakes: int = 4, time_scale: float = 0.01, access_log: bool = False,
    extra_args: tuple[str, ...] = (),
) -> tuple[Daemon, Daemon]:
    """A, then B once A has created the schema and seeded its devices, on one fresh MariaDB database."""
    url = mariadbURL(test)
    config = "[server]\naccess_log = true" if access_log else ""
    for _ in range(20):
        a = Daemon(test, fakes=fakes, db=url, time_scale=time_scale, config=config, extra_args=extra_args)
        b = Daemon(test, fakes=fakes, db=url, time_scale=time_scale, config=config, extra_args=extra_args)
        if distinct_tcp_ports(a, b, fakes):
            break
    await a.start()
    # Answering /api/version/ is not enough: twistd binds the HTTP port (privilegedStartService)
    # before A has created the schema and seeded its devices.
    await owned_devices(a, fakes)
    await b.start()
    await owned_devices(b, fakes)
    return a, b


def distinct_tcp_ports(a: Daemon, b: Daemon, fakes: int) -> bool:
    """Daemon's free_port() probes and closes, so two probes can name the same port (seen: a
    relay board on the HTTP port, every device failed_power_cycling); reject such a draw."""
    boards = (fakes + DEVICES_PER_BOARD - 1) // DEVICES_PER_BOARD
    ports = [a.port, b.port] + [d.relay_base + i for d in (a, b) for i in range(boards)]
    return len(set(ports)) == len(ports) and a.tftp_port != b.tftp_port


async def owned_devices(d: Daemon, count: int, timeout: float = 60) -> list[str]:
    """Wait until the shared database lists ``count`` devices owned by ``d``."""

    async def seeded() -> list[str] | None:
        code, body = await d.call("GET", "/api/device/list/?details")
        if code != 200:
            return None
        mine = [x["name"] for x in body["devices"] if x["imaging_server"] == d.fqdn]
        return mine if len(mine) == count else None

    return await d.wait_for(seeded, timeout, f"{count} devices owned by {d.fqdn}")


def daemon_errors(d: Daemon) -> list[str]:
    """Log lines that mean a daemon bug: critical lines (an unexpected exception), and 500s.
    The simulated devices' own critical lines (a simulated device hangs when its POST to the
    API times out) are behaviour, not bugs."""
    found: list[str] = []
    taking = False
    for line in d.log_text().splitlines():
        if line.startswith("\t"):
            if taking:  # the traceback that follows a critical line: why it failed
                found[-1] += "\n" + line
            continue
        taking = "#critical]" in line and "[mozpool.fakes." not in line
        if taking or 'HTTP/1.1" 500' in line:
            found.append(line)
    return found


def by_name(devices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {x["name"]: x for x in devices}


class TwoServers(TestCase):
    timeout = 300

    async def test_two_pools_on_one_database(self) -> None:
        a, b = await two_servers(self, access_log=True)
        self.assertNotEqual(a.fqdn, b.fqdn)

        # Both pools reach ready; either server lists all eight devices with their owners.
        await a.wait_ready()
        await b.wait_ready()
        listed_a = by_name((await a.get("/api/device/list/?details"))["devices"])
        listed_b = by_name((await b.get("/api/device/list/?details"))["devices"])
        self.assertEqual(sorted(listed_a), sorted(listed_b))
        self.assertEqual(len(listed_a), 8)
        owners = {name: row["imaging_server"] for name, row in listed_a.items()}
        mine_a = sorted(n for n, o in owners.items() if o == a.fqdn)
        mine_b = sorted(n for n, o in owners.items() if o == b.fqdn)
        self.assertEqual((len(mine_a), len(mine_b)), (4, 4), owners)
        self.assertEqual(mine_a, [f"panda-{i:04d}" for i in range(1, 5)])
        self.assertTrue(all(n.endswith("-panda-" + n[-4:]) and n != "panda-" + n[-4:] for n in mine_b), mine_b)
        self.assertEqual({r["state"] for r in listed_b.values()}, {"ready"})
        self.assertEqual((await a.get("/api/device/list/"))["devices"], (await b.get("/api/device/list/"))["devices"])

        # A request on A for B's (named) device: A owns the request, B images the device, B's
        # LifeGuard reports back to A over HTTP, the request reaches ready.
        target = mine_b[0]
        code, body = await a.request(target, image="android")
        self.assertEqual(code, 200, body)
        rid = body["request"]["id"]
        self.assertEqual(body["request"]["url"], f"http://{a.fqdn}/api/request/{rid}/")
        self.assertEqual(await a.wait_request(rid, timeout=90), "ready")
        details = await a.get(f"/api/request/{rid}/details/")
        self.assertEqual(details["assigned_device"], target)
        listed = by_name((await b.get("/api/device/list/?details"))["devices"])
        self.assertEqual((listed[target]["request_id"], listed[target]["image"], listed[target]["state"]),
                         (rid, "android", "ready"))
        requests = {r["id"]: r for r in (await b.get("/api/request/list/"))["requests"]}
        self.assertEqual(requests[rid]["imaging_server"], a.fqdn)
        device_log = " | ".join(e["message"] for e in (await a.get(f"/api/device/{target}/log/"))["log"])
        self.assertIn("sending imaging result 'complete'", device_log)
        self.assertIn("android", device_log)
        # B's please_image arrived at B (redirected or direct) and B's result arrived at A.
        self.assertIn(f'"POST /api/device/{target}/event/please_image/ HTTP/1.1" 200', b.log_text())
        self.assertIn(f'"POST /api/request/{rid}/event/lifeguard_finished/ HTTP/1.1" 200', a.log_text())
        self.assertNotIn(f"/api/device/{target}/event/please_image/", a.log_text())

        # Mutating calls for B's device sent to A: 302 to the same path on B; repeating the same
        # method and body at Location works there.
        cases: list[tuple[str, str, Any, int]] = [
            ("POST", f"/api/device/{target}/set-comments/", {"comments": "moved by the system test"}, 200),
            ("GET", f"/api/device/{target}/ping/", None, 200),
            ("POST", f"/api/device/{target}/set-environment/", {"environment": "staging"}, 200),
        ]
        for method, path, payload, want in cases:
            code, headers, answer = await raw_call(a, method, a.url + path, payload)
            self.assertEqual(code, 302, (path, answer))
            location = f"http://{b.fqdn}{path}"
            self.assertEqual(headers.get("location"), [location])
            self.assertEqual(answer, {"redirect": location})
            code, headers, answer = await raw_call(b, method, location, payload)
            self.assertEqual(code, want, (path, answer))
        self.assertEqual(answer, {})
        listed = by_name((await a.get("/api/device/list/?details"))["devices"])
        self.assertEqual((listed[target]["comments"], listed[target]["environment"]),
                         ("moved by the system test", "staging"))
        code, _, answer = await raw_call(b, "GET", b.url + f"/api/device/{target}/ping/")
        self.assertEqual((code, answer), (200, {"success": True}))

        # The request is A's: calls on it sent to B go to A (query string kept).
        code, headers, answer = await raw_call(b, "POST", b.url + f"/api/request/{rid}/renew/?x=1", {"duration": 600})
        self.assertEqual(code, 302, answer)
        self.assertEqual(headers.get("location"), [f"http://{a.fqdn}/api/request/{rid}/renew/?x=1"])
        code, _, answer = await raw_call(a, "POST", headers["location"][0], {"duration": 600})
        self.assertEqual(code, 204, answer)

        # Return on A frees B's device (B's LifeGuard then takes it back to ready).
        code, _ = await a.call("POST", f"/api/request/{rid}/return/")
        self.assertEqual(code, 204)
        self.assertEqual(await a.request_state(rid), "closed")
        listed = by_name((await b.get("/api/device/list/?details"))["devices"])
        self.assertIsNone(listed[target]["request_id"])
        await b.wait_ready([target])

        # As many `any` requests on A as there are devices: each lands on a distinct device, on
        # both servers, and every one reaches ready.
        ids = []
        for _ in range(8):
            code, body = await a.request("any", image="android", duration=600)
            self.assertEqual(code, 200, body)
            ids.append(body["request"]["id"])
        for request_id in ids:
            self.assertEqual(await a.wait_request(request_id, timeout=120), "ready")
        assigned = [(await a.get(f"/api/request/{i}/details/"))["assigned_device"] for i in ids]
        self.assertEqual(sorted(assigned), sorted(owners))
        for request_id in ids:
            code, _ = await a.call("POST", f"/api/request/{request_id}/return/")
            self.assertEqual(code, 204)
        listed = by_name((await a.get("/api/device/list/?details"))["devices"])
        self.assertEqual({r["request_id"] for r in listed.values()}, {None})
        await a.wait_ready(timeout=120)

        for d in (a, b):
            self.assertEqual(daemon_errors(d), [], d.log_path)

    async def test_both_started_at_once(self) -> None:
        """Two daemons started at the same moment on an empty database: whichever loses the race
        to create the schema or to seed its devices retries, and both pools come up."""
        url = mariadbURL(self)
        for _ in range(20):
            a = Daemon(self, fakes=3, db=url)
            b = Daemon(self, fakes=3, db=url)
            if distinct_tcp_ports(a, b, 3):
                break
        await defer.gatherResults([defer.ensureDeferred(a.start()), defer.ensureDeferred(b.start())])
        await defer.gatherResults([defer.ensureDeferred(owned_devices(a, 3)), defer.ensureDeferred(owned_devices(b, 3))])
        await a.wait_ready()
        listed = by_name((await a.get("/api/device/list/?details"))["devices"])
        self.assertEqual(len(listed), 6)
        self.assertEqual({r["state"] for r in listed.values()}, {"ready"})
        for d in (a, b):
            self.assertIn(f"serving as {d.fqdn}", d.log_text())
            self.assertIn("objects made at start-up frozen", d.log_text(), "mozpool.heap, once start-up settled")
            self.assertEqual(daemon_errors(d), [], d.log_path)
