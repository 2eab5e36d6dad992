"""The devices table: paged, sorted and filtered in SQL, on SQLite and MariaDB."""

from __future__ import annotations

from mozpool.db.pool import Cursor
from tests.support.dbtest import on_both_backends
from tests.web.support import B
from tests.web.ui.support import Node, UITest


def names(doc: Node) -> list[str]:
    return [row.attrs["data-device"] for row in doc.find("device-row")]


class DevicesTable(UITest):
    async def test_default_view_is_by_name(self) -> None:
        doc = await self.page("/ui/devices")
        self.assertEqual(names(doc), ["bpanda-0001", "bpanda-0002", "panda-0001", "panda-0002", "panda-0003"])
        self.assertEqual(self.texts(doc, "page-info"), ["page 1 of 1 · 5 devices"])
        self.assertEqual(doc.find("page-next"), [])
        region = doc.by_id("devices-table")
        assert region is not None
        self.assertEqual(region.attrs["data-total"], "5")
        self.assertEqual(region.attrs["hx-get"], "/ui/devices")

    async def test_paging(self) -> None:
        first = await self.page("/ui/devices?per_page=2")
        self.assertEqual(names(first), ["bpanda-0001", "bpanda-0002"])
        self.assertEqual(self.texts(first, "page-info"), ["page 1 of 3 · 5 devices"])
        self.assertEqual(self.attr(first, "page-next", "href"), ["/ui/devices?per_page=2&page=2"])
        self.assertEqual(self.attr(first, "page-last", "href"), ["/ui/devices?per_page=2&page=3"])
        self.assertEqual(first.find("page-prev"), [])
        last = await self.page("/ui/devices?per_page=2&page=3")
        self.assertEqual(names(last), ["panda-0003"])
        self.assertEqual(self.attr(last, "page-prev", "href"), ["/ui/devices?per_page=2&page=2"])
        self.assertEqual(self.attr(last, "page-first", "href"), ["/ui/devices?per_page=2"])
        beyond = await self.page("/ui/devices?per_page=2&page=9")
        self.assertEqual(names(beyond), [])
        self.assertTrue(beyond.find("devices-empty"))

    async def test_a_page_holds_a_hundred_rows_of_many(self) -> None:
        def more(c: Cursor) -> None:
            server, hw = c.execute("SELECT imaging_server_id, hardware_type_id FROM devices LIMIT 1").fetchone()
            c.executemany(
                "INSERT INTO devices (name, fqdn, inventory_id, state, state_counters, mac_address,"
                " imaging_server_id, environment, hardware_type_id) VALUES (?, ?, ?, 'ready', '{}', ?, ?, 'prod', ?)",
                [(f"x-{i:04d}", f"x-{i}.invalid", 1000 + i, f"{i:012x}", server, hw) for i in range(250)],
            )

        await self.db.runInteraction(more)
        doc = await self.page("/ui/devices?name=x-")
        self.assertEqual(len(doc.find("device-row")), 100)
        # A long page has its pager above and below the table.
        self.assertEqual(self.texts(doc, "page-info"), ["page 1 of 3 · 250 devices"] * 2)
        last = await self.page("/ui/devices?name=x-&page=3")
        self.assertEqual(names(last)[-1], "x-0249")
        self.assertEqual(len(names(last)), 50)

    async def test_sorting(self) -> None:
        await self.sql("UPDATE devices SET state = 'ready' WHERE name IN ('panda-0001', 'bpanda-0002')")
        await self.sql("UPDATE devices SET state = 'failed_self_test' WHERE name = 'panda-0003'")
        doc = await self.page("/ui/devices?sort=state")
        self.assertEqual(names(doc), ["panda-0003", "bpanda-0001", "panda-0002", "bpanda-0002", "panda-0001"])
        header = doc.find("sort-state")[0]
        self.assertEqual(header.attrs["href"], "/ui/devices?sort=state&dir=desc")  # a second click reverses
        self.assertIn("▲", header.text)
        doc = await self.page("/ui/devices?sort=state&dir=desc")
        self.assertEqual(names(doc), ["panda-0001", "bpanda-0002", "panda-0002", "bpanda-0001", "panda-0003"])
        self.assertEqual(self.attr(doc, "sort-state", "href"), ["/ui/devices?sort=state"])
        doc = await self.page("/ui/devices?sort=name&dir=desc")
        self.assertEqual(names(doc)[0], "panda-0003")
        await self.add_request(device="panda-0002")
        doc = await self.page("/ui/devices?sort=category")  # failed, idle, in_use, processing
        self.assertEqual(names(doc), ["panda-0003", "bpanda-0002", "panda-0001", "panda-0002", "bpanda-0001"])
        doc = await self.page("/ui/devices?sort=imaging_server&dir=desc&per_page=2")
        self.assertEqual(names(doc), ["bpanda-0002", "bpanda-0001"])
        # The sort survives paging and filtering: links and the filter form carry it.
        self.assertEqual(self.attr(doc, "page-next", "href"),
                         ["/ui/devices?sort=imaging_server&dir=desc&per_page=2&page=2"])
        keep = doc.by_id("device-filter-keep")
        assert keep is not None
        self.assertEqual({c.attrs["name"]: c.attrs["value"] for c in keep.children},
                         {"sort": "imaging_server", "dir": "desc", "per_page": "2"})

    async def test_filters(self) -> None:
        await self.sql("UPDATE devices SET state = 'failed_self_test' WHERE name = 'panda-0003'")
        await self.add_request(device="panda-0001")
        cases = {
            "name=PANDA-000": ["bpanda-0001", "bpanda-0002", "panda-0001", "panda-0002", "panda-0003"],
            "name=b": ["bpanda-0001", "bpanda-0002"],
            "name=%25": [],  # a literal percent sign, not a wildcard
            "name=_": [],
            "category=failed": ["panda-0003"],
            "category=in_use": ["panda-0001"],
            "state=new": ["bpanda-0001", "bpanda-0002", "panda-0001", "panda-0002"],
            "environment=staging": ["bpanda-0002", "panda-0002"],
            f"imaging_server={B}": ["bpanda-0001", "bpanda-0002"],
            "held=yes": ["panda-0001"],
            "held=no": ["bpanda-0001", "bpanda-0002", "panda-0002", "panda-0003"],
            "hardware_type=panda&name=bpanda": ["bpanda-0001", "bpanda-0002"],
            "image=android": [],
            "state=nothing-like-this": [],
        }
        for query, expected in cases.items():
            doc = await self.page("/ui/devices?" + query)
            self.assertEqual(names(doc), expected, query)
        await self.sql("UPDATE devices SET hardware_type_id = NULL WHERE name = 'panda-0002'")
        doc = await self.page("/ui/devices?hardware_type=unknown")
        self.assertEqual(names(doc), ["panda-0002"])
        self.assertIn("unknown", [o.attrs["value"] for o in doc.find("filter-hardware_type")[0].children])

    async def test_filter_form_shows_the_view(self) -> None:
        doc = await self.page("/ui/devices?name=panda&category=failed&held=no")
        self.assertEqual(self.attr(doc, "filter-name", "value"), ["panda"])
        selected = {
            key: [o.attrs["value"] for o in doc.find(f"filter-{key}")[0].children if "selected" in o.attrs]
            for key in ("category", "held", "state")
        }
        self.assertEqual(selected, {"category": ["failed"], "held": ["no"], "state": [""]})
        states = [o.attrs["value"] for o in doc.find("filter-state")[0].children]
        self.assertEqual(states, ["", "new"])

    async def test_htmx_requests_get_the_tidy_url(self) -> None:
        """The filter form sends every field, empty ones too; the address bar shows only the
        ones that matter."""
        answer = await self.call("GET", "/ui/devices?name=b&state=&category=&held=&sort=name",
                                 headers={"HX-Request": "true"})
        self.assertEqual(answer.header("hx-replace-url"), "/ui/devices?name=b")
        plain = await self.call("GET", "/ui/devices?name=b")
        self.assertIsNone(plain.header("hx-replace-url"))

    async def test_bad_parameters_are_400(self) -> None:
        for query in ("page=0", "page=-1", "page=x", "page=1.5", "per_page=501", "per_page=0", "sort=bogus",
                      "sort=d.name", "dir=up", "category=broken", "held=maybe", "name=" + "x" * 300,
                      "name=%ff"):
            doc = await self.page("/ui/devices?" + query, code=400)
            self.assertEqual(self.attr(doc, "error-message", "data-status"), ["400"], query)


DevicesTableSQLite, DevicesTableMariaDB = on_both_backends(DevicesTable)
