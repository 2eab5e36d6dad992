"""`twistd mozpool` is found after `pip install .` and after an editable install in compat mode
(older setuptools' default "strict" editable mode hides twisted/plugins from Twisted's plugin
discovery, which is why the README's line asks for compat)."""

from __future__ import annotations

import os
import sys
import sysconfig

from twisted.internet import utils
from twisted.trial.unittest import SkipTest, TestCase

import mozpool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mozpool.__file__)))


async def run(argv: list[str], cwd: str) -> tuple[str, int]:
    out, err, code = await utils.getProcessOutputAndValue(argv[0], argv[1:], env=dict(os.environ), path=cwd)
    return (out + err).decode(), code


class PluginDiscovery(TestCase):
    timeout = 240

    async def install(self, *pip_args: str) -> str:
        """A bare virtualenv that sees this interpreter's packages (Twisted etc.) through a .pth
        file but not this checkout; mozpool installed into it with ``pip_args``."""
        try:
            import wheel  # noqa: F401  (building without isolation needs it)
        except ImportError:
            if os.environ.get("CI") == "true":
                raise
            raise SkipTest("the wheel package is needed to build mozpool without isolation")
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        venv = os.path.join(base, "v")
        out, code = await run([sys.executable, "-m", "venv", "--without-pip", venv], base)
        self.assertEqual(code, 0, out)
        site = os.path.join(venv, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")
        with open(os.path.join(site, "deps.pth"), "w") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
        # --ignore-installed: else pip first uninstalls mozpool from the environment running
        # these tests (the checkout's own .venv), under every test still running.
        out, code = await run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed",
             "--prefix", venv, *pip_args], base,
        )
        self.assertEqual(code, 0, out)
        return venv

    async def twistd_help(self, venv: str) -> str:
        python = os.path.join(venv, "bin", "python")
        out, _ = await run([python, "-c", "from twisted.scripts.twistd import run; run()", "--help"], os.path.dirname(venv))
        return out

    async def test_pip_install(self) -> None:
        venv = await self.install(ROOT)
        self.assertIn("MozPool device-pool manager", await self.twistd_help(venv))
        python = os.path.join(venv, "bin", "python")
        out, _ = await run([python, "-c", "from twisted.scripts.twistd import run; run()", "mozpool", "--help"], venv)
        for option in ("--port", "--listen-host", "--tftp-port", "--tftp-root", "--db", "--fqdn", "--fakes",
                       "--time-scale", "--manhole", "--config"):
            self.assertIn(option, out)
        sql = os.path.join(venv, "share", "mozpool", "sql", "sqlite", "schema-v2.sql")
        self.assertTrue(os.path.exists(sql), "the schema files are installed")
        # The console scripts the README names (the client's and the inventory sync's too).
        for script, usage in (("mozpool", "usage: mozpool "), ("mozpool-inventorysync", "--ship-it"),
                              ("mozpool-db", "load-fixture"), ("mozpool-token", "usage: mozpool-token")):
            out, code = await run([python, os.path.join(venv, "bin", script), "--help"], venv)
            self.assertEqual(code, 0, (script, out))
            self.assertIn(usage, out, script)

    async def test_editable_compat_install(self) -> None:
        venv = await self.install("--config-settings", "editable_mode=compat", "-e", ROOT)
        self.assertIn("MozPool device-pool manager", await self.twistd_help(venv))
