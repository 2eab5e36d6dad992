"""twistd options and the service tree."""

from __future__ import annotations

from typing import Any

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mozpool.tap import Options
from tests.support.dbtest import DatabaseTest


def parse(*argv: str) -> Options:
    o = Options()
    o.parseOptions(list(argv))
    return o


class OptionParsing(SynchronousTestCase):
    def test_every_contract_option(self) -> None:
        o = parse(
            "--port", "8011", "--listen-host", "127.0.0.1", "--tftp-port", "6970", "--tftp-root", "/srv/tftp",
            "--db", "mysql://u:p@h:3306/d", "--fqdn", "img1.example.com:8011", "--fakes", "3",
            "--time-scale", "0.01", "--manhole", "tcp:2222:interface=127.0.0.1",
            "--config", self.configWithPassword(),
        )
        c = o.config
        self.assertEqual(
            (c.port, c.listen_host, c.tftp_port, c.tftp_root, c.db_url, c.fqdn, c.fakes, c.time_scale, c.manhole_endpoint),
            (8011, "127.0.0.1", 6970, "/srv/tftp", "mysql://u:p@h:3306/d", "img1.example.com:8011", 3, 0.01,
             "tcp:2222:interface=127.0.0.1"),
        )

    def configWithPassword(self) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[manhole]\npassword = pw\n")
        return path

    def test_fakes_defaults(self) -> None:
        """The demo needs no root: an unprivileged TFTP port and local files."""
        c = parse("--fakes", "20").config
        self.assertEqual((c.tftp_port, c.tftp_root, c.db_url), (6969, "tftproot", "sqlite:///mozpool.sqlite"))
        self.assertEqual(parse("--fakes", "20", "--tftp-port", "7000").config.tftp_port, 7000)
        self.assertEqual(parse().config.tftp_port, 69)

    def test_bad_values(self) -> None:
        for argv in (["--port", "x"], ["--fakes", "-1"], ["--time-scale", "fast"], ["--config", "/nonexistent"],
                     ["--manhole", "tcp:2222"], ["--bogus"]):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_remote_manhole_refused(self) -> None:
        with self.assertRaises(usage.UsageError) as e:
            parse("--manhole", "tcp:2222:interface=0.0.0.0", "--config", self.configWithPassword())
        self.assertIn("loopback", str(e.exception))


class FaultInjectionOptions(SynchronousTestCase):
    def test_fail_flag_and_config_section(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[fakes]\nrelay_base_port = 41000\nseed = 3\nandroid_extracting = 0.2\npanda-0003.b2g_downloading = 1\n")
        o = parse("--fakes", "4", "--config", path, "--fail", "panda-0002:android_downloading", "--fail", "*:booting:0.5")
        from mozpool.tap import fake_failures

        failures = fake_failures(o.config)
        self.assertEqual(failures.defaults, {"android_extracting": 0.2, "booting": 0.5})
        self.assertEqual(failures.devices, {"panda-0003": {"b2g_downloading": 1.0}, "panda-0002": {"android_downloading": 1.0}})

    def test_bad_fault_injection_refused(self) -> None:
        for argv in (["--fakes", "2", "--fail", "panda-0001"], ["--fakes", "2", "--fail", "panda-0001:nonsense"],
                     ["--fakes", "2", "--fail", "panda-0001:booting:2"], ["--fail", "panda-0001:booting"]):
            self.assertRaises(usage.UsageError, parse, *argv)


class PdudaemonFakes(DatabaseTest, TestCase):
    """``[fakes] pdudaemon``: the last devices seeded behind simulated plugs, and checked."""

    def config(self, text: str, fakes: str = "6") -> Options:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[fakes]\nrelay_base_port = 41000\n" + text)
        return parse("--fakes", fakes, "--config", path, "--fqdn", "img1:8010")

    def test_settings_are_not_failure_probabilities(self) -> None:
        from mozpool.tap import fake_failures, fake_pdudaemon

        o = self.config("pdudaemon = 5\npdudaemon_url = http://127.0.0.1:16500\nplug_base_port = 42000\n"
                        "pdudaemon_config = p.json\n")
        self.assertEqual(fake_failures(o.config).defaults, {})
        self.assertEqual(fake_pdudaemon(o.config), (5, "127.0.0.1:16500"))
        self.assertEqual(fake_pdudaemon(self.config("").config), (0, "127.0.0.1:16421"))

    def test_bad_settings_refused(self) -> None:
        for text in ("pdudaemon = 7\n", "pdudaemon = x\n", "pdudaemon = 1\npdudaemon_url = ftp://h/\n",
                     "pdudaemon = 1\npdudaemon_url = http://h:notaport\n"):
            self.assertRaises(usage.UsageError, self.config, text)

    async def test_seeded_behind_plugs(self) -> None:
        from mozpool.tap import prepare_database

        o = self.config("pdudaemon = 5\npdudaemon_url = http://127.0.0.1:16500\nplug_base_port = 42000\n")
        from twisted.internet import reactor

        await prepare_database(self.db, o.config, reactor)
        rows = await self.db.query("SELECT name, relay_info FROM devices ORDER BY name")
        self.assertEqual(rows[0], ("panda-0001", "localhost:41000:bank1:relay1"))
        self.assertEqual(rows[1:], [(f"panda-{i:04d}", f"pdudaemon://127.0.0.1:16500/127.0.0.1:{p}/{o}") for i, p, o in (
            (2, 42000, 1), (3, 42000, 2), (4, 42000, 3), (5, 42000, 4), (6, 42001, 1))])
        boards = await self.db.query("SELECT name, fqdn FROM relay_boards ORDER BY name")
        self.assertEqual(boards, [("127.0.0.1-42000", "pdudaemon://127.0.0.1:16500/127.0.0.1:42000"),
                                  ("127.0.0.1-42001", "pdudaemon://127.0.0.1:16500/127.0.0.1:42001"),
                                  ("localhost-41000", "localhost:41000")])


class PingToolCheck(DatabaseTest, TestCase):
    async def test_missing_fping_is_said_clearly_when_real_devices_exist(self) -> None:
        from twisted.logger import capturedLogs

        from mozpool.db import fixtures
        from mozpool.tap import check_ping_tool

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[ping]\nfping = /nonexistent/fping\n")
        config = parse("--config", path, "--fqdn", "img1:8010").config
        with capturedLogs() as events:
            await check_ping_tool(self.db, config)
        self.assertEqual([e for e in events if e.get("log_level").name == "error"], [], "no devices, no complaint")
        await fixtures.load_fixture(self.db, "img1:8010", 2, "2026-11-26 12:00:00")
        with capturedLogs() as events:
            await check_ping_tool(self.db, config)
        errors = [e for e in events if e.get("log_level").name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("fping not found", errors[0]["problem"])


class TacFile(SynchronousTestCase):
    def test_tac_builds_the_same_service_from_the_environment(self) -> None:
        """`twistd -ny mozpool.tac` reads $MOZPOOL_CONFIG and builds the tap's service tree."""
        import os

        from twisted.application.service import IServiceCollection

        import mozpool
        from mozpool.tap import MozpoolService

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"[server]\nport = 0\nfqdn = tac.example.com\n[database]\nurl = sqlite:///{self.mktemp()}.sqlite\n"
                    "[tftp]\nport = 0\n")
        self.patch(os, "environ", dict(os.environ, MOZPOOL_CONFIG=path))
        tac = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(mozpool.__file__))), "mozpool.tac")
        namespace: dict = {}
        with open(tac) as f:
            exec(compile(f.read(), tac, "exec"), namespace)
        services = list(IServiceCollection(namespace["application"]))
        self.assertEqual(len(services), 1)
        top = services[0]
        self.assertIsInstance(top, MozpoolService)
        self.assertEqual(top.config.server_fqdn, "tac.example.com")
        self.assertEqual({s.name for s in top}, {"events", "http", "lifeguard", "broker", "purge", "heartbeat"})
        top.db.close()


class Wiring(SynchronousTestCase):
    def build(self, *argv: str, config: str = "") -> Any:
        from mozpool.tap import makeService

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"[database]\nurl = sqlite:///{self.mktemp()}.sqlite\n{config}")
        top = makeService(parse("--config", path, "--port", "0", *argv))
        self.addCleanup(top.db.close)
        return top

    def test_tftp_limits_reach_the_server(self) -> None:
        top = self.build("--tftp-port", "6999", config="[tftp]\nmax_transfers = 40\nmax_transfers_per_client = 3\n")
        server = top.getServiceNamed("tftp").tftp_server
        self.assertEqual((server.max_transfers, server.max_transfers_per_client), (40, 3))

    def test_tftp_workers_and_pxe_configs_from_memory(self) -> None:
        """--tftp-workers sizes the pool; the server answers PXE configs from the facade's table."""
        from mozpool.bmm.pxe import PXEConfigBackend

        top = self.build("--tftp-port", "6999", "--tftp-workers", "3")
        tftp = top.getServiceNamed("tftp")
        self.assertEqual(len(tftp.workers.slots), 3)
        self.assertIs(tftp.tftp_server.handover, tftp.workers)
        self.assertIsInstance(tftp.tftp_server.backend, PXEConfigBackend)
        self.assertIs(tftp.tftp_server.backend.configs, top.hardware.pxe_configs)
        self.assertIsNone(self.build("--tftp-port", "6999", "--tftp-workers", "0").getServiceNamed("tftp").workers)
        self.assertFalse(self.build("--tftp-port", "6999", config="[tftp]\npxe_files = false\n").hardware.pxe_configs.files)
        self.assertTrue(self.build("--tftp-port", "0", config="[tftp]\npxe_files = false\n").hardware.pxe_configs.files)

    def test_tftp_busy_poll_reaches_the_workers(self) -> None:
        workers = self.build("--tftp-port", "6999", "--tftp-workers", "1").getServiceNamed("tftp").workers
        self.assertEqual(workers.busy_poll, 200e-6)
        workers = self.build("--tftp-port", "6999", "--tftp-workers", "1",
                             config="[tftp]\nbusy_poll_us = 0\n").getServiceNamed("tftp").workers
        self.assertEqual(workers.busy_poll, 0)

    def test_heartbeat_file_touched_on_every_timeout_pass(self) -> None:
        """[server] heartbeat_file: both layers' timeout drivers touch it after each pass (and
        the heartbeat after each beat); without it they call nothing."""
        top = self.build("--tftp-port", "0", config="[server]\nheartbeat_file = /tmp/x.heartbeat\n")
        heartbeat = top.getServiceNamed("heartbeat")
        self.assertEqual(heartbeat.heartbeat_file, "/tmp/x.heartbeat")
        for layer in ("lifeguard", "broker"):
            driver = top.getServiceNamed(layer).lifeguard.driver if layer == "lifeguard" else top.getServiceNamed(layer).driver
            self.assertEqual(driver.on_pass, heartbeat.touch_file, layer)
        self.assertIsNone(self.build("--tftp-port", "0").getServiceNamed("broker").driver.on_pass)

    def test_the_intake_shares_its_batches_among_the_servers_the_heartbeat_counts(self) -> None:
        top = self.build("--tftp-port", "0")
        heartbeat, intake = top.getServiceNamed("heartbeat"), top.getServiceNamed("broker").broker.intake
        self.assertEqual(intake.servers_alive(), 1)
        heartbeat.servers_alive = 3
        self.assertEqual(intake.servers_alive(), 3)

    def test_auth_mode_defaults_by_listener(self) -> None:
        self.assertEqual(self.build("--listen-host", "127.0.0.1", "--tftp-port", "0").authority.mode, "open")
        self.assertEqual(self.build("--listen-host", "::1", "--tftp-port", "0").authority.mode, "open")
        self.assertEqual(self.build("--listen-host", "0.0.0.0", "--tftp-port", "0").authority.mode, "required")
        self.assertEqual(self.build("--listen-host", "10.1.2.3", "--tftp-port", "0").authority.mode, "required")
        self.assertEqual(
            self.build("--listen-host", "0.0.0.0", "--auth", "open", "--tftp-port", "0").authority.mode, "open")
        self.assertEqual(
            self.build("--listen-host", "127.0.0.1", "--tftp-port", "0", config="[auth]\nmode = required\n")
            .authority.mode, "required")

    def test_bad_auth_mode_is_a_usage_error(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--auth", "maybe")

    def test_logging_section(self) -> None:
        from twisted.logger import LogLevel

        from mozpool.logconfig import hygiene
        from mozpool.syslog import SyslogObserver

        self.addCleanup(setattr, hygiene, "level", hygiene.level)
        top = self.build("--tftp-port", "0", config="[logging]\nsyslog = udp:127.0.0.1:5514\nfacility = local2\n"
                                                     f"json = {self.mktemp()}\nlevel = warn\n")
        kinds = [type(o) for o in top.log_observers]
        self.assertEqual(kinds[0], SyslogObserver)
        self.assertEqual(top.log_observers[0].facility, 18)
        self.assertEqual(len(kinds), 2)
        top.log_observers[1].close()
        self.assertEqual(hygiene.level, LogLevel.warn)
        for bad in ("[logging]\nsyslog = syslog.example.com\n", "[logging]\nfacility = local9\n",
                    "[logging]\nlevel = loud\n"):
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(bad)
            self.assertRaises(usage.UsageError, parse, "--config", path)
