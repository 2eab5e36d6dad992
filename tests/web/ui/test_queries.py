"""The UI's own SQL agrees with the rules it restates, on SQLite and MariaDB."""

from __future__ import annotations

from mozpool.db.pool import Cursor
from mozpool.db.summary import category
from mozpool.web.ui import queries
from mozpool.web.validate import DEVICE_STATES
from tests.support.dbtest import on_both_backends
from tests.web.ui.support import UITest


class Queries(UITest):
    async def test_category_sql_is_summary_category(self) -> None:
        """Every state, held and free: the SQL ``CASE`` says what summary.category() says."""
        states = sorted(DEVICE_STATES) + ["failed_something_new", "expired"]

        def categories(c: Cursor) -> list[tuple[str, bool, str]]:
            found = []
            for state in states:
                c.execute("UPDATE devices SET state = ? WHERE name IN ('panda-0001', 'panda-0002')", (state,))
                rows = c.execute(
                    "SELECT d.name, " + queries.CATEGORY_SQL + " FROM devices d"
                    " LEFT JOIN device_requests dr ON dr.device_id = d.id"
                    " WHERE d.name IN ('panda-0001', 'panda-0002')"
                ).fetchall()
                found += [(state, name == "panda-0001", cat) for name, cat in rows]
            return found

        await self.add_request(device="panda-0001")
        found = await self.db.runInteraction(categories)
        self.assertEqual(len(found), 2 * len(states))
        for state, held, cat in found:
            self.assertEqual(cat, category(state, held), (state, held))

    async def test_state_since_is_the_newest_entering_line(self) -> None:
        await self.add_log("device", "panda-0001", "2013-04-02 16:00:00", "entering state ready")
        await self.add_log("device", "panda-0001", "2013-04-02 16:30:00", "entering state pc_pinging")
        await self.add_log("device", "panda-0001", "2013-04-02 17:00:00", "entering state ready")
        await self.add_log("device", "panda-0001", "2013-04-02 17:01:00", "ping ok")
        await self.sql("UPDATE devices SET state = 'ready' WHERE name = 'panda-0001'")
        found = await self.db.runInteraction(queries.device_by_name, "panda-0001")
        self.assertEqual(found["state_since"], "2013-04-02T17:00:00")
        other = await self.db.runInteraction(queries.device_by_name, "panda-0002")
        self.assertIsNone(other["state_since"])  # purged, or never logged

    async def test_needs_a_human_is_bounded_and_counted(self) -> None:
        await self.sql("UPDATE devices SET state = 'failed_pxe_booting'")
        rows, total = await self.db.runInteraction(queries.needs_a_human, 2)
        self.assertEqual(total, 5)
        self.assertEqual([r["name"] for r in rows], ["bpanda-0001", "bpanda-0002"])


QueriesSQLite, QueriesMariaDB = on_both_backends(Queries)
