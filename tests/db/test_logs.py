"""Log lines cannot be forged or split by what callers supply (issue 10 hardening)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mozpool.db import logs
from tests.support.dbtest import on_both_backends
from tests.web.support import APITest


class Printable(SynchronousTestCase):
    def test_control_characters_are_escaped(self) -> None:
        self.assertEqual(logs.printable("a\nb\rc\td\x00e\x1bf\x7fg\x85h\u2028i"),
                         "a\\nb\\rc\\td\\x00e\\x1bf\\x7fg\\x85h\\u2028i")
        self.assertEqual(logs.printable("ünïcödé and spaces"), "ünïcödé and spaces")


class InjectedText(APITest):
    async def test_an_event_name_cannot_split_a_log_line(self) -> None:
        from mozpool.statemachine.core import MachineRunner

        from tests.web.test_events import _DeviceKind

        runner = MachineRunner(self.db, self.clock, _DeviceKind(), "a.example.com")
        row = await runner.load("panda-0001")
        assert row is not None
        with self.assertNoLogLines():
            await runner.log(row, "ignored event x\nentering state ready in state new")
        rows = await self.sql("SELECT message FROM device_logs WHERE device_id = ?", (row.id,))
        self.assertEqual(rows, [("ignored event x\\nentering state ready in state new",)])

    def assertNoLogLines(self):  # type: ignore[no-untyped-def]
        """Twisted's own log line is escaped the same way."""
        from contextlib import contextmanager

        from twisted.logger import globalLogPublisher

        test = self

        @contextmanager
        def watch():  # type: ignore[no-untyped-def]
            seen: list[dict] = []
            globalLogPublisher.addObserver(seen.append)
            try:
                yield
            finally:
                globalLogPublisher.removeObserver(seen.append)
            from twisted.logger import formatEvent

            texts = [formatEvent(e) for e in seen if "message" in e]
            test.assertTrue(texts)
            for text in texts:
                test.assertNotIn("\n", text)

        return watch()


InjectedTextSQLite = on_both_backends(InjectedText)[0]
