"""Boot telemetry's parts (issue 15): which transitions mark which milestone, the per-phase
quantiles, the TFTP server's ``on_read`` hook, and the /metrics families."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from mozpool.db import boots, fixtures
from mozpool.health.telemetry import BootTelemetry, actions, quantile, summarise
from mozpool.web import metrics
from tests.bmm.test_tftp import TFTPTestMixin
from tests.support.dbtest import DatabaseTest, on_both_backends

T0 = 1795694400.0  # 2026-11-26 12:00:00 UTC


class Actions(SynchronousTestCase):
    def test_a_boot_starts_at_each_pxe_power_cycle(self) -> None:
        self.assertEqual(actions("start_pxe_boot", "pxe_power_cycling"), [("start", "")])
        self.assertEqual(actions("pxe_booting", "pxe_power_cycling"), [("start", "")], "a retry is a new boot")

    def test_milestones_and_ends(self) -> None:
        self.assertEqual(actions("pxe_power_cycling", "pxe_booting"), [("mark", "power_on")])
        self.assertEqual(actions("android_extracting", "sut_verifying"), [("mark", "rebooting")])
        self.assertEqual(actions("mobile_init_started", "maintenance_mode"),
                         [("mark", "stage_started"), ("end", "complete")])
        self.assertEqual(actions("operation_complete", "ready"), [("end", "complete")])
        self.assertEqual(actions("self_test_running", "ready"), [("end", "complete")])
        self.assertEqual(actions("pxe_booting", "failed_pxe_booting"), [("end", "failed_pxe_booting")])
        self.assertEqual(actions("pxe_booting", "held"), [("end", "held")])
        self.assertEqual(actions("ready", "start_self_test"), [], "not in a boot")
        self.assertEqual(actions("sut_verifying", "sut_verify_power_cycle"), [], "still the same boot")


class Quantiles(SynchronousTestCase):
    def test_nearest_rank(self) -> None:
        values = [float(v) for v in range(1, 21)]
        self.assertEqual((quantile(values, 0.5), quantile(values, 0.95)), (10.0, 19.0))
        self.assertEqual((quantile([3.0], 0.5), quantile([3.0], 0.95)), (3.0, 3.0))

    def test_summary_per_image_and_hardware(self) -> None:
        def boot(image: str, start: int, on: int | None, outcome: str | None, ended: int | None = None) -> dict[str, Any]:
            t = lambda s: None if s is None else f"2026-11-26 12:{s // 60:02d}:{s % 60:02d}.500"  # noqa: E731
            return {"image": image, "hardware_type": "panda", "started": t(start), "power_on": t(on),
                    "ended": t(ended), "outcome": outcome}

        rows = [boot("b2g", 0, 2, "complete", 100), boot("b2g", 0, 4, "retried", 5), boot("b2g", 0, 30, None),
                boot("android", 0, None, "failed_power_cycling", 60)]
        got = summarise(rows)
        self.assertEqual([(g["image"], g["boots"], g["outcomes"]) for g in got], [
            ("android", 1, {"failed_power_cycling": 1}),
            ("b2g", 3, {"complete": 1, "retried": 1, "running": 1}),
        ])
        self.assertEqual(got[0]["phases"], {})
        self.assertEqual(got[1]["phases"], {
            "power_cycle": {"count": 3, "p50": 4.0, "p95": 30.0, "max": 30.0, "sum": 36.0},
            "total": {"count": 1, "p50": 100.0, "p95": 100.0, "max": 100.0, "sum": 100.0},
        })
        text = "\n".join(metrics.boot_lines({"groups": got}))
        self.assertIn('mozpool_boots{image="b2g",hardware_type="panda",outcome="retried"} 1', text)
        self.assertIn('mozpool_boot_phase_seconds{image="b2g",hardware_type="panda",phase="power_cycle",'
                      'quantile="0.95"} 30.0', text)
        self.assertIn('mozpool_boot_phase_seconds_count{image="b2g",hardware_type="panda",phase="power_cycle"} 3',
                      text)
        self.assertIn("# TYPE mozpool_boot_phase_seconds summary", text)


class TFTPHook(TFTPTestMixin, SynchronousTestCase):
    """The TFTP server tells ``on_read`` of every file it sent whole, and only those."""

    def setUp(self) -> None:
        super().setUp()
        self.reads: list[tuple[str, str]] = []
        self.server.on_read = lambda name, host: self.reads.append((name, host))

    def test_a_whole_file(self) -> None:
        self.write("pxelinux.cfg/01-02-00-00-00-00-01", b"default linux\n")
        port = self.rrq("pxelinux.cfg/01-02-00-00-00-00-01")
        assert port is not None
        self.assertEqual(self.reads, [])
        self.download(port)
        self.assertEqual(self.reads, [("pxelinux.cfg/01-02-00-00-00-00-01", "127.0.0.1")])

    def test_not_a_missing_or_broken_one(self) -> None:
        self.assertIsNone(self.rrq("pxelinux.cfg/01-02-00-00-00-00-09"))
        self.write("big", b"x" * 2000)
        port = self.rrq("big")
        assert port is not None
        port.protocol.datagramReceived(b"\x00\x05\x00\x00oops\x00", ("127.0.0.1", 40000))  # the client gives up
        self.assertTrue(port.closed)
        self.assertEqual(self.reads, [])

    def test_a_broken_hook_does_not_break_the_transfer(self) -> None:
        def broken(name: str, host: str) -> None:
            raise RuntimeError("hook broke")

        self.server.on_read = broken
        self.write("k", b"data")
        port = self.rrq("k")
        assert port is not None
        self.download(port)
        self.assertEqual(self.server.sessions, {})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class TFTPReads(DatabaseTest):
    async def setUp(self) -> None:
        await super().setUp()
        self.clock = task.Clock()
        self.clock.advance(T0 + 7.25)
        await fixtures.load_fixture(self.db, "a.example.com", 2, "2026-11-26 12:00:00")
        self.device_id, mac = (await self.db.query("SELECT id, mac_address FROM devices ORDER BY name"))[0]
        self.file = "pxelinux.cfg/01-" + "-".join(mac[i:i + 2] for i in range(0, 12, 2))
        self.telemetry = BootTelemetry(self.db, self.clock)

    async def read(self, name: str) -> None:
        self.telemetry.tftp_read(name, "10.0.0.9")
        while self.telemetry.writes:
            await next(iter(self.telemetry.writes))

    async def test_the_open_boot_gets_its_pxe_fetch_time(self) -> None:
        await self.read(self.file)  # no boot yet: nothing to mark
        await self.db.runInteraction(boots.start, int(self.device_id), "a.example.com", "2026-11-26 12:00:00")
        await self.read("pxelinux.cfg/default")  # not a device's file
        await self.read(self.file)
        self.clock.advance(3)
        await self.read(self.file)  # a boot loader that reads twice: the first time counts
        (boot,) = await self.db.runInteraction(boots.since, "2026-11-26 00:00:00")
        self.assertEqual(boot["pxe_fetched"], "2026-11-26 12:00:07.250")


TFTPReadsSQLite, TFTPReadsMariaDB = on_both_backends(TFTPReads)
