"""Each source against a simulated inventory over real loopback HTTP (treq), and the file source:
the documented shapes, pages, errors part-way, slow and lost answers, TLS.  A source either
returns every system or raises InventoryError."""

from __future__ import annotations

import os

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from mozpool.inventory.filesource import FileInventory
from mozpool.inventory.model import InventoryError
from mozpool.inventory.rules import select
from tests.inventory.support import SERVER, FakeSystem, mozilla, netbox, pandas


def kept(source, systems):  # type: ignore[no-untyped-def]
    return select(systems, source.field_names)


class MozillaBulk(TestCase):
    timeout = 30

    async def test_export_and_look_ups(self) -> None:
        systems = pandas(12, SERVER)
        systems[2].status = "decommissioned"
        systems[3].relay = None
        systems[4].mac = None
        systems[5].vendor, systems[5].model = "Samsung", "GT-I9100"
        systems[6].status = "spare"
        fake, source = await mozilla(self, systems, filter="/^panda-")
        got = kept(source, await source.fetch())
        self.assertEqual(len(got.devices), 9)
        panda = got.devices[0]
        self.assertEqual((panda.name, panda.fqdn, panda.inventory_id, panda.mac_address, panda.imaging_server,
                          panda.relay_info, panda.hardware_type, panda.hardware_model),
                         ("panda-0001", "panda-0001.lab.example.com", 1, "020000000001", SERVER,
                          "relay-1.lab.example.com:bank1:relay1", "PandaBoard", "ES"))
        self.assertEqual({d.name: d.hardware_type for d in got.devices}["panda-0006"], "Samsung")
        self.assertEqual({s.hostname.split(".")[0]: s.reason for s in got.skipped}, {
            "panda-0003": "decommissioned",
            "panda-0004": "missing system.relay.0",
            "panda-0005": 'no MAC address (looking for SREG "nic0" with adapter "hw0")',
        })
        paths = [r.path for r in fake.requests]
        # The filter reaches the export percent-encoded (/ kept); each look-up once per key.
        self.assertEqual(paths[0], "/en-US/bulk_action/export/?q=/%5Epanda-")
        self.assertEqual(sorted(paths[1:]), [
            "/en-US/core/api/v1_core/servermodel/1/", "/en-US/core/api/v1_core/servermodel/2/",
            "/en-US/core/api/v1_core/systemstatus/1/", "/en-US/core/api/v1_core/systemstatus/2/",
            "/en-US/core/api/v1_core/systemstatus/3/",
        ])
        self.assertEqual({r.who for r in fake.requests}, {"mozpool"})

    async def test_power_key_names_the_driver(self) -> None:
        """system.power.0, when set, is the device's relay_info (with its driver); the relay key
        stays ProXR's."""
        systems = pandas(3, SERVER)
        systems[0].power = "pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/3"
        systems[1].relay, systems[1].power = None, "pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/4"
        _, source = await mozilla(self, systems)
        got = kept(source, await source.fetch())
        self.assertEqual([d.relay_info for d in got.devices], [
            "pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/3", "pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/4", "relay-1.lab.example.com:bank1:relay3"])
        _, paged = await mozilla(self, systems, api="paginated")
        self.assertEqual([d.relay_info for d in kept(paged, await paged.fetch()).devices][:2],
                         ["pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/3", "pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/4"])

    async def test_wrong_password(self) -> None:
        _, source = await mozilla(self, pandas(2, SERVER), password="wrong")
        e = await self.assertFailure(defer.ensureDeferred(source.fetch()), InventoryError)
        self.assertIn("HTTP 401", str(e))

    async def test_failure_part_way(self) -> None:
        """The export succeeded but a look-up failed: the whole fetch fails."""
        for knob, expected in (("fail", "HTTP 500"), ("garble", "not JSON"), ("drop", "GET http")):
            systems = pandas(3, SERVER)
            systems[1].vendor = "Other"
            _, source = await mozilla(self, systems, **{knob: {3: 500} if knob == "fail" else {3}})
            e = await self.assertFailure(defer.ensureDeferred(source.fetch()), InventoryError)
            self.assertIn(expected, str(e), knob)

    async def test_wrong_shape(self) -> None:
        fake, source = await mozilla(self, pandas(2, SERVER))
        fake.answer = lambda request, path, args: (200, {"objects": []})  # type: ignore[method-assign]
        e = await self.assertFailure(defer.ensureDeferred(source.fetch()), InventoryError)
        self.assertIn("'systems': expected dict", str(e))
        fake.answer = lambda request, path, args: (200, {"systems": {"x": {"hostname": "x", "pk": "7"}}})  # type: ignore[method-assign]
        e = await self.assertFailure(defer.ensureDeferred(source.fetch()), InventoryError)
        self.assertIn("system x: pk: expected int", str(e))

    async def test_slow_answers_within_the_bound(self) -> None:
        fake, source = await mozilla(self, pandas(3, SERVER), delay=0.05)
        self.assertEqual(len(await source.fetch()), 3)

    async def test_no_answer_times_out_on_the_clock(self) -> None:
        """30 s per request, on the injected clock (the network is real, time is not)."""
        clock = task.Clock()
        fake, source = await mozilla(self, pandas(3, SERVER), clock=clock, hold=True)
        arrived = fake.next_request()
        fetching = defer.ensureDeferred(source.fetch())
        await arrived
        clock.advance(29)
        self.assertNoResult(fetching)
        clock.advance(1)
        e = await self.assertFailure(fetching, InventoryError)
        self.assertIn("no complete answer within 30 s", str(e))

    async def test_empty(self) -> None:
        _, source = await mozilla(self, pandas(3, SERVER), empty=True)
        self.assertEqual(await source.fetch(), [])


class MozillaPaginated(TestCase):
    timeout = 30

    async def test_every_page(self) -> None:
        fake, source = await mozilla(self, pandas(20, SERVER), api="paginated", filter="hostname__startswith=panda-",
                                     page_size=7)
        got = kept(source, await source.fetch())
        self.assertEqual([d.inventory_id for d in got.devices], list(range(1, 21)))
        self.assertEqual(got.devices[0].hardware_type, "PandaBoard")
        self.assertEqual(len(fake.requests), 3)
        self.assertEqual(fake.requests[0].path, "/en-US/tasty/v3/system/?limit=100&hostname__startswith=panda-")
        self.assertIn("offset=14", fake.requests[2].path)

    async def test_a_failing_page_fails_the_fetch(self) -> None:
        for knob in ("fail", "garble", "drop"):
            _, source = await mozilla(self, pandas(20, SERVER), api="paginated", page_size=7,
                                      **{knob: {3: 503} if knob == "fail" else {3}})
            await self.assertFailure(defer.ensureDeferred(source.fetch()), InventoryError)

    async def test_changed_while_paging(self) -> None:
        """A system added between two pages shifts the offsets: the fetch fails rather than
        miss one (which the sync would then delete)."""
        systems = pandas(20, SERVER)
        fake, source = await mozilla(self, systems, api="paginated", page_size=7)
        fake.on_request = lambda n: fake.systems.append(FakeSystem("a-new.lab.example.com", 0)) if n == 2 else None
        e = await self.assertFailure(defer.ensureDeferred(source.fetch()), InventoryError)
        self.assertIn("changed while it was being read", str(e))


class NetBox(TestCase):
    timeout = 30

    async def test_devices_and_interfaces(self) -> None:
        systems = pandas(25, SERVER, domain="lab.example.com")
        systems[1].status = "decommissioned"
        systems[2].relay = None
        systems[3].interfaces = {"eth0": "02:00:00:00:00:04", "wlan0": "02:00:00:00:01:04"}
        systems[4].interfaces = {}
        systems[5].role = "switch"
        fake, source = await netbox(self, systems, filter="role=panda&site=lab", domain="lab.example.com")
        fake.page_size = 10
        fake.advertised = "http://netbox.behind-a-proxy.invalid"
        got = kept(source, await source.fetch())
        self.assertEqual(len(got.devices), 20)
        d = got.devices[0]
        self.assertEqual((d.name, d.fqdn, d.inventory_id, d.mac_address, d.relay_info, d.imaging_server,
                          d.hardware_type, d.hardware_model),
                         ("panda-0001", "panda-0001.lab.example.com", 1, "020000000001",
                          "relay-1.lab.example.com:bank1:relay1", SERVER, "PandaBoard", "ES"))
        self.assertEqual({s.hostname.split(".")[0]: s.reason for s in got.skipped}, {
            "panda-0002": "status decommissioning",
            "panda-0003": "missing custom field mozpool_relay",
            "panda-0004": "several interfaces with a MAC address (eth0, wlan0): set [inventory] interface",
            "panda-0005": "no MAC address (an interface with a MAC address)",
        })
        paths = [r.path for r in fake.requests]
        self.assertEqual(paths[0], "/api/dcim/devices/?limit=100&role=panda&site=lab")
        self.assertEqual(sum(p.startswith("/api/dcim/devices/") for p in paths), 3, "24 devices, 10 a page")
        self.assertTrue(all(p.startswith("/api/dcim/interfaces/?") for p in paths[3:]))
        self.assertEqual({r.who for r in fake.requests}, {"0123abcd"})

    async def test_configured_interface_fields_and_v2_token(self) -> None:
        systems = pandas(2, SERVER)
        systems[0].interfaces = {"eth0": "02:00:00:00:00:01", "usb0": "02:00:00:00:09:01"}
        fake, source = await netbox(self, systems, token="nbt_abc.def", interface="usb0",
                                    relay_field="power_port", imaging_server_field="imager")
        fake.relay_field, fake.imaging_server_field = "power_port", "imager"
        fake.primary_mac_only = True
        got = kept(source, await source.fetch())
        self.assertEqual([d.mac_address for d in got.devices], ["020000000901"])
        self.assertEqual(got.skipped[0].reason, "no MAC address (interface usb0)")
        self.assertIn("name=usb0", fake.requests[-1].path)

    async def test_power_field(self) -> None:
        systems = pandas(2, SERVER)
        systems[1].relay, systems[1].power = None, "pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/3"
        _, source = await netbox(self, systems)
        got = kept(source, await source.fetch())
        self.assertEqual([d.relay_info for d in got.devices], ["relay-1.lab.example.com:bank1:relay1", "pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/3"])

    async def test_refused_token(self) -> None:
        _, source = await netbox(self, pandas(2, SERVER), fake_token="another")
        e = await self.assertFailure(defer.ensureDeferred(source.fetch()), InventoryError)
        self.assertIn("HTTP 403", str(e))

    async def test_failures_part_way(self) -> None:
        for knob, n in (("fail", 2), ("fail", 3), ("garble", 2), ("drop", 3)):
            fake, source = await netbox(self, pandas(25, SERVER))
            fake.page_size = 10
            setattr(fake, knob, {n: 500} if knob == "fail" else {n})
            await self.assertFailure(defer.ensureDeferred(source.fetch()), InventoryError)

    async def test_changed_while_paging(self) -> None:
        systems = pandas(25, SERVER)
        fake, source = await netbox(self, systems)
        fake.page_size = 10
        fake.on_request = lambda n: fake.systems.pop(0) if n == 2 else None
        e = await self.assertFailure(defer.ensureDeferred(source.fetch()), InventoryError)
        self.assertIn("changed while it was being read", str(e))


class TLS(TestCase):
    timeout = 30

    async def test_verified(self) -> None:
        from tests.support.tls import make_ca

        key, cert, ca = make_ca(self.mktemp())
        endpoint = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        _, source = await mozilla(self, pandas(2, SERVER), endpoint=endpoint, ca_certs=ca)
        self.assertTrue(source.url.startswith("https://"))
        self.assertEqual(len(await source.fetch()), 2)
        _, untrusted = await mozilla(self, pandas(2, SERVER), endpoint=endpoint)
        e = await self.assertFailure(defer.ensureDeferred(untrusted.fetch()), InventoryError)
        self.assertIn("certificate verify failed", str(e))


class File(TestCase):
    def write(self, name: str, text: str) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    async def fetch(self, name: str, text: str) -> list:
        source = FileInventory(self.write(name, text))
        return kept(source, await source.fetch())  # type: ignore[return-value]

    async def test_csv(self) -> None:
        got = await self.fetch("lab.csv", (
            "\ufeffHostname,MAC,imaging_server,relay,hardware_type,hardware_model,notes\n"
            "panda-1.lab, 00:11:22:33:44:01 ,img1:8010,relay-1.lab:bank1:relay1,panda,,by the window\n"
            "\n"
            "# panda-9.lab,00:11:22:33:44:09,img1:8010,relay-1.lab:bank1:relay9,panda,,\n"
            "panda-2.lab,00-11-22-33-44-02,img1:8010,,panda,,\n"
        ))
        self.assertEqual([(d.name, d.inventory_id, d.mac_address, d.hardware_model) for d in got.devices],
                         [("panda-1", None, "001122334401", "")])
        self.assertEqual([(s.hostname, s.reason) for s in got.skipped], [("panda-2.lab", "missing relay")])

    async def test_yaml(self) -> None:
        got = await self.fetch("lab.yaml", (
            "devices:\n"
            "  - {hostname: panda-1.lab, inventory_id: 7, mac: '00:11:22:33:44:01', imaging_server: img1,\n"
            "     relay: 'relay-1:bank1:relay1', hardware_type: panda, hardware_model: ES}\n"
            "  - hostname: panda-2.lab\n"
            "    mac: '00:11:22:33:44:02'\n"
            "    relay: 'relay-1:bank1:relay2'\n"
            "    hardware_type: panda\n"
        ))
        self.assertEqual([(d.name, d.inventory_id) for d in got.devices], [("panda-1", 7)])
        self.assertEqual(got.skipped[0].reason, "missing imaging_server")

    async def test_power_column(self) -> None:
        got = await self.fetch("lab.csv", (
            "hostname,mac,imaging_server,power,hardware_type\n"
            "panda-1.lab,00:11:22:33:44:01,img1:8010,pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/3,panda\n"
            "panda-2.lab,00:11:22:33:44:02,img1:8010,relay-1.lab:bank1:relay2,panda\n"
        ))
        self.assertEqual([d.relay_info for d in got.devices], ["pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/3", "relay-1.lab:bank1:relay2"])
        got = await self.fetch("lab.yaml", (
            "- {hostname: panda-1.lab, mac: '00:11:22:33:44:01', imaging_server: img1, relay: 'relay-1:bank1:relay1',\n"
            "   power: 'pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/3', hardware_type: panda}\n"
        ))
        self.assertEqual([d.relay_info for d in got.devices], ["pdudaemon://pdud.lab.example.com:16421/pdu-1.lab.example.com/3"], "power wins over relay")

    async def test_refused_files(self) -> None:
        header = "hostname,inventory_id,mac,imaging_server,relay,hardware_type\n"
        line = "panda-{0}.lab,{1},00:11:22:33:44:0{0},img1,relay-1:bank1:relay{0},panda\n"
        cases = {
            "missing.csv": (None, "cannot read"),
            "header.csv": ("hostname,mac,imaging_server,relay_info,hardware_type\n", "the header row lacks relay"),
            "twice.csv": (header + line.format(1, 5) + line.format(1, 6), "hostname panda-1.lab is listed again (first at line 2)"),
            "id-twice.csv": (header + line.format(1, 5) + line.format(2, 5), "inventory_id 5 is listed again"),
            "bad-id.csv": (header + line.format(1, "x"), "line 2: inventory_id 'x' is not a whole number"),
            "mac.yaml": ("- {hostname: a, mac: 10:20:30:40:50:59}\n", "the MAC address read as a number; quote it"),
            "key.yaml": ("- {hostname: a, relay_info: x}\n", "unknown key relay_info"),
            "shape.yaml": ("hostname: a\n", "expected a list of devices"),
            "broken.yaml": ("- {hostname: [\n", "broken.yaml"),
        }
        for name, (text, expected) in cases.items():
            path = self.write(name, text) if text is not None else os.path.join(self.mktemp(), name)
            e = await self.assertFailure(defer.ensureDeferred(FileInventory(path).fetch()), InventoryError)
            self.assertIn(expected, str(e), name)

