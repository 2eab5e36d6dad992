"""Every UI page renders what it should from the shared database, on SQLite and MariaDB."""

from __future__ import annotations

from tests.support.dbtest import on_both_backends
from tests.web.support import B, A
from tests.web.ui.support import UITest


class Pages(UITest):
    async def set_state(self, device: str, state: str) -> None:
        await self.sql("UPDATE devices SET state = ? WHERE name = ?", (state, device))

    async def test_overview(self) -> None:
        await self.set_state("panda-0001", "ready")
        await self.set_state("panda-0002", "failed_pxe_booting")
        await self.set_state("bpanda-0001", "locked_out")
        await self.set_state("panda-0003", "ready")
        request_id = await self.add_request(device="panda-0003")
        doc = await self.page("/ui/")
        self.assertEqual(self.texts(doc, "page-title"), ["Pool overview"])
        counts = {t: self.attr(doc, f"count-{t}", "data-count")[0] for t in ("in_use", "idle", "processing", "failed")}
        self.assertEqual(counts, {"in_use": "1", "idle": "1", "processing": "2", "failed": "1"})
        self.assertIn("5 devices", self.texts(doc, "count-total")[0])
        self.assertEqual(len(doc.find("type-row")), 1)
        # Failed devices first, then those parked for a person; "new" ones need nobody.
        needing = [row.find("device-state")[0].attrs["data-state"] for row in doc.find("needs-human-row")]
        self.assertEqual(needing, ["failed_pxe_booting", "locked_out"])
        self.assertIn(f"#{request_id}", self.texts(doc, "request-row")[0])
        self.assertEqual(len(doc.find("server-item")), 2)
        # The live part and the stream it follows (every type but the logs).
        region = doc.by_id("overview")
        assert region is not None
        self.assertIn("device_state", region.attrs["data-live"])
        body = doc.find("page-title")  # any element: the body carries the stream URL
        self.assertTrue(body)
        self.assertIn(b'data-events="/api/events?type=device_state,request_state,request_device,device_comments,'
                      b'device_environment"', (await self.call("GET", "/ui/")).body)

    async def test_overview_of_an_empty_pool(self) -> None:
        await self.sql("DELETE FROM devices")
        doc = await self.page("/ui/")
        self.assertEqual(self.attr(doc, "count-failed", "data-count"), ["0"])
        self.assertTrue(doc.find("needs-human-empty"))
        self.assertTrue(doc.find("open-requests-empty"))

    async def test_health_states(self) -> None:
        """``held`` waits for a person (parked: the square, under "Needs a person", in the
        legend); ``board_suspect`` waits for its board (processing, not a person's job)."""
        await self.set_state("panda-0001", "held")
        await self.set_state("panda-0002", "board_suspect")
        doc = await self.page("/ui/")
        badges = [row.find("device-state")[0] for row in doc.find("needs-human-row")]
        self.assertEqual([b.attrs["data-state"] for b in badges], ["held"])
        self.assertIn("parked", badges[0].attrs["class"])
        self.assertIn("■ held", " ".join(badges[0].text.split()))
        lab = await self.page("/ui/lab")
        cells = {c.attrs["data-device"]: c for c in lab.find("lab-cell")}
        self.assertEqual(cells["panda-0001"].attrs["data-category"], "processing")
        self.assertIn("■", cells["panda-0001"].text)
        self.assertEqual(cells["panda-0002"].attrs["data-category"], "processing")
        self.assertIn("◐", cells["panda-0002"].text)
        self.assertIn("board_suspect", cells["panda-0002"].attrs["title"])
        legend = (await self.call("GET", "/ui/lab")).body.decode("utf-8")
        self.assertIn("parked for a person (locked_out, troubleshooting, unknown, held)", legend)
        # A suspect board needs a person although its devices only wait: the overview names it.
        self.assertFalse(doc.find("suspect-boards-section"))
        await self.sql("UPDATE relay_boards SET state = 'suspect', health_since = '2013-04-02 17:50:00',"
                       " health_reason = 'did not answer 2 probes' WHERE fqdn = 'localhost:20001'")
        doc = await self.page("/ui/")
        (board,) = doc.find("suspect-board")
        self.assertEqual((board.attrs["data-board"], board.attrs["data-waiting"]), ("localhost:20001", "1"))
        self.assertIn("1 device waiting in board_suspect", " ".join(board.text.split()))
        self.assertIn("did not answer 2 probes", board.text)
        links = [child.attrs["href"] for child in board.children if child.tag == "a"]
        self.assertEqual(links, [f"/ui/lab?server={A}#board-localhost-20001"])

    async def test_lab_map(self) -> None:
        await self.set_state("panda-0002", "failed_pxe_booting")
        await self.sql("UPDATE devices SET relay_info = 'nonsense' WHERE name = 'bpanda-0002'")
        doc = await self.page("/ui/lab")
        boards = self.attr(doc, "relay-board", "data-board")
        self.assertEqual(boards, ["localhost:20001", "localhost:50001"])
        cells = {c.attrs["data-device"]: c for c in doc.find("lab-cell")}
        self.assertEqual(set(cells), {"panda-0001", "panda-0002", "panda-0003", "bpanda-0001"})
        self.assertEqual(cells["panda-0002"].attrs["data-category"], "failed")
        self.assertIn("✖", cells["panda-0002"].text)  # a shape as well as a colour
        self.assertIn("0002", cells["panda-0002"].text)
        self.assertIn("bank 1 relay 2", cells["panda-0002"].attrs["title"])
        self.assertIn("bpanda-0002", self.texts(doc, "unwired")[0])
        self.assertEqual(len(doc.find("relay-test")), 2)
        # Each board is refetched alone, when an event names a device or request it shows.
        request_id = await self.add_request(device="panda-0001")
        board = await self.page("/ui/lab/board/localhost%3A20001")
        region = board.find("relay-board")[0]
        self.assertEqual((region.attrs["id"], region.attrs["hx-get"]),
                         ("board-localhost-20001", "/ui/lab/board/localhost%3A20001"))
        self.assertIn("data-live-contains", region.attrs)
        held = {c.attrs["data-device"]: c.attrs.get("data-request") for c in board.find("lab-cell")}
        self.assertEqual(held, {"panda-0001": str(request_id), "panda-0002": None, "panda-0003": None})
        await self.page("/ui/lab/board/nowhere%3A1", code=404)

    async def test_lab_map_orders_boards_by_their_first_device(self) -> None:
        """Board ports are picked at random: the map follows the devices, not the addresses."""
        await self.sql("UPDATE devices SET relay_info = 'localhost:29000:bank1:relay1' WHERE name = 'panda-0001'")
        await self.sql("UPDATE devices SET relay_info = 'localhost:21000:bank1:relay2' WHERE name = 'panda-0002'")
        await self.sql("UPDATE devices SET relay_info = 'localhost:21000:bank1:relay3' WHERE name = 'panda-0003'")
        doc = await self.page(f"/ui/lab?server={A}")
        self.assertEqual(self.attr(doc, "relay-board", "data-board")[:2], ["localhost:29000", "localhost:21000"])

    async def test_lab_map_of_one_server(self) -> None:
        doc = await self.page(f"/ui/lab?server={B}")
        self.assertEqual(self.attr(doc, "relay-board", "data-board"), ["localhost:50001"])
        self.assertEqual({c.attrs["data-device"] for c in doc.find("lab-cell")}, {"bpanda-0001", "bpanda-0002"})
        self.assertEqual(self.texts(doc, "lab-server"), ["all servers", A, B])
        nobody = await self.page("/ui/lab?server=nobody.example.com")
        self.assertEqual(nobody.find("relay-board"), [])

    async def test_a_board_the_database_does_not_know(self) -> None:
        await self.sql("UPDATE devices SET relay_info = 'elsewhere:7:bank2:relay3' WHERE name = 'panda-0003'")
        doc = await self.page("/ui/lab")
        self.assertIn("elsewhere:7", self.attr(doc, "relay-board", "data-board"))
        board = await self.page("/ui/lab/board/elsewhere%3A7")
        self.assertEqual(self.attr(board, "lab-cell", "data-device"), ["panda-0003"])
        self.assertIn("not in the database", " ".join(board.text.split()))

    async def test_lab_map_groups_by_power_controller(self) -> None:
        """A mixed lab: the ProXR board as a grid, a PDU behind pdudaemon as a list of ports,
        each with the test of its controller."""
        pdu = "pdudaemon://127.0.0.1:16421/127.0.0.1:20901"
        await self.sql("UPDATE devices SET relay_info = ? WHERE name = 'panda-0003'", (pdu + "/3",))
        await self.sql("UPDATE devices SET relay_info = ? WHERE name = 'panda-0002'", (pdu + "/1",))
        await self.sql("INSERT INTO relay_boards (name, fqdn, imaging_server_id, state, state_counters, state_timeout)"
                       " SELECT '127.0.0.1-20901', ?, imaging_server_id, 'ready', '{}', state_timeout FROM relay_boards"
                       " WHERE fqdn = 'localhost:20001'", (pdu,))
        doc = await self.page(f"/ui/lab?server={A}")
        self.assertEqual(self.attr(doc, "relay-board", "data-board"), ["localhost:20001", pdu])
        self.assertEqual(self.attr(doc, "relay-board", "data-kind"), ["ProXR relay board", "pdudaemon PDU"])
        self.assertEqual(len(doc.find("relay-test")), 2)
        fragment = await self.page("/ui/lab/board/" + pdu.replace(":", "%3A").replace("/", "%2F"))
        cells = fragment.find("lab-cell")
        self.assertEqual([c.attrs["data-device"] for c in cells], ["panda-0002", "panda-0003"])
        self.assertEqual([c.attrs["title"].split(":")[0] for c in cells], ["port 1", "port 3"])
        self.assertIn("Test controller", fragment.text)
        device = await self.page("/ui/device/panda-0003")
        self.assertIn(b"/ui/lab#board-pdudaemon---127-0-0-1-16421-127-0-0-1-20901",
                      (await self.call("GET", "/ui/device/panda-0003")).body)
        self.assertTrue(device.find("device-details"))

    async def test_device_page(self) -> None:
        await self.set_state("panda-0001", "ready")
        request_id = await self.add_request(device="panda-0001")
        await self.sql("UPDATE devices SET comments = '<b>flaky</b>' WHERE name = 'panda-0001'")
        await self.add_log("device", "panda-0001", "2013-04-02 17:00:00", "entering state ready")
        await self.add_log("device", "panda-0001", "2013-04-02 17:01:00", "ping ok", source="bmm")
        answer = await self.call("GET", "/ui/device/panda-0001")
        self.assertIn(b"&lt;b&gt;flaky&lt;/b&gt;", answer.body)  # escaped, never markup
        doc = await self.page("/ui/device/panda-0001")
        self.assertEqual(self.attr(doc, "device-state", "data-state"), ["ready"])
        since = doc.find("state-since")[0]
        self.assertEqual(since.attrs["datetime"], "2013-04-02T17:00:00Z")
        self.assertEqual(since.attrs["title"], "2013-04-02 17:00:00 UTC")
        self.assertEqual(since.text, "5 min ago")
        self.assertEqual(self.attr(doc, "device-request", "href"), [f"/ui/request/{request_id}"])
        self.assertEqual(self.texts(doc, "device-comments"), ["<b>flaky</b>"])
        self.assertEqual(self.texts(doc, "device-environment"), ["prod"])
        lines = doc.find("log-line")
        self.assertEqual([" ".join(li.text.split()) for li in lines],
                         ["4 min ago bmm ping ok", "5 min ago statemachine entering state ready"])
        log = doc.find("log")[0]
        self.assertEqual((log.attrs["data-log-tail"], log.attrs["data-log-owner"]), ("device_log", "panda-0001"))
        for action in ("action-power-cycle", "action-ping", "action-self-test", "action-image", "action-maintenance",
                       "action-clear-pxe", "action-power-off", "action-state-change", "comments-edit",
                       "comments-save", "environment-save"):
            self.assertEqual(len(doc.find(action)), 1, action)
        forms = {f.attrs["data-api-path"]: f for f in _forms(doc)}
        self.assertIn("/api/device/panda-0001/event/please_start_maintenance/", forms)
        self.assertIn("/api/device/panda-0001/state-change/{old}/to/{new}/", forms)
        self.assertEqual(forms["/api/device/panda-0001/power-off/"].attrs["data-confirm"], "Turn panda-0001 off?")
        self.assertNotIn("data-confirm", forms["/api/device/panda-0001/ping/"].attrs)
        self.assertEqual({f.attrs["data-owner"] for f in forms.values()}, {A})
        self.assertEqual(self.attr(doc, "state-change-old", "value"), ["ready"])
        pxe_options = [o.attrs["value"] for o in doc.find("power-cycle-pxe")[0].children]
        self.assertEqual(pxe_options[0], "")
        self.assertIn("android-install", pxe_options)
        self.assertIn(b'data-events="/api/events?device=panda-0001"', answer.body)

    async def test_another_servers_device(self) -> None:
        doc = await self.page("/ui/device/bpanda-0001")
        self.assertEqual({f.attrs["data-owner"] for f in _forms(doc)}, {B})
        self.assertEqual({f.attrs["data-owner-url"] for f in _forms(doc)}, {"http://" + B})
        self.assertIn(f"belongs to imaging server {B}", " ".join(doc.text.split()))
        self.assertEqual(self.attr(doc, "owner-note", "class"), ["note"])
        # A server that serves its API over TLS is named with its scheme.
        await self.sql("UPDATE imaging_servers SET fqdn = ? WHERE fqdn = ?", ("https://" + B, B))
        doc = await self.page("/ui/device/bpanda-0001")
        self.assertEqual({f.attrs["data-owner-url"] for f in _forms(doc)}, {"https://" + B})
        link = doc.find("owner-note")[0].children[0]
        self.assertEqual(link.attrs["href"], f"https://{B}/ui/device/bpanda-0001")

    async def test_device_log_is_the_newest_thousand(self) -> None:
        def many(c: object) -> None:
            device = c.scalar("SELECT id FROM devices WHERE name = 'panda-0003'")  # type: ignore[attr-defined]
            c.executemany(  # type: ignore[attr-defined]
                "INSERT INTO device_logs (device_id, ts, source, message) VALUES (?, ?, 'test', ?)",
                [(device, f"2013-04-02 16:{i // 60 % 60:02d}:{i % 60:02d}", f"line {i}") for i in range(1100)],
            )

        await self.db.runInteraction(many)
        doc = await self.page("/ui/device/panda-0003")
        lines = doc.find("log-line")
        self.assertEqual(len(lines), 1000)
        self.assertIn("line 1099", lines[0].text)
        self.assertIn("line 100", lines[-1].text)

    async def test_device_fragments(self) -> None:
        await self.add_log("device", "panda-0002", "2013-04-02 17:00:00", "hello")
        doc = await self.page("/ui/device/panda-0002/summary")
        self.assertIsNotNone(doc.by_id("device-summary"))
        self.assertIsNotNone(doc.by_id("device-editors"))
        self.assertEqual(doc.find("log"), [])
        answer = await self.call("GET", "/ui/device/panda-0002/summary")
        self.assertFalse(answer.body.startswith(b"<!DOCTYPE"))
        doc = await self.page("/ui/device/panda-0002/log")
        self.assertEqual(self.texts(doc, "log-line"), ["5 min ago statemachine hello"])

    async def test_requests_page(self) -> None:
        open_id = await self.add_request(device="panda-0001")
        closed_id = await self.add_request(state="closed")
        doc = await self.page("/ui/requests")
        ids = [row.find("request-link")[0].text for row in doc.find("request-row")]
        self.assertEqual(ids, [f"#{open_id}"])
        self.assertEqual(self.attr(doc, "toggle-closed", "href"), ["/ui/requests?closed=1"])
        doc = await self.page("/ui/requests?closed=1")
        ids = [row.find("request-link")[0].text for row in doc.find("request-row")]
        self.assertEqual(ids, [f"#{closed_id}", f"#{open_id}"])  # newest first
        self.assertEqual(self.attr(doc, "request-state", "data-state"), ["closed", "ready"])

    async def test_request_page(self) -> None:
        request_id = await self.add_request(device="bpanda-0002", server=B)
        await self.add_log("request", request_id, "2013-04-02 17:04:11", "entering state ready")
        doc = await self.page(f"/ui/request/{request_id}")
        self.assertEqual(self.texts(doc, "page-title"), [f"Request {request_id}"])
        self.assertEqual(self.attr(doc, "request-state", "data-state"), ["ready"])
        self.assertEqual(self.attr(doc, "request-device", "href"), ["/ui/device/bpanda-0002"])
        self.assertEqual(self.texts(doc, "request-expires"), ["in 1 h"])
        self.assertEqual(self.texts(doc, "log-line"), ["1 min ago statemachine entering state ready"])
        forms = {f.attrs["data-api-path"]: f for f in _forms(doc)}
        self.assertEqual(set(forms), {f"/api/request/{request_id}/renew/", f"/api/request/{request_id}/return/"})
        self.assertEqual({f.attrs["data-owner"] for f in forms.values()}, {B})
        self.assertIn("data-confirm", forms[f"/api/request/{request_id}/return/"].attrs)
        summary = await self.page(f"/ui/request/{request_id}/summary")
        self.assertIsNotNone(summary.by_id("request-summary"))
        log = await self.page(f"/ui/request/{request_id}/log")
        self.assertEqual(len(log.find("log-line")), 1)

    async def test_requests_page_shows_priority_and_queue_position(self) -> None:
        """Issue 14: every request's priority, and a waiting request's place beside its state;
        only waiting requests are looked up in the queue."""
        held = await self.add_request(device="panda-0001")
        waiting = await self.add_request(state="finding_device")
        await self.sql("UPDATE requests SET priority = 80 WHERE id = ?", (waiting,))
        self.queue.places[waiting] = {"position": 2, "ahead": 1, "eta": "2013-04-02T17:09:11", "why": "1 ahead"}
        doc = await self.page("/ui/requests")
        rows = {row.find("request-link")[0].text: row for row in doc.find("request-row")}
        self.assertEqual(rows[f"#{waiting}"].find("request-priority")[0].text, "80")
        self.assertEqual(rows[f"#{held}"].find("request-priority")[0].text, "50")
        position = rows[f"#{waiting}"].find("request-queue-position")
        self.assertEqual((position[0].attrs["data-position"], " ".join(position[0].text.split())),
                         ("2", "2nd in queue"))
        self.assertEqual(rows[f"#{held}"].find("request-queue-position"), [])
        self.assertEqual(self.queue.calls, [("queue_place", waiting)])

    async def test_waiting_request_page_shows_its_place(self) -> None:
        """While a request waits for a device its page says where it stands, the ETA as an
        estimate with the exact UTC time on hover, and the part is read again every few seconds
        (a place moves with other requests' events); a request with a device shows none of it."""
        rid = await self.add_request(state="finding_device")
        await self.sql("UPDATE requests SET created = '2013-04-02 17:03:11' WHERE id = ?", (rid,))
        self.queue.places[rid] = {"position": 3, "ahead": 2, "eta": "2013-04-02T17:09:11",
                                  "why": "2 ahead; 1 suitable devices busy"}
        doc = await self.page(f"/ui/request/{rid}")
        self.assertEqual(self.attr(doc, "queue-position", "data-position"), ["3"])
        self.assertEqual(self.texts(doc, "queue-position"), ["3rd of the waiting requests"])
        self.assertEqual(self.texts(doc, "queue-ahead"), ["2 requests that could take the same devices"])
        self.assertEqual(self.texts(doc, "queue-eta"), ["in ~4 min"])
        self.assertEqual(self.attr(doc, "queue-eta", "title"), ["2013-04-02 17:09:11 UTC"])
        self.assertEqual(self.texts(doc, "queue-why"), ["2 ahead; 1 suitable devices busy"])
        self.assertEqual(self.texts(doc, "request-priority"), ["50"])
        self.assertEqual(self.texts(doc, "request-queue-timeout"), ["600 s"])
        # It gives up waiting 600 s after it was made: after the estimate, so nothing to warn of.
        self.assertEqual(self.attr(doc, "queue-gives-up", "title"), ["2013-04-02 17:13:11 UTC"])
        self.assertEqual(doc.find("queue-late"), [])
        region = doc.by_id("request-summary")
        assert region is not None
        self.assertEqual(region.attrs["hx-trigger"], "mp-refresh, every 5s")
        # What that refetch reads: the place as it is now.
        self.queue.places[rid] = {"position": 1, "ahead": 0, "eta": None, "why": "no device could serve it now"}
        summary = await self.page(f"/ui/request/{rid}/summary")
        self.assertEqual(self.attr(summary, "queue-position", "data-position"), ["1"])
        self.assertEqual(self.texts(summary, "queue-eta"), ["no estimate yet"])
        # An estimate after its queue timeout: said plainly.
        self.queue.places[rid] = {"position": 1, "ahead": 0, "eta": "2013-04-02T17:20:00", "why": "busy"}
        summary = await self.page(f"/ui/request/{rid}/summary")
        self.assertIn("failed_device_busy", self.texts(summary, "queue-late")[0])
        # Served: no place, no polling.
        await self.sql("UPDATE requests SET state = 'ready' WHERE id = ?", (rid,))
        await self.sql("INSERT INTO device_requests (request_id, device_id)"
                       " SELECT ?, id FROM devices WHERE name = 'panda-0002'", (rid,))
        doc = await self.page(f"/ui/request/{rid}")
        self.assertEqual(doc.find("request-queue"), [])
        region = doc.by_id("request-summary")
        assert region is not None
        self.assertEqual(region.attrs["hx-trigger"], "mp-refresh")

    async def test_new_request_form(self) -> None:
        doc = await self.page("/ui/requests/new?device=panda-0002")
        self.assertEqual(self.attr(doc, "new-request-device", "value"), ["panda-0002"])
        images = [o.attrs["value"] for o in doc.find("new-request-image")[0].children]
        self.assertEqual(images, ["android", "b2g"])
        environments = [o.attrs["value"] for o in doc.find("new-request-environment")[0].children]
        self.assertEqual(environments, ["any", "prod", "staging"])
        form = doc.by_id("new-request-form")
        assert form is not None
        self.assertEqual((form.attrs["data-api-method"], form.attrs["data-api-path"]),
                         ("POST", "/api/device/{device}/request/"))
        self.assertEqual(self.attr(doc, "new-request-duration", "data-type"), ["int"])
        # Issue 14's fields, sent as numbers, with the server's defaults filled in.
        for testid, name, value in (("new-request-priority", "priority", "50"),
                                    ("new-request-queue-timeout", "queue_timeout", "600")):
            self.assertEqual([self.attr(doc, testid, a)[0] for a in ("name", "value", "data-type")],
                             [name, value, "int"])
        self.assertEqual((self.attr(doc, "new-request-priority", "min"), self.attr(doc, "new-request-priority", "max")),
                         (["0"], ["100"]))
        plain = await self.page("/ui/requests/new")
        self.assertEqual(self.attr(plain, "new-request-device", "value"), ["any"])

    async def test_catalog_pages(self) -> None:
        images = await self.page("/ui/images")
        names = [row.children[0].text for row in images.find("image-row")]
        self.assertEqual(names, ["android", "b2g", "maintenance", "self-test"])  # hidden ones too
        environments = await self.page("/ui/environments")
        self.assertEqual([" ".join(r.text.split())[:4] for r in environments.find("environment-row")],
                         ["prod", "stag"])
        pxe = await self.page("/ui/pxe-configs")
        self.assertIn("android-install", self.attr(pxe, "pxe-config", "data-name"))
        self.assertTrue(all("%IPADDRESS%" in text for text in self.texts(pxe, "pxe-contents")))
        servers = await self.page("/ui/servers")
        rows = [[cell.text for cell in row.children] for row in servers.find("server-row")]
        self.assertEqual([row[:3] for row in rows], [[A + " (this server)", "3", "0"], [B, "2", "0"]])


def _forms(doc: object) -> list:
    """Every form that calls the API."""
    found = []

    def walk(node: object) -> None:
        if node.tag == "form" and "data-api-path" in node.attrs:  # type: ignore[attr-defined]
            found.append(node)
        for child in node.children:  # type: ignore[attr-defined]
            walk(child)

    walk(doc)
    return found


PagesSQLite, PagesMariaDB = on_both_backends(Pages)
