"""Issue 15's scenarios end to end in one process, on task.Clock and both back-ends: the state
history, failure summaries, ``why`` answers and boot telemetry checked field by field.

- a device failing alone is quarantined as before (31 PXE boots that never reach the live image
  end in ``failed_pxe_booting``), and says why;
- a request's life: created, matched, its device imaged (the live-boot events posted as a device
  posts them, the PXE config fetched over our TFTP), ready, returned.
"""

from __future__ import annotations

import json
import random
from typing import Any
from urllib.parse import urlparse

from twisted.internet import defer, task

from mozpool.broker.interfaces import RequestSpec
from mozpool.broker.service import Broker
from mozpool.db import devices, fixtures, history, logs, summary
from mozpool.health.explain import Explainer
from mozpool.health.telemetry import BootTelemetry
from mozpool.lifeguard.service import LifeGuard
from mozpool.statemachine.core import TimeoutDriver
from tests.broker.support import FakeHTTP, FakeResponse
from tests.lifeguard.support import DEV, FQDN, FakeHardware, LifeGuardTest
from tests.support.dbtest import DatabaseTest, on_both_backends

T0 = 1795694400.0  # 2026-11-26 12:00:00 UTC


class FailingAlone(LifeGuardTest):
    """panda-0001, claimed by a request, never reaches its live image."""

    async def setUp(self) -> None:
        await super().setUp()
        self.telemetry = BootTelemetry(self.db, self.clock)
        self.lg.runner.observers.append(self.telemetry.observe)
        self.explainer = Explainer(self.db, self.clock, self.telemetry)
        self.device_id = int((await self.db.query("SELECT id FROM devices WHERE name = ?", (DEV,)))[0][0])

    async def bmm_line(self, message: str) -> int:
        """What the BMM facade writes about a hardware operation (FakeHardware writes nothing)."""
        return int(await self.db.runInteraction(logs.add_log_now, "device", self.device_id, "bmm", message,
                                                self.lg.runner.now()))

    async def fail_pxe_boots(self) -> tuple[int, list[int]]:
        request_id = await self.claim()
        await self.event("please_image", {"image": "android", "boot_config": "{}"})
        await self.complete("power_cycle")
        lines = []
        for n in range(31):
            if n >= 29:
                lines.append(await self.bmm_line(f"ping failed (attempt {n + 1})"))
            await self.after(180)
            if n < 30:
                self.assertEqual(await self.state(), "pxe_power_cycling")
                await self.complete("power_cycle")
        return request_id, lines

    async def test_history_failure_and_why(self) -> None:
        request_id, lines = await self.fail_pxe_boots()
        self.assertEqual(await self.state(), "failed_pxe_booting")
        self.assertEqual(self.delivered[-1], (request_id, "lifeguard_finished", {"imaging_result": "failed-bad-device"}))

        page = await self.db.runInteraction(history.device_history_by_name, DEV, 1000)
        entries = list(reversed(page["history"]))
        self.assertIsNone(page["next_before"])
        self.assertEqual(len(entries), 3 + 30 * 2 + 1)
        self.assertEqual([(e["from"], e["to"], e["cause"], e["reason"]) for e in entries[:5]], [
            ("ready", "start_pxe_boot", "please_image", {}),
            ("start_pxe_boot", "pxe_power_cycling", "entry", {}),
            ("pxe_power_cycling", "pxe_booting", "power_cycle_ok", {}),
            ("pxe_booting", "pxe_power_cycling", "timeout", {"counter": "pxe_booting", "count": 1, "limit": 30}),
            ("pxe_power_cycling", "pxe_booting", "power_cycle_ok", {}),
        ])
        last = entries[-1]
        self.assertEqual(last, {
            "id": last["id"], "timestamp": "2026-11-26T13:33:00", "machine": "device", "device": DEV,
            "request": request_id, "from": "pxe_booting", "to": "failed_pxe_booting", "cause": "timeout",
            "server": FQDN, "reason": {"counter": "pxe_booting", "count": 31, "limit": 30},
        })
        self.assertEqual({e["request"] for e in entries}, {request_id}, "every entry names the request it served")

        failure = {
            "state": "failed_pxe_booting", "since": "2026-11-26T13:33:00",
            "reason": "pxe_booting reached 31 (limit 30) (timeout in pxe_booting)", "phase": "pxe_booting",
            "attempts": 31, "evidence": lines,
        }
        details = {d["name"]: d for d in await devices.list_details(self.db)}
        self.assertEqual(details[DEV]["failure"], failure)
        self.assertIsNone(details["panda-0002"]["failure"])
        report = await summary.pool_summary(self.db)
        self.assertEqual([(d["name"], d["failure"]) for d in report["failed_devices"]], [(DEV, failure)])
        self.assertEqual(report["failure_phases"], {"pxe_booting": 1})

        why = await self.explainer.explain_device(DEV)
        self.assertEqual(
            {k: why[k] for k in ("device", "state", "read_as", "since", "imaging_server", "image", "next_image",
                                 "hardware_type", "failure")},
            {"device": DEV, "state": "failed_pxe_booting", "read_as": "failed_pxe_booting",
             "since": "2026-11-26T13:33:00", "imaging_server": FQDN, "image": None, "next_image": "android",
             "hardware_type": "panda", "failure": failure},
        )
        self.assertEqual(why["request"], {"id": request_id, "state": "pending"})
        rule = why["rule"]
        self.assertEqual({k: rule[k] for k in ("from", "to", "cause", "at", "server", "history_id", "reason", "text")}, {
            "from": "pxe_booting", "to": "failed_pxe_booting", "cause": "timeout", "at": "2026-11-26T13:33:00",
            "server": FQDN, "history_id": last["id"], "reason": {"counter": "pxe_booting", "count": 31, "limit": 30},
            "text": "pxe_booting reached 31 (limit 30) (timeout in pxe_booting)",
        })
        self.assertEqual([(r["input"], r["to"]) for r in rule["rows"]],
                         [("timeout", "pxe_booting"), ("over_limit", "failed_pxe_booting")])
        self.assertIn("incr pxe_booting; > 30", rule["rows"][0]["does"])
        self.assertEqual(why["counters"], [{"name": "pxe_booting", "value": 31, "limit": 30, "gives_up_at": 31}])
        self.assertEqual([(e["id"], e["source"], e["message"]) for e in why["evidence"]],
                         [(lines[0], "bmm", "ping failed (attempt 30)"), (lines[1], "bmm", "ping failed (attempt 31)")])
        steps = why["next"]
        self.assertEqual((steps["timeout_at"], steps["in_seconds"], steps["on_timeout"]), (None, None, None))
        self.assertEqual([w["input"] for w in steps["waiting_for"]], ["please_self_test", "please_start_maintenance"])
        self.assertEqual(steps["summary"],
                         "no timer: waits for a person (please_self_test, please_start_maintenance or a state change)")
        boot = why["last_boot"]
        self.assertEqual((boot["outcome"], boot["image"], boot["started"], boot["power_on"], boot["ended"]),
                         ("failed_pxe_booting", "android", "2026-11-26T13:30:00", "2026-11-26T13:30:00",
                          "2026-11-26T13:33:00"))

        boots = await self.telemetry.summary(24)
        (group,) = boots["groups"]
        self.assertEqual((group["image"], group["hardware_type"], group["boots"], group["outcomes"]),
                         ("android", "panda", 31, {"retried": 30, "failed_pxe_booting": 1}))
        self.assertEqual(set(group["phases"]), {"power_cycle"}, "no boot got further than the power cycle")

    async def test_a_person_releases_it_and_the_failure_goes(self) -> None:
        await self.fail_pxe_boots()
        await self.event("please_self_test")
        self.assertEqual(await self.state(), "pxe_power_cycling")
        details = {d["name"]: d for d in await devices.list_details(self.db)}
        self.assertIsNone(details[DEV]["failure"])
        page = await self.db.runInteraction(history.device_history_by_name, DEV, 2)
        self.assertEqual([(e["from"], e["to"], e["cause"]) for e in page["history"]], [
            ("start_self_test", "pxe_power_cycling", "entry"),
            ("failed_pxe_booting", "start_self_test", "please_self_test"),
        ])
        why = await self.explainer.explain_device(DEV)
        self.assertIsNone(why["failure"])
        self.assertEqual(why["next"]["timeout_at"], "2026-11-26T13:34:00")
        self.assertEqual(why["next"]["in_seconds"], 60.0)
        self.assertEqual([o["input"] for o in why["next"]["on_timeout"]["outcomes"]],
                         ["board_at_fault", "cap_reached", "image_not_found", "over_limit", "within_limit"])
        self.assertEqual([w["input"] for w in why["next"]["waiting_for"]], ["power_cycle_failed", "power_cycle_ok"])
        self.assertEqual(why["counters"], [{"name": "power_cycling", "value": 0, "limit": 200, "gives_up_at": 201}])


FailingAloneSQLite, FailingAloneMariaDB = on_both_backends(FailingAlone)


class ToLifeGuard(FakeHTTP):
    """The broker's please_* POST, delivered to this process's LifeGuard (200 once it is handled)."""

    def __init__(self) -> None:
        super().__init__()
        self.lifeguard: LifeGuard | None = None

    def post(self, url: str, data: Any = None, **kwargs: Any) -> "defer.Deferred[Any]":
        super().post(url, data, **kwargs)
        _, _, device, _, event = urlparse(url).path.strip("/").split("/")
        assert self.lifeguard is not None
        done = self.lifeguard.device_event(device, event, json.loads(data))
        return done.addCallback(lambda _: FakeResponse(200))


class RequestLife(DatabaseTest):
    """One server: a broker and a LifeGuard on one Clock, a device imaged for a request."""

    async def setUp(self) -> None:
        await super().setUp()
        self.clock = task.Clock()
        self.clock.advance(T0)
        await fixtures.load_fixture(self.db, FQDN, 1, "2026-11-26 12:00:00")
        await self.db.query("UPDATE devices SET state = 'ready', state_timeout = NULL")
        self.http = ToLifeGuard()
        self.broker = Broker(self.db, self.clock, FQDN, 1.0, self.http, random.Random(0))
        self.addCleanup(self.broker.stop)
        self.hw = FakeHardware()
        self.lg = LifeGuard(self.db, self.clock, self.hw, FQDN, 1.0, request_events=self.broker.request_event)
        self.http.lifeguard = self.lg
        self.posted: list[defer.Deferred[Any]] = []
        post = self.lg.runner.post

        def tracked(key: str, event: str, args: Any = None) -> "defer.Deferred[Any]":
            d = post(key, event, args)
            self.posted.append(d)
            return d

        self.lg.runner.post = tracked  # type: ignore[method-assign]
        self.telemetry = BootTelemetry(self.db, self.clock)
        self.lg.runner.observers.append(self.telemetry.observe)
        self.explainer = Explainer(self.db, self.clock, self.telemetry)
        self.driver = TimeoutDriver(self.broker.runner, extra=self.broker.expire_due, interval=10)

    async def settle(self) -> None:
        while self.posted or self.lg.results.inflight or self.telemetry.writes:
            while self.posted:
                await self.posted.pop(0)
            await self.lg.results.drain()
            await self.broker.idle()
            while self.telemetry.writes:
                await next(iter(self.telemetry.writes))
        await self.broker.idle()

    async def at(self, seconds: float) -> None:
        self.clock.advance(T0 + seconds - self.clock.seconds())

    async def device_event(self, event: str) -> None:
        await self.lg.device_event(DEV, event, {})
        await self.settle()

    async def test_a_request_s_life(self) -> None:
        created = await self.broker.create_request("any", RequestSpec("tester@example.com", 3600, "android"))
        request_id = created["id"]
        await self.settle()
        await self.driver.tick()  # contact_lifeguard's 0 s timeout: the please_image POST
        await self.settle()
        await self.at(2)
        self.hw.complete("power_cycle")
        await self.settle()
        await self.at(9)
        mac = (await self.db.query("SELECT mac_address FROM devices WHERE name = ?", (DEV,)))[0][0]
        self.telemetry.tftp_read("pxelinux.cfg/01-" + "-".join(mac[i:i + 2] for i in range(0, 12, 2)), "10.0.0.9")
        await self.settle()
        for when, event in ((12, "mobile_init_started"), (13, "android_downloading"), (73, "android_extracting"),
                            (163, "android_rebooting")):
            await self.at(when)
            await self.device_event(event)
        await self.at(170)
        self.hw.complete("sut_verify")
        await self.settle()
        await self.at(175)
        self.hw.complete("sut_sdcard_check")
        await self.settle()
        self.assertEqual((await self.db.query("SELECT state FROM requests WHERE id = ?", (request_id,)))[0][0], "ready")

        why = await self.explainer.explain_request(request_id)
        self.assertEqual({k: why[k] for k in ("request", "state", "read_as", "since", "imaging_server",
                                              "requested_device", "image", "environment", "device")}, {
            "request": request_id, "state": "ready", "read_as": "ready", "since": "2026-11-26T12:02:55",
            "imaging_server": FQDN, "requested_device": "any", "image": "android", "environment": "any",
            "device": {"name": DEV, "state": "ready", "imaging_result": "complete"},
        })
        self.assertEqual((why["rule"]["from"], why["rule"]["to"], why["rule"]["cause"]),
                         ("pending", "ready", "imaging_complete"))
        self.assertEqual([(r["input"], r["to"]) for r in why["rule"]["rows"]], [("imaging_complete", "ready")])
        self.assertEqual(why["counters"], [{"name": "finding_device", "value": 1, "limit": None, "gives_up_at": None}])
        steps = why["next"]
        self.assertEqual((steps["timeout_at"], steps["on_timeout"]), (None, None))
        self.assertEqual([w["input"] for w in steps["waiting_for"]], ["close", "expire"])
        self.assertEqual((steps["expires_at"], steps["expires_in_seconds"]), ("2026-11-26T13:00:00", 3425.0))
        self.assertEqual(steps["summary"],
                         "waits for close, expire; no timer; expires at 2026-11-26T13:00:00 unless renewed, then closed")

        await self.at(180)
        await self.broker.request_event(request_id, "close", {})
        await self.settle()

        page = await self.db.runInteraction(history.request_history_if_known, request_id, 1000)
        entries = list(reversed(page["history"]))
        mine = [(e["from"], e["to"], e["cause"], e["device"], e["timestamp"]) for e in entries if e["machine"] == "request"]
        self.assertEqual(mine, [
            (None, "new", "created", None, "2026-11-26T12:00:00"),
            ("new", "finding_device", "find_device", None, "2026-11-26T12:00:00"),
            ("finding_device", "contact_lifeguard", "device_claimed", DEV, "2026-11-26T12:00:00"),
            ("contact_lifeguard", "contacting_lifeguard", "timeout", DEV, "2026-11-26T12:00:00"),
            ("contacting_lifeguard", "pending", "lifeguard_contacted", DEV, "2026-11-26T12:00:00"),
            ("pending", "ready", "imaging_complete", DEV, "2026-11-26T12:02:55"),
            ("ready", "closed", "close", DEV, "2026-11-26T12:03:00"),
        ])
        self.assertEqual(entries[0]["reason"], {"requested_device": "any", "image": "android", "environment": "any"})
        self.assertEqual(next(e for e in entries if e["cause"] == "device_claimed")["reason"],
                         {"counter": "finding_device", "count": 1})
        theirs = [(e["from"], e["to"], e["cause"], e["timestamp"]) for e in entries if e["machine"] == "device"]
        self.assertEqual(theirs, [
            ("ready", "start_pxe_boot", "please_image", "2026-11-26T12:00:00"),
            ("start_pxe_boot", "pxe_power_cycling", "entry", "2026-11-26T12:00:00"),
            ("pxe_power_cycling", "pxe_booting", "power_cycle_ok", "2026-11-26T12:00:02"),
            ("pxe_booting", "mobile_init_started", "mobile_init_started", "2026-11-26T12:00:12"),
            ("mobile_init_started", "android_downloading", "android_downloading", "2026-11-26T12:00:13"),
            ("android_downloading", "android_extracting", "android_extracting", "2026-11-26T12:01:13"),
            ("android_extracting", "sut_verifying", "android_rebooting", "2026-11-26T12:02:43"),
            ("sut_verifying", "sut_sdcard_verifying", "sut_verify_ok", "2026-11-26T12:02:50"),
            ("sut_sdcard_verifying", "operation_complete", "sut_sdcard_ok", "2026-11-26T12:02:55"),
            ("operation_complete", "ready", "entry", "2026-11-26T12:02:55"),
        ])
        self.assertEqual({e["request"] for e in entries}, {request_id})
        self.assertEqual({e["server"] for e in entries}, {FQDN})

        closed = await self.explainer.explain_request(request_id)
        self.assertEqual((closed["state"], closed["device"], closed["rule"]["cause"]), ("closed", None, "close"))
        self.assertEqual(closed["next"]["summary"], "no timer: waits for a person (a state change)")

        boots = await self.telemetry.summary(24)
        (group,) = boots["groups"]
        self.assertEqual((group["image"], group["hardware_type"], group["boots"], group["outcomes"]),
                         ("android", "panda", 1, {"complete": 1}))
        self.assertEqual({phase: stats["p50"] for phase, stats in group["phases"].items()}, {
            "power_cycle": 2.0, "pxe_fetch": 7.0, "live_boot": 3.0, "second_stage": 1.0, "download": 60.0,
            "extract": 90.0, "reboot": 7.0, "sdcard_check": 5.0, "total": 175.0,
        })


RequestLifeSQLite, RequestLifeMariaDB = on_both_backends(RequestLife)
