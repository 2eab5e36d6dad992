"""mozpool-db and pxe-config as a user runs them: separate processes on a real SQLite file."""

from __future__ import annotations

import os
import sys

from twisted.internet import utils
from twisted.trial.unittest import TestCase

import mozpool
from mozpool.db import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mozpool.__file__)))


async def run(module: str, *args: str, stdin: str | None = None) -> tuple[str, str, int]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("MOZPOOL_CONFIG", None)
    argv = ["-m", module, *args]
    if stdin is not None:
        argv = ["-c", f"import sys, io; sys.stdin = io.StringIO({stdin!r}); import runpy; "
                      f"sys.argv = {[module, *args]!r}; runpy.run_module({module!r}, run_name='__main__')"]
    out, err, code = await utils.getProcessOutputAndValue(sys.executable, argv, env=env, path=ROOT)
    return out.decode(), err.decode(), code


class Commands(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.url = "sqlite:///" + os.path.abspath(self.mktemp()) + ".sqlite"
        out, err, code = await run("mozpool.cli.db", "--db", self.url, "create-schema")
        self.assertEqual((code, out.strip()), (0, f"created schema version {schema.latest_version()}"), err)

    async def test_db_commands(self) -> None:
        out, err, code = await run("mozpool.cli.db", "--db", self.url, "create-schema")
        self.assertEqual(code, 1)
        self.assertIn("already has a schema", err)
        out, _, code = await run("mozpool.cli.db", "--db", self.url, "--fqdn", "img1:8010", "load-fixture", "--devices", "5")
        self.assertEqual((code, out.strip()), (0, "loaded 5 devices owned by img1:8010"))
        out, _, code = await run("mozpool.cli.db", "--db", self.url, "upgrade")
        self.assertEqual((code, out.strip()), (0, f"schema is at version {schema.latest_version()}"))
        _, err, code = await run("mozpool.cli.db", "--db", self.url, "load-fixture", "--devices", "5")
        self.assertEqual(code, 1, "the same names twice conflict")
        _, err, code = await run("mozpool.cli.db", "bogus")
        self.assertEqual(code, 2)

    async def test_pxe_config_lifecycle(self) -> None:
        db = ("--db", self.url)
        out, err, code = await run("mozpool.cli.pxe_config", *db, "-m", "desc", "-c", "-", "add", "p1", stdin="  kernel x\n")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "** Name: p1\n** Description: desc\n** Contents:\nkernel x\n")
        out, err, code = await run("mozpool.cli.pxe_config", *db, "--inactive", "-m", "new", "modify", "p1")
        self.assertEqual(out.splitlines()[:2], ["** Name: p1 (inactive)", "** Description: new"])
        out, _, _ = await run("mozpool.cli.pxe_config", *db, "--active", "list")
        self.assertEqual(out, "")
        out, _, _ = await run("mozpool.cli.pxe_config", *db, "list")
        self.assertIn("** Name: p1 (inactive)", out)
        _, err, code = await run("mozpool.cli.pxe_config", *db, "-m", "d", "-c", "-", "add", "p1", stdin="x")
        self.assertEqual(code, 1)
        self.assertIn("already exists", err)
        out, _, code = await run("mozpool.cli.pxe_config", *db, "delete", "p1")
        self.assertEqual(code, 0)
        _, err, code = await run("mozpool.cli.pxe_config", *db, "show", "p1")
        self.assertEqual(code, 1)
        self.assertIn("no PXE config named p1", err)

    async def test_pxe_config_usage_errors(self) -> None:
        for args, message in ((["list", "x"], "name is not allowed with 'list'"), (["show"], "name is required"),
                              (["-m", "x", "show", "p"], "show does not take any additional options"),
                              (["frobnicate", "x"], "unknown action")):
            _, err, code = await run("mozpool.cli.pxe_config", "--db", self.url, *args)
            self.assertEqual(code, 2, args)
            self.assertIn(message, err)

    async def test_delete_refused_while_used(self) -> None:
        await run("mozpool.cli.db", "--db", self.url, "load-fixture", "--devices", "1")
        _, err, code = await run("mozpool.cli.pxe_config", "--db", self.url, "delete", "android-install")
        self.assertEqual(code, 1)
        self.assertIn("used by an image", err)


class TokenCommand(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.url = "sqlite:///" + os.path.abspath(self.mktemp()) + ".sqlite"
        out, err, code = await run("mozpool.cli.db", "--db", self.url, "create-schema")
        self.assertEqual(code, 0, err)

    async def test_lifecycle(self) -> None:
        from mozpool.db import tokens
        from mozpool.db.pool import Database
        from twisted.internet import reactor

        out, err, code = await run("mozpool.cli.token", "--db", self.url, "create", "ci-bot", "--role", "user")
        self.assertEqual(code, 0, err)
        token = out.strip().splitlines()[-1]
        self.assertTrue(token.startswith("mpt_") and len(token) > 40, out)
        db = Database.fromURL(self.url, reactor)
        self.addCleanup(db.close)
        found = await db.runInteraction(tokens.lookup, token)
        self.assertEqual((found.name, found.role), ("ci-bot", "user"))
        stored = await db.query("SELECT hash FROM tokens")
        self.assertEqual(stored, [(tokens.token_hash(token),)], "only the hash is stored")

        out, _, code = await run("mozpool.cli.token", "--db", self.url, "list")
        self.assertEqual(code, 0)
        self.assertRegex(out, r"ci-bot\s+user\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+-")
        self.assertNotIn(token, out)

        _, err, code = await run("mozpool.cli.token", "--db", self.url, "create", "ci-bot", "--role", "user")
        self.assertEqual(code, 1)
        self.assertIn("exists", err)
        _, err, code = await run("mozpool.cli.token", "--db", self.url, "create", "bad name", "--role", "user")
        self.assertEqual(code, 1)
        _, err, code = await run("mozpool.cli.token", "--db", self.url, "create", "x", "--role", "root")
        self.assertEqual(code, 2, "argparse refuses the role")

        out, err, code = await run("mozpool.cli.token", "--db", self.url, "revoke", "ci-bot")
        self.assertEqual(code, 0, err)
        self.assertIsNone(await db.runInteraction(tokens.lookup, token))
        out, _, _ = await run("mozpool.cli.token", "--db", self.url, "list")
        self.assertNotRegex(out, r"ci-bot\s+user\s+\S+ \S+\s+-\n")
        _, err, code = await run("mozpool.cli.token", "--db", self.url, "revoke", "ci-bot")
        self.assertEqual(code, 1)
        self.assertIn("no live token", err)
