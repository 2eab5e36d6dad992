"""twistd options and the service tree."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mozpool.tap import Options


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
