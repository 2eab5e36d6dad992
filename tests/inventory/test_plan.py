"""The shared rules (spec bmm-protocols 7.4), the derived boards (1.6), the merge (7.5) and the
failsafes (7.6), as pure functions: no database, no network."""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from mozpool.inventory.model import SyncAborted, System
from mozpool.inventory.plan import BoardRow, DeviceRow, plan
from mozpool.inventory.rules import assign_ids, board_address, board_name, controller_name, derive_boards, select

NAMES = {"relay_info": "system.relay.0", "imaging_server": "system.imaging_server.0", "mac": "nic0/hw0",
         "hardware_type": "server model"}


def system(n: int, **kw: object) -> System:
    values: dict = dict(hostname=f"panda-{n:04d}.lab.example.com", inventory_id=n, mac=f"00:1A:2B:3C:4D:{n:02X}",
                        imaging_server="img1.example.com", relay_info=f"relay-1.lab.example.com:bank1:relay{n}",
                        hardware_type="PandaBoard", hardware_model="ES")
    values.update(kw)
    return System(**values)


def row(n: int, id: int | None = None, **kw: object) -> DeviceRow:
    d = select([system(n)], NAMES).devices[0]
    values: dict = dict(id=id or n, name=d.name, fqdn=d.fqdn, inventory_id=n, mac_address=d.mac_address,
                        imaging_server=d.imaging_server, relay_info=d.relay_info, hardware_type="PandaBoard",
                        hardware_model="ES")
    values.update(kw)
    return DeviceRow(**values)


BOARD = BoardRow(1, "relay-1", "relay-1.lab.example.com", "img1.example.com")


class Rules(SynchronousTestCase):
    def test_mapping(self) -> None:
        d = select([system(1)], NAMES).devices[0]
        self.assertEqual(
            (d.name, d.fqdn, d.inventory_id, d.mac_address, d.imaging_server, d.relay_info, d.hardware_type, d.hardware_model),
            ("panda-0001", "panda-0001.lab.example.com", 1, "001a2b3c4d01", "img1.example.com",
             "relay-1.lab.example.com:bank1:relay1", "PandaBoard", "ES"),
        )

    def test_skipped_with_reasons(self) -> None:
        systems = [
            system(1, skip="decommissioned"),
            system(2, relay_info=None),
            system(3, relay_info=None, imaging_server=None),
            system(4, mac=None),
            system(5, imaging_server="mobile-imaging-9.example.com"),
            system(6, mac="00:11:22:33:44"),
            system(7, hostname="a-name-much-longer-than-thirty-two-characters.example.com"),
            system(8, hardware_type=None),
            system(9, hardware_type="x" * 33),
            system(10, hostname="pandä-10.example.com"),
            system(11),
        ]
        sel = select(systems, NAMES, ignore_re="mobile-imaging-9")
        self.assertEqual([d.inventory_id for d in sel.devices], [11])
        reasons = {s.hostname.split(".")[0]: s.reason for s in sel.skipped}
        self.assertEqual(reasons["panda-0001"], "decommissioned")
        self.assertEqual(reasons["panda-0002"], "missing system.relay.0")
        self.assertEqual(reasons["panda-0003"], "missing system.relay.0, system.imaging_server.0")
        self.assertEqual(reasons["panda-0004"], "no MAC address (nic0/hw0)")
        self.assertEqual(reasons["panda-0005"], "ignored imaging server mobile-imaging-9.example.com")
        self.assertEqual(reasons["panda-0006"], "MAC address '00:11:22:33:44' is not 12 hex digits")
        self.assertIn("longer than 32 characters", reasons["a-name-much-longer-than-thirty-two-characters"])
        self.assertEqual(reasons["panda-0008"], "no hardware type (server model)")
        self.assertIn("hardware type 'xxx", reasons["panda-0009"])
        self.assertEqual(reasons["pandä-10"], "host name or imaging server is not ASCII")

    def test_ignore_is_anchored_at_the_start(self) -> None:
        sel = select([system(1, imaging_server="a.mobile-imaging-9.example.com")], NAMES, ignore_re="mobile-imaging-9")
        self.assertEqual(len(sel.devices), 1)

    def test_one_name_twice_keeps_the_lowest_id(self) -> None:
        sel = select([system(7, hostname="panda-1.b.example.com"), system(3, hostname="panda-1.a.example.com")], NAMES)
        self.assertEqual([d.fqdn for d in sel.devices], ["panda-1.a.example.com"])
        self.assertEqual(sel.skipped[0].reason, "name panda-1 is already panda-1.a.example.com's (inventory id 3)")

    def test_ids_for_rows_without_one(self) -> None:
        """A file without inventory ids keeps matching the database's rows by name."""
        devices = select([system(1, inventory_id=None), system(2, inventory_id=None), system(3, inventory_id=9)], NAMES).devices
        got = assign_ids(devices, {"panda-0002": 9, "panda-0001": 4})
        self.assertEqual([(d.name, d.inventory_id) for d in got], [("panda-0001", 4), ("panda-0002", 10), ("panda-0003", 9)])


class Boards(SynchronousTestCase):
    def test_address_and_name(self) -> None:
        self.assertEqual(board_address("relay-3.example.com:bank2:relay5"), "relay-3.example.com")
        self.assertEqual(board_address("localhost:40001:bank1:relay8"), "localhost:40001")
        for bad in ("relay-3.example.com", "host:bankx:relay1", "host:bank1", ":bank1:relay1"):
            self.assertIsNone(board_address(bad), bad)
        self.assertEqual(board_name("relay-3.example.com"), "relay-3")
        self.assertEqual(board_name("localhost:40001"), "localhost-40001")
        self.assertEqual(board_name("10.0.0.5"), "10.0.0.5")

    def test_derived_from_kept_devices(self) -> None:
        devices = select([system(1), system(2), system(3, relay_info="relay-2.lab.example.com:bank1:relay1"),
                          system(4, relay_info="junk")], NAMES).devices
        boards, notes = derive_boards(devices)
        self.assertEqual([(b.name, b.fqdn, b.imaging_server) for b in boards], [
            ("relay-1", "relay-1.lab.example.com", "img1.example.com"),
            ("relay-2", "relay-2.lab.example.com", "img1.example.com"),
        ])
        self.assertEqual(notes, ["panda-0004.lab.example.com: relay 'junk' is not host[:port]:bankN:relayN; "
                                 "no relay board for it"])

    def test_power_controllers_of_every_driver(self) -> None:
        """A pdudaemon PDU is a controller too, named after the PDU; ProXR URLs are the board."""
        plug = "pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/3"
        devices = select([system(1), system(2, relay_info=plug), system(3, relay_info=plug[:-1] + "4"),
                          system(4, relay_info="proxr://relay-1.lab.example.com/1/4"),
                          system(5, relay_info="snmp://pdu-9/1")], NAMES).devices
        boards, notes = derive_boards(devices)
        self.assertEqual([(b.name, b.fqdn) for b in boards], [
            ("pdu-1", "pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com"),
            ("relay-1", "relay-1.lab.example.com"),
        ])
        self.assertEqual(notes, ["panda-0005.lab.example.com: power location 'snmp://pdu-9/1' names no power "
                                 "controller MozPool knows; no relay board for it"])
        self.assertEqual(controller_name("pdudaemon://127.0.0.1:16421/127.0.0.1:20901"), "127.0.0.1-20901")

    def test_board_on_two_servers_aborts(self) -> None:
        devices = select([system(1), system(2, imaging_server="img2.example.com")], NAMES).devices
        e = self.assertRaises(SyncAborted, derive_boards, devices)
        self.assertIn("relay board relay-1.lab.example.com is wired to devices of two imaging servers "
                      "(img1.example.com and img2.example.com", str(e))

    def test_two_boards_one_name(self) -> None:
        devices = select([system(1), system(2, relay_info="relay-1.other.example.com:bank1:relay1")], NAMES).devices
        boards, notes = derive_boards(devices)
        self.assertEqual(len(boards), 1)
        self.assertIn("would both be named relay-1", notes[0])


class Merge(SynchronousTestCase):
    def changes(self, db: list[DeviceRow], systems: list[System], boards: list[BoardRow] = [BOARD]) -> list[str]:
        return [c.describe() for c in plan(db, boards, select(systems, NAMES)).changes]

    def test_nothing_to_do(self) -> None:
        self.assertEqual(self.changes([row(1), row(2)], [system(1), system(2)]), [])

    def test_insert_update_delete(self) -> None:
        got = self.changes(
            [row(1), row(2, relay_info="relay-1.lab.example.com:bank4:relay4"), row(3)],
            [system(1), system(2), system(4, relay_info="relay-2.lab.example.com:bank1:relay1")],
        )
        self.assertEqual(got, [
            "delete device panda-0003.lab.example.com",
            "update device panda-0002.lab.example.com: relay_info 'relay-1.lab.example.com:bank4:relay4' -> "
            "'relay-1.lab.example.com:bank1:relay2'",
            "insert device panda-0004.lab.example.com",
            "insert relay_board relay-2.lab.example.com",
        ])

    def test_update_names_exactly_the_changed_fields(self) -> None:
        changes = plan([row(1, hardware_type=None, hardware_model=None, imaging_server="old.example.com")], [BOARD],
                       select([system(1)], NAMES)).devices
        self.assertEqual(len(changes), 1)
        self.assertEqual(dict(changes[0].values),
                         {"imaging_server": "img1.example.com", "hardware_type": "PandaBoard", "hardware_model": "ES"})
        self.assertEqual(dict(changes[0].before),
                         {"imaging_server": "old.example.com", "hardware_type": None, "hardware_model": None})

    def test_matched_by_inventory_id(self) -> None:
        """A renamed system is an update; a name moving to another id is a delete and an insert,
        deletes first so the name is free."""
        self.assertEqual(self.changes([row(1)], [system(1, hostname="panda-renamed.lab.example.com")]),
                         ["update device panda-renamed.lab.example.com: name 'panda-0001' -> 'panda-renamed', "
                          "fqdn 'panda-0001.lab.example.com' -> 'panda-renamed.lab.example.com'"])
        self.assertEqual(self.changes([row(1)], [system(2, hostname="panda-0001.lab.example.com",
                                                        relay_info="relay-1.lab.example.com:bank1:relay1")]),
                         ["delete device panda-0001.lab.example.com", "insert device panda-0001.lab.example.com"])

    def test_boards_follow_the_devices(self) -> None:
        got = self.changes([row(1)], [system(1, imaging_server="img2.example.com")],
                           [BOARD, BoardRow(2, "relay-9", "relay-9.lab.example.com", "img1.example.com")])
        self.assertEqual(got, [
            "update device panda-0001.lab.example.com: imaging_server 'img1.example.com' -> 'img2.example.com'",
            "delete relay_board relay-9.lab.example.com",
            "update relay_board relay-1.lab.example.com: imaging_server 'img1.example.com' -> 'img2.example.com'",
        ])

    def test_duplicate_rows_beyond_the_first_are_deleted(self) -> None:
        got = self.changes([row(1, id=1), row(1, id=2, name="panda-copy")], [system(1)])
        self.assertEqual(got, ["delete device panda-0001.lab.example.com"])
        self.assertEqual(plan([row(1, id=1), row(1, id=2)], [BOARD], select([system(1)], NAMES)).devices[0].row_id, 2)

    def test_an_id_listed_twice_aborts(self) -> None:
        sel = select([system(1), system(2)], NAMES)
        sel.devices[1] = replace(sel.devices[1], inventory_id=1)
        self.assertRaises(SyncAborted, plan, [], [], sel)


class Failsafe(SynchronousTestCase):
    def test_large_change_sets_need_ship_it(self) -> None:
        db = [row(n) for n in range(1, 101)]
        # 100 in the database: up to max(5, 10, 10) = 10 changes go through.
        ten = plan(db, [BOARD], select([system(n) for n in range(11, 101)], NAMES))
        self.assertEqual((len(ten.devices), ten.abort_reason(False)), (10, None))
        eleven = plan(db, [BOARD], select([system(n) for n in range(12, 101)], NAMES))
        self.assertEqual(eleven.abort_reason(False), "11 changes: pass --ship-it to make these changes")
        self.assertIsNone(eleven.abort_reason(True))

    def test_small_pools_allow_five(self) -> None:
        self.assertIsNone(plan([], [], select([system(n) for n in range(1, 6)], NAMES)).abort_reason(False))
        six = plan([], [], select([system(n) for n in range(1, 7)], NAMES))
        self.assertEqual(six.abort_reason(False), "6 changes: pass --ship-it to make these changes")

    def test_the_larger_side_sets_the_limit(self) -> None:
        """54 in the database, 60 listed: up to max(5, 5, 6) = 6 changes."""
        six = plan([row(n) for n in range(1, 55)], [BOARD], select([system(n) for n in range(1, 61)], NAMES))
        self.assertEqual((len(six.devices), six.abort_reason(False)), (6, None))
        seven = plan([row(n) for n in range(1, 54)], [BOARD], select([system(n) for n in range(1, 61)], NAMES))
        self.assertEqual(seven.abort_reason(False), "7 changes: pass --ship-it to make these changes")

    def test_an_empty_inventory_never_deletes_everything_unattended(self) -> None:
        one = plan([row(1)], [BOARD], select([system(2, mac=None)], NAMES))
        self.assertEqual(one.abort_reason(False),
                         "the inventory lists no devices (1 systems skipped): refusing to delete every device "
                         "(1 in the database); pass --ship-it if that is right")
        self.assertIsNone(one.abort_reason(True))
        self.assertIsNone(plan([], [], select([], NAMES)).abort_reason(False))
