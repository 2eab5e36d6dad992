"""Configuration: INI file, $MOZPOOL_CONFIG, command-line overrides, validation."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from mozpool.config import ConfigError, load_config


class ConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        self.patch(os, "environ", {})
        c = load_config(None)
        self.assertEqual((c.port, c.tftp_port, c.time_scale, c.fakes), (8010, 69, 1.0, 0))
        self.assertEqual(c.db_url, "sqlite:///mozpool.sqlite")
        self.assertTrue(c.server_fqdn.endswith(":8010"))
        self.assertEqual((c.log_retention_days, c.request_retention_days), (14, 7))

    def test_file_and_overrides(self) -> None:
        path = self.write(
            "[server]\nfqdn = img1.example.com\nport = 80\n[database]\nurl = mysql://u:p@db/x\n"
            "log_retention_days = 3\n[testing]\ntime_scale = 0.01\n"
        )
        c = load_config(path, {"port": 8080, "fakes": None})
        self.assertEqual(c.fqdn, "img1.example.com")
        self.assertEqual(c.port, 8080)
        self.assertEqual(c.db_url, "mysql://u:p@db/x")
        self.assertEqual(c.log_retention_days, 3.0)
        self.assertEqual(c.time_scale, 0.01)
        self.assertEqual(c.fakes, 0)

    def test_environment_variable(self) -> None:
        path = self.write("[server]\nport = 9000\n")
        self.patch(os, "environ", {"MOZPOOL_CONFIG": path})
        self.assertEqual(load_config(None).port, 9000)

    def test_fqdn_defaults(self) -> None:
        self.assertEqual(load_config(None, {"fakes": 5, "listen_host": "127.0.0.1"}).server_fqdn, "127.0.0.1:8010")
        self.assertEqual(load_config(None, {"fakes": 5, "port": 80}).server_fqdn, "127.0.0.1")

    def test_bad_values(self) -> None:
        self.assertRaises(ConfigError, load_config, self.write("[server]\nport = eighty\n"))
        self.assertRaises(ConfigError, load_config, self.write("[testing]\ntime_scale = -1\n"))
        self.assertRaises(ConfigError, load_config, self.write("[manhole]\nallow_remote = maybe\n"))
        self.assertRaises(ConfigError, load_config, "/nonexistent/mozpool.ini")

    def test_manhole_needs_password(self) -> None:
        self.assertRaises(ConfigError, load_config, None, {"manhole_endpoint": "tcp:2222:interface=127.0.0.1"})
        c = load_config(self.write("[manhole]\npassword = s3cret\nendpoint = tcp:0:interface=127.0.0.1\n"))
        self.assertEqual((c.manhole_username, c.manhole_password), ("admin", "s3cret"))

    def test_template_parses(self) -> None:
        """config.ini.dist is a valid configuration with the documented defaults."""
        import mozpool

        dist = os.path.join(os.path.dirname(mozpool.__file__), "config.ini.dist")
        c = load_config(dist)
        self.assertEqual((c.port, c.tftp_port, c.db_url), (8010, 69, "sqlite:///mozpool.sqlite"))
        self.assertEqual(c.manhole_endpoint, "")
