"""The power-driver registry: each relay_info goes to the driver its scheme names (a bare
string is ProXR's), one client per driver, and a new driver is one table row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mozpool.bmm import pdudaemon, power, relay
from mozpool.bmm.interfaces import DriverContext, IPowerControl, PowerConfigError, PowerDriver, PowerResult
from mozpool.bmm.relay import BoardAddress, RelayClient, RelayInfo, parse_relay_info


@dataclass(frozen=True)
class Outlet:
    name: str
    scheme: ClassVar[str] = "fake"

    @property
    def controller(self) -> str:
        return "fake://" + self.name.split("/")[0]

    @property
    def outlet(self) -> str:
        return self.name.split("/")[1]


def parse_fake(text: str) -> Outlet:
    name = text.split("://", 1)[1]
    if name.count("/") != 1:
        raise PowerConfigError(f"bad fake location {text!r}")
    return Outlet(name)


@implementer(IPowerControl)
class Recorder:
    """A driver that records what it was asked."""

    made = 0

    def __init__(self, context: DriverContext) -> None:
        Recorder.made += 1
        self.calls: list[tuple[str, Any]] = []

    def _record(self, what: str, where: Any, deadline: Optional[float] = None) -> "Deferred[PowerResult]":
        self.calls.append((what, where))
        return succeed(PowerResult(True))

    def power_on(self, location: Any, deadline: Optional[float] = None) -> "Deferred[PowerResult]":
        return self._record("on", location)

    def power_off(self, location: Any, deadline: Optional[float] = None) -> "Deferred[PowerResult]":
        return self._record("off", location)

    def power_cycle(self, location: Any, deadline: Optional[float] = None) -> "Deferred[PowerResult]":
        return self._record("cycle", location)

    def get_status(self, location: Any, deadline: Optional[float] = None) -> "Deferred[PowerResult]":
        return self._record("status", location)

    def test_controller(self, controller: str, deadline: Optional[float] = None) -> "Deferred[PowerResult]":
        return self._record("test", controller)


FAKE = PowerDriver("fake", parse_fake, Recorder, kind="fake PDU")


class Parsing(SynchronousTestCase):
    def test_every_existing_relay_info_is_proxr(self) -> None:
        for text in ("relay-3.example.com:bank2:relay5", "localhost:40001:bank1:relay8", "[::1]:4000:bank1:relay1"):
            where = power.parse_location(text)
            self.assertIsInstance(where, RelayInfo)
            self.assertEqual(where.scheme, "proxr")
        self.assertEqual(power.controller_of("localhost:40001:bank1:relay8"), "localhost:40001")
        self.assertEqual(power.parse_location("relay-3.example.com:bank2:relay5").outlet, "bank 2 relay 5")

    def test_proxr_url(self) -> None:
        self.assertEqual(parse_relay_info("proxr://relay-3.example.com:2101/2/5"),
                         RelayInfo(BoardAddress("relay-3.example.com"), 2, 5))
        self.assertEqual(parse_relay_info("PROXR://localhost:40001/bank1/relay8"), parse_relay_info("localhost:40001:bank1:relay8"))
        for bad in ("proxr://host/1", "proxr:///1/1", "proxr://host/x/1", "proxr://host/5/1", "proxr://host/1/2/3"):
            self.assertRaises(PowerConfigError, parse_relay_info, bad)
        # the same board by either spelling: one controller, one lock
        self.assertEqual(power.controller_of("proxr://localhost:40001/1/1"), power.controller_of("localhost:40001:bank4:relay8"))

    def test_pdudaemon(self) -> None:
        where = power.parse_location("pdudaemon://127.0.0.1:16421/127.0.0.1:20901/3")
        self.assertIsInstance(where, pdudaemon.PduPort)
        self.assertEqual(where.controller, "pdudaemon://127.0.0.1:16421/127.0.0.1:20901")

    def test_no_or_unknown_driver(self) -> None:
        self.assertEqual(str(self.assertRaises(PowerConfigError, power.parse_location, None)), "no relay configured")
        self.assertRaises(PowerConfigError, power.parse_location, "  ")
        e = self.assertRaises(PowerConfigError, power.parse_location, "snmp://pdu/1")
        self.assertIn("unknown power driver 'snmp'", str(e))
        self.assertIsNone(power.controller_of("junk"))
        self.assertIsNone(power.controller_of("snmp://pdu/1"))

    def test_kinds(self) -> None:
        self.assertEqual(power.kind_of("localhost:20001"), "ProXR relay board")
        self.assertEqual(power.kind_of("pdudaemon://h:1/p"), "pdudaemon PDU")
        self.assertEqual(set(power.drivers), {"proxr", "pdudaemon"})


class Dispatch(SynchronousTestCase):
    def setUp(self) -> None:
        Recorder.made = 0
        # The registry with a driver added: one more row, nothing else.
        self.control = power.PowerControl(DriverContext(Clock()), {**power.drivers, "fake": FAKE})

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IPowerControl, self.control))
        self.assertTrue(verifyObject(IPowerControl, RelayClient(Clock())))

    def test_each_device_to_its_driver(self) -> None:
        for op in ("power_on", "power_off", "power_cycle", "get_status"):
            self.assertTrue(self.successResultOf(getattr(self.control, op)("fake://strip-1/4")).ok)
        self.successResultOf(self.control.test_controller("fake://strip-1"))
        recorder = self.control.clients["fake"]
        assert isinstance(recorder, Recorder)
        self.assertEqual([c[0] for c in recorder.calls], ["on", "off", "cycle", "status", "test"])
        self.assertEqual(recorder.calls[0][1], Outlet("strip-1/4"))
        self.assertEqual(Recorder.made, 1)
        self.assertEqual(set(self.control.clients), {"fake"})

    def test_proxr_client_made_from_the_context(self) -> None:
        simulated = power.PowerControl(DriverContext(Clock(), simulated=True, time_scale=0.01))
        client = simulated.client("proxr")
        assert isinstance(client, RelayClient)
        self.assertEqual((client.timing.cycle_pause, client.timing.recovery_pause),
                         (0.01, 0.01 + relay.SIMULATED_RECOVERY_SLACK))
        real = power.PowerControl(DriverContext(Clock(), simulated=False, time_scale=0.01)).client("proxr")
        assert isinstance(real, RelayClient)
        self.assertEqual(real.timing, relay.RelayTiming())

    def test_bad_locations_fail_at_once(self) -> None:
        for text, reason in ((None, "no relay configured"), ("fake://nope", "bad fake location"),
                             ("snmp://x/1", "unknown power driver 'snmp'")):
            result = self.successResultOf(self.control.power_cycle(text))
            self.assertFalse(result.ok)
            self.assertIn(reason, result.reason)
        self.assertIn("unknown power driver", self.successResultOf(self.control.test_controller("snmp://x")).reason)
        self.assertEqual(self.control.clients, {})

    def test_parsed_location_goes_straight_to_its_driver(self) -> None:
        self.successResultOf(self.control.power_on(Outlet("a/1")))
        recorder = self.control.clients["fake"]
        assert isinstance(recorder, Recorder)
        self.assertEqual(recorder.calls, [("on", Outlet("a/1"))])
        self.successResultOf(self.control.drained())


class AThirdDriver(SynchronousTestCase):
    """The issue's measure: a new driver is its module and one registry row.  With the row
    added, every layer that names controllers knows the new one: dispatch, the lab map, the
    inventory's controllers, their kind for people."""

    def setUp(self) -> None:
        self.patch(power, "drivers", {**power.drivers, FAKE.scheme: FAKE})

    def test_every_layer_knows_it(self) -> None:
        from mozpool.inventory import rules
        from mozpool.web.ui import pages

        self.assertEqual(power.controller_of("fake://strip-1/4"), "fake://strip-1")
        self.assertEqual(power.kind_of("fake://strip-1"), "fake PDU")
        self.assertEqual(rules.controller_address("fake://strip-1/4"), "fake://strip-1")
        self.assertEqual(rules.controller_name("fake://strip-1"), "strip-1")
        devices = [{"name": "a", "relay_info": "fake://strip-1/4"}, {"name": "b", "relay_info": "fake://strip-1/2"},
                   {"name": "c", "relay_info": "localhost:20001:bank1:relay1"}, {"name": "d", "relay_info": "fake://x"}]
        wired, unwired = pages.wiring(devices)
        self.assertEqual({k: sorted(v) for k, v in wired.items()}, {"fake://strip-1": ["2", "4"], "localhost:20001": [(1, 1)]})
        self.assertEqual([d["name"] for d in unwired], ["d"])
        control = power.PowerControl(DriverContext(Clock()))  # the default table: the registry
        self.successResultOf(control.power_cycle("fake://strip-1/4"))
        self.successResultOf(control.test_controller("fake://strip-1"))
        recorder = control.clients["fake"]
        assert isinstance(recorder, Recorder)
        self.assertEqual([c[0] for c in recorder.calls], ["cycle", "test"])
