"""The UI shows an imaging server that stopped sending heartbeats, and its devices, as down."""

from __future__ import annotations

from mozpool.db import catalog
from mozpool.timeutil import deadline_text
from tests.support.dbtest import on_both_backends
from tests.web.support import A, B, EPOCH
from tests.web.ui.support import UITest


class ServerDown(UITest):
    async def test_dead_server_and_its_devices(self) -> None:
        await self.db.runInteraction(catalog.heartbeat, A, deadline_text(EPOCH))
        await self.db.runInteraction(catalog.heartbeat, B, deadline_text(EPOCH - 100))
        doc = await self.page("/ui/servers")
        downs = self.texts(doc, "server-down")
        self.assertEqual(len(downs), 1)
        self.assertIn("not responding since", downs[0])
        rows = {" ".join(r.text.split()).split(" ")[0]: r for r in doc.find("server-row")}
        self.assertTrue(rows[B].find("server-down"))
        self.assertFalse(rows[A].find("server-down"))
        self.assertIn("unreachable", " ".join(self.texts(await self.page("/ui/device/bpanda-0001"), "server-down")))
        self.assertEqual(self.texts(await self.page("/ui/device/panda-0001"), "server-down"), [])
        self.assertEqual(len((await self.page("/ui/")).find("server-down")), 1)
        # the devices table marks the dead server's devices, with since when
        rows = {r.attrs["data-device"]: r for r in (await self.page("/ui/devices")).find("device-row")}
        marks = {name: " ".join(" ".join(m.text.split()) for m in row.find("server-down")) for name, row in rows.items()}
        self.assertEqual({n for n, m in marks.items() if m}, {n for n in rows if n.startswith("bpanda-")})
        self.assertIn("unreachable since 2013-04-02T17:03:31Z", marks["bpanda-0001"])


ServerDownSQLite = on_both_backends(ServerDown)[0]
