"""The ``mozpool`` command over a pretend lab: what people and scripts see, and exit statuses."""

from __future__ import annotations

import contextlib
import io
import json
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mozpool.client import cli, render
from mozpool.client.sync import Client
from tests.client.fakes import DEAD, FakePool, Lab, config

A = "http://a:8010"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class CLITest(SynchronousTestCase):
    def setUp(self) -> None:
        self.lab = Lab()
        self.pool = FakePool(A, devices=("panda-0001", "panda-0002", "panda-0010"))
        self.lab.servers = {A: self.pool}
        self.made: list[dict[str, Any]] = []

    def make_client(self, servers: Any, token: Any = None, timeout: Any = None, config_file: Any = None) -> Client:
        self.made.append({"servers": servers, "token": token, "timeout": timeout})
        return Client(settings=config(*(servers.split(",") if servers else [A])), connect=self.lab.connect,
                      sleep=self.lab.clock.sleep, clock=self.lab.clock.now, rng=random.Random(1))

    def mozpool(self, *argv: str, stdout: io.StringIO | None = None) -> tuple[int, str, str]:
        out, err = stdout or io.StringIO(), io.StringIO()
        code = cli.run(list(argv), out, err, make_client=self.make_client)
        return code, out.getvalue(), err.getvalue()


class Output(CLITest):
    def test_devices_table(self) -> None:
        """Aligned columns, no colour when stdout is not a terminal."""
        self.pool.devices["panda-0010"]["state"] = "failed_pxe_booting"
        code, out, err = self.mozpool("devices")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(len(lines), 4)
        self.assertTrue(lines[0].startswith("NAME        STATE               ENVIRONMENT"), lines[0])
        self.assertEqual({line.index(" prod ") + 1 for line in lines[1:]}, {lines[0].index("ENVIRONMENT")})
        self.assertNotIn("\x1b", out)
        code, out, _ = self.mozpool("devices", "--state", "failed_*")
        self.assertEqual([line.split()[0] for line in out.splitlines()[1:]], ["panda-0010"])

    def test_colour_on_a_terminal_only(self) -> None:
        self.assertTrue(render.wants_colour(Terminal(), {}))
        self.assertFalse(render.wants_colour(Terminal(), {"NO_COLOR": "1"}))
        self.assertFalse(render.wants_colour(io.StringIO(), {}))
        style = render.Style(True)
        text = render.table(["A", "STATE"], [["x", style.state("ready")], ["longer", style.state("failed_x")]], style)
        self.assertIn("\x1b[32mready\x1b[0m", text)
        self.assertEqual([render.width(line) for line in text.splitlines()], [13, 13, 16])

    def test_json_documents(self) -> None:
        """--json, before or after the command: one JSON document on stdout."""
        for argv in (["--json", "devices"], ["devices", "--json"]):
            code, out, _ = self.mozpool(*argv)
            self.assertEqual(code, 0)
            self.assertEqual([d["name"] for d in json.loads(out)["devices"]], ["panda-0001", "panda-0002", "panda-0010"])
        for argv in (["summary"], ["servers"], ["device", "panda-0002"], ["images"]):
            self.pool_routes()
            code, out, err = self.mozpool("--json", *argv)
            self.assertEqual(code, 0, (argv, err))
            json.loads(out)

    def pool_routes(self) -> None:
        """Answers for the calls FakePool does not know."""
        pool = self.pool

        def server(method: str, path: str, body: Any) -> Any:
            if path.startswith("/api/pool/summary/"):
                return 200, {"generated_at": "t", "total": 3, "by_category": {"idle": 3},
                             "by_hardware_type": {"panda": {"total": 3, "idle": 3}}, "failed_devices": []}
            if path.startswith("/api/image/list/"):
                return 200, {"images": [{"name": "android", "boot_config_keys": [], "can_reuse": False}]}
            return pool(method, path, body)

        self.lab.servers[A] = server

    def test_request_wait(self) -> None:
        """request --wait --json: the ready request with id, state, assigned_device, url; a
        progress line per change on stderr (not a terminal)."""
        code, out, err = self.mozpool("request", "any", "--image", "android", "--duration", "10m", "--wait", "--json")
        self.assertEqual(code, 0, err)
        document = json.loads(out)
        self.assertEqual({k: document[k] for k in ("id", "state", "assigned_device", "url")},
                         {"id": 1, "state": "ready", "assigned_device": "panda-0001", "url": A + "/api/request/1/"})
        self.assertEqual(document["device"]["fqdn"], "panda-0001.lab.example.com")
        self.assertEqual(self.pool.requests[1]["assignee"], "tester@example.com")
        progress = err.splitlines()
        self.assertTrue(progress[-1].endswith("request 1: ready, device panda-0001 ready"), progress)
        self.assertIn("request 1: pending, device panda-0001", err)

    def test_request_status_renew_return(self) -> None:
        code, out, _ = self.mozpool("request", "panda-0002", "--image", "android", "--duration", "60")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("request 1\nstate          new\ndevice         panda-0002\n"), out)
        code, out, _ = self.mozpool("status", "1", "--json")
        self.assertEqual(json.loads(out)["state"], "finding_device")
        code, out, _ = self.mozpool("renew", "1", "--duration", "2h")
        self.assertEqual((code, self.pool.requests[1]["renewed"]), (0, 7200))
        self.assertIn("request 1 renewed: expires", out)
        code, out, _ = self.mozpool("return", "1", "--json")
        self.assertEqual((code, json.loads(out)["state"]), (0, "closed"))

    def test_priority_and_queue_timeout(self) -> None:
        """--priority and --queue-timeout (a duration, 0 allowed) reach the creation body, with
        --wait too, and the request's text says them."""
        code, out, err = self.mozpool("request", "any", "--image", "android", "--duration", "60", "--priority", "80",
                                      "--queue-timeout", "10m")
        self.assertEqual(code, 0, err)
        self.assertEqual((self.lab.sent[-1].body["priority"], self.lab.sent[-1].body["queue_timeout"]), (80, 600))
        self.assertIn("\npriority       80\nqueue timeout  600 s\n", out)
        self.mozpool("request", "any", "--image", "android", "--duration", "60", "--queue-timeout", "0", "--wait",
                     "-q")
        created = [s.body for s in self.lab.sent if s.method == "POST" and s.url.endswith("/request/")]
        self.assertEqual((created[-1]["queue_timeout"], "priority" in created[-1]), (0, False))

    def test_queue_place_while_waiting(self) -> None:
        """The progress line on stderr says the request's place in the queue, a new line when
        it changes; ``status`` shows it too (text and JSON) while the request waits."""
        for row in self.pool.devices.values():
            row["request_id"] = 99  # every device held: the request waits
        self.pool.script = ("finding_device", "finding_device", "finding_device", "pending", "ready")
        code, out, err = self.mozpool("request", "any", "--image", "android", "--duration", "60")
        self.assertEqual((code, self.pool.requests[1]["assigned_device"]), (0, ""), err)
        self.pool.devices["panda-0002"]["request_id"] = None
        self.pool.queue[1] = [{"position": 3, "ahead": 2, "eta": "2099-01-01T12:04:10", "why": "2 ahead"},
                              {"position": 2, "ahead": 1, "eta": "2099-01-01T12:03:55", "why": "1 ahead"}, None]
        code, out, err = self.mozpool("wait", "1")
        self.assertEqual(code, 0, err)
        self.assertEqual([line.split("] ", 1)[1] for line in err.splitlines()], [
            "request 1: finding_device, no device yet — 3rd in queue (2 ahead), ready by ~2099-01-01 12:04 UTC",
            "request 1: finding_device, no device yet — 2nd in queue (1 ahead), ready by ~2099-01-01 12:03 UTC",
            "request 1: finding_device, no device yet",
            "request 1: pending, device panda-0002 ready",
            "request 1: ready, device panda-0002 ready",
        ])

        self.pool.script = ("finding_device",)
        place = {"position": 4, "ahead": 3, "eta": "2099-01-01T12:30:00", "why": "3 ahead for 2 suitable devices"}
        self.mozpool("request", "any", "--image", "android", "--duration", "60")
        self.pool.queue[2] = [place]
        code, out, err = self.mozpool("status", "2")
        self.assertEqual(code, 0, err)
        self.assertIn("state          finding_device\ndevice         -\n"
                      "queue          4th in queue, 3 ahead for the same devices\n"
                      "ready by       ~2099-01-01 12:30:00 UTC (estimate)\n"
                      "why            3 ahead for 2 suitable devices\n", out)
        code, out, err = self.mozpool("status", "2", "--json")
        self.assertEqual(json.loads(out)["queue"], place)

    def test_options_reach_the_client(self) -> None:
        self.mozpool("--servers", A, "--token", "t", "--http-timeout", "5", "devices")
        self.mozpool("devices", "--servers", A)
        self.assertEqual(self.made, [{"servers": A, "token": "t", "timeout": 5.0},
                                     {"servers": A, "token": None, "timeout": None}])


class Failures(CLITest):
    def assertFails(self, argv: tuple[str, ...], message: str) -> None:
        code, out, err = self.mozpool(*argv)
        self.assertEqual((code, out), (1, ""), err)
        self.assertEqual(err, f"mozpool: {message}\n")

    def test_busy_device(self) -> None:
        self.mozpool("request", "panda-0001", "--image", "android", "--duration", "60")
        self.assertFails(("request", "panda-0001", "--image", "android", "--duration", "60"),
                         "device panda-0001 is busy: held by request 1")

    def test_unknown_image_and_device(self) -> None:
        self.assertFails(("request", "any", "--image", "nosuch", "--duration", "60", "--wait"), "unknown image nosuch")
        self.assertFails(("device", "panda-9"), "unknown device panda-9")

    def test_failed_request(self) -> None:
        """A request that fails while waited for: its reason, and it is returned."""
        self.pool.script = ("finding_device", "failed_device_not_found")
        self.assertFails(("request", "any", "--image", "android", "--duration", "60", "--wait", "-q"),
                         "request 1 failed: failed_device_not_found (no device fitting the request could be "
                         "found; its log says why) (request 1 was returned)")

    def test_no_server(self) -> None:
        self.lab.servers = {A: DEAD}
        self.assertFails(("requests",), f"no MozPool server answered request list: {A}: connection refused")

    def test_ping(self) -> None:
        self.lab.servers[A] = lambda m, p, b: (200, {"success": False})
        code, out, err = self.mozpool("ping", "panda-0001", "--json")
        self.assertEqual((code, json.loads(out), err),
                         (1, {"device": "panda-0001", "success": False}, "mozpool: panda-0001 does not answer ping\n"))

    def test_usage(self) -> None:
        """Usage errors exit 2 (argparse), before any call."""
        for argv in (["request", "any", "--duration", "60"], ["status", "abc"], ["renew", "1", "--duration", "-5"],
                     ["request", "any", "--image", "android", "--duration", "60", "--priority", "101"],
                     ["request", "any", "--image", "android", "--duration", "60", "--priority", "high"],
                     ["request", "any", "--image", "android", "--duration", "60", "--queue-timeout", "-1"],
                     ["request", "any", "--image", "android", "--duration", "60", "--queue-timeout", "99999999d"],
                     ["request", "any", "--image", "b2g", "--duration", "60", "--boot-config", "[1]"], []):
            with self.assertRaises(SystemExit) as caught, contextlib.redirect_stderr(io.StringIO()) as usage:
                cli.run(argv, io.StringIO(), io.StringIO(), make_client=self.make_client)
            self.assertIn("usage: mozpool", usage.getvalue())
            self.assertEqual(caught.exception.code, 2, argv)
        self.assertEqual(self.made, [])

    def test_durations(self) -> None:
        self.assertEqual([cli.seconds(t) for t in ("90", "90s", "30m", "2h", "1d")], [90, 90, 1800, 7200, 86400])
        self.assertEqual([cli.wait_seconds(t) for t in ("0", "0s", "10m", "1h")], [0, 0, 600, 3600])
        self.assertEqual([cli.priority(t) for t in ("0", "50", "100")], [0, 50, 100])
