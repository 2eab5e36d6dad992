"""The warm pool (issue 14, item 3): its configuration, each server's share, and passes on a real
test database with a real LifeGuard (fake hardware) and a Broker, on a task.Clock."""

from __future__ import annotations

import configparser
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mozpool.broker import queue, warm
from mozpool.broker.warm import WarmPool, WarmPoolService, largest_remainder, share
from mozpool.broker.warmsettings import Target, WarmSettings, warm_settings
from mozpool.config import ConfigError, load_config
from mozpool.db import fixtures
from mozpool.lifeguard import states
from mozpool.lifeguard.service import LifeGuard
from mozpool.timeutil import dbnow
from tests.broker.support import HERE, OTHER, BrokerTest
from tests.lifeguard.support import FakeHardware
from tests.support.dbtest import on_both_backends


def parse(text: str) -> WarmSettings:
    parser = configparser.ConfigParser()
    parser.read_string(text)
    return warm_settings(parser)


class Settings(SynchronousTestCase):
    def test_targets_environments_and_boot_configs(self) -> None:
        s = parse("[warm_pool]\nandroid = 4\nandroid@prod = 2\nb2g = 1\nb2g.b2gbase = http://b/\nmax_concurrent = 3\n")
        self.assertEqual(s.targets, (Target("android", "any", 4), Target("android", "prod", 2), Target("b2g", "any", 1)))
        self.assertEqual(s.boot_config_values("b2g"), {"b2gbase": "http://b/"})
        self.assertEqual((s.max_concurrent, s.interval, s.auto, s.enabled), (3, 60.0, False, True))

    def test_off_unless_asked(self) -> None:
        """No section, an empty one, or zero targets: no warm pool runs."""
        self.assertFalse(parse("").enabled)
        self.assertFalse(parse("[warm_pool]\nmax_concurrent = 2\n").enabled)
        self.assertFalse(parse("[warm_pool]\nandroid = 0\n").enabled)

    def test_auto(self) -> None:
        s = parse("[warm_pool]\nauto = true\nspares = 15%\n")
        self.assertEqual((s.auto, s.spares, s.spares_fraction, s.enabled), (True, None, 0.15, True))
        self.assertEqual(parse("[warm_pool]\nauto = yes\nspares = 6\n").spares, 6)

    def test_mistakes_are_named(self) -> None:
        for text, needle in [
            ("android = many", "android"), ("android = -1", "android"), ("android@ = 2", "IMAGE@ENVIRONMENT"),
            ("auto = maybe", "auto"), ("auto = true\nandroid = 2", "leave out"), ("spares = 150%", "spares"),
            ("max_concurrent = 0", "max_concurrent"), ("interval = 0", "interval"), (".b2gbase = x", "IMAGE.KEY"),
        ]:
            with self.assertRaises(ValueError) as e:
                parse("[warm_pool]\n" + text + "\n")
            self.assertIn(needle, str(e.exception), text)

    def test_config_file(self) -> None:
        """load_config reads the section, and a mistake is a ConfigError (a usage error at start)."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[warm_pool]\nandroid = 2\n")
        self.assertEqual(load_config(path).warm_pool.targets, (Target("android", "any", 2),))
        with open(path, "w") as f:
            f.write("[warm_pool]\nandroid = two\n")
        self.assertRaises(ConfigError, load_config, path)

    def test_state_names_are_the_device_machines(self) -> None:
        """The warm pool names device states itself (the broker does not import LifeGuard's
        machine): each must be a real one, or a pass would miss devices."""
        for name in warm.IMAGING_STATES + warm.INTERRUPTIBLE + warm.OUT_OF_SERVICE:
            self.assertIn(name, states.DEVICE_STATES)
        self.assertTrue(set(warm.INTERRUPTIBLE) <= set(warm.IMAGING_STATES))


class Shares(SynchronousTestCase):
    def test_every_server_computes_the_same_split(self) -> None:
        """Shares follow devices in service, add up to the target, and break ties by name."""
        counts = {"a": 10, "b": 10, "c": 20}
        self.assertEqual([share(4, counts, s) for s in "abc"], [1, 1, 2])
        self.assertEqual([share(3, counts, s) for s in "abc"], [1, 1, 1])  # remainders .75, .75, .5
        self.assertEqual([share(1, {"b": 5, "a": 5}, s) for s in "ab"], [1, 0], "a tie goes to the first name")
        self.assertEqual(sum(share(7, counts, s) for s in "abc"), 7)
        self.assertEqual(share(4, counts, "gone"), 0)
        self.assertEqual([share(50, {"a": 2, "b": 1}, s) for s in "ab"], [2, 1], "never more than the devices")

    def test_demand_split(self) -> None:
        self.assertEqual(largest_remainder(4, {"android": 3, "b2g": 1}), {"android": 3, "b2g": 1})
        self.assertEqual(largest_remainder(3, {"android": 5, "b2g": 5}), {"android": 2, "b2g": 1})
        self.assertEqual(largest_remainder(3, {}), {})


class Passes(BrokerTest):
    """Four ready pandas on HERE (0001/0003 prod, 0002/0004 staging), a LifeGuard for them with
    fake hardware, and a warm pool on HERE."""

    async def setUp(self) -> None:
        await super().setUp()
        self.hw = FakeHardware()
        self.lg = LifeGuard(self.db, self.clock, self.hw, HERE, 1.0, request_events=self.broker.request_event)
        self.calls: list[tuple[str, str, Any]] = []

    def pool(self, text: str, lifeguard: Any = None) -> WarmPool:
        lg = lifeguard or self.lg
        recorded = self.calls

        class Recording:
            def device_event(self, name: str, event: str, body: dict[str, Any]) -> Any:
                recorded.append((name, event, body))
                return lg.device_event(name, event, body)

            def state_change(self, name: str, old: str, new: str) -> Any:
                recorded.append((name, "state_change", (old, new)))
                return lg.state_change(name, old, new)

        p = WarmPool(self.db, self.clock, HERE, parse("[warm_pool]\n" + text), Recording(), 1.0)
        self.lg.runner.observers.append(p.observe)
        self.addCleanup(p.stop)
        return p

    async def table(self) -> dict[str, tuple[str, str | None, str | None, int]]:
        """name -> (state, image, next image, pristine)."""
        rows = await self.db.query(
            "SELECT d.name, d.state, i.name, n.name, d.pristine FROM devices d LEFT JOIN images i ON i.id = d.image_id"
            " LEFT JOIN images n ON n.id = d.next_image_id ORDER BY d.name")
        return {r[0]: (r[1], r[2], r[3], int(r[4])) for r in rows}

    def imaged(self) -> list[str]:
        return sorted(name for name, event, _ in self.calls if event == "please_image")

    async def busy(self, *names: str) -> None:
        for name in names:
            await self.db.query("UPDATE devices SET state = 'self_test_running' WHERE name = ?", (name,))

    async def device_log(self, name: str) -> list[str]:
        rows = await self.db.query(
            "SELECT l.message FROM device_logs l JOIN devices d ON d.id = l.device_id WHERE d.name = ? ORDER BY l.id",
            (name,))
        return [r[0] for r in rows]

    # --- imaging ahead of demand --------------------------------------------------------------

    async def test_images_its_share_ahead_of_demand(self) -> None:
        """Idle devices get please_image up to the target; once they are imaging they count,
        so the next pass starts nothing more."""
        p = self.pool("android = 2\n")
        await p.run_pass()
        self.assertEqual(len(self.imaged()), 2)
        for name in self.imaged():
            state, _, next_image, _ = (await self.table())[name]
            self.assertEqual((state, next_image), ("pxe_power_cycling", "android"))
            self.assertIn("warm pool: imaging with android ahead of demand (2 kept here for any environment)",
                          await self.device_log(name))
        self.assertEqual([c for c in self.calls if c[1] == "please_image"][0][2], {"image": "android", "boot_config": "{}"})
        await p.run_pass()
        self.assertEqual(len(self.imaged()), 2)
        self.assertEqual(p.last.progress if p.last else None, {"android@any": (2, 2)})

    async def test_bounded(self) -> None:
        """Never more than max_concurrent warm imagings at once on a server."""
        p = self.pool("android = 4\nmax_concurrent = 1\n")
        await p.run_pass()
        await p.run_pass()
        self.assertEqual(len(self.imaged()), 1)

    async def test_pristine_devices_count(self) -> None:
        """Idle pristine devices holding the image meet the target; only the rest is imaged, and
        never on a device kept warm."""
        for name in ("panda-0001", "panda-0002"):
            await self.set_device(name, image="android", boot_config="{}", pristine=1)
        p = self.pool("android = 3\n")
        await p.run_pass()
        self.assertEqual(len(self.imaged()), 1)
        self.assertNotIn(self.imaged()[0], ("panda-0001", "panda-0002"))

    async def test_a_used_device_holding_the_image_does_not_count(self) -> None:
        """A device that held the image for a request is not pristine: it is imaged again."""
        await self.set_device("panda-0001", image="android", boot_config="{}", pristine=0)
        await self.busy("panda-0002", "panda-0003", "panda-0004")
        await self.pool("android = 1\n").run_pass()
        self.assertEqual(self.imaged(), ["panda-0001"])

    async def test_environment_targets(self) -> None:
        """IMAGE@ENV keeps devices of that environment."""
        await self.pool("android@staging = 1\n").run_pass()
        self.assertIn(self.imaged()[0], ("panda-0002", "panda-0004"))
        self.assertEqual(len(self.imaged()), 1)

    async def test_boot_config_keys(self) -> None:
        """An image's boot_config keys come from IMAGE.KEY; without them the target is skipped
        and said why."""
        p = self.pool("b2g = 1\n")
        await p.run_pass()
        self.assertEqual(self.imaged(), [])
        self.assertEqual(p.last.problems if p.last else None, ["image b2g needs b2gbase: set b2g.b2gbase = ..."])
        p = self.pool("b2g = 1\nb2g.b2gbase = http://b/\n")
        await p.run_pass()
        self.assertEqual([c[2] for c in self.calls], [{"image": "b2g", "boot_config": '{"b2gbase": "http://b/"}'}])

    async def test_unknown_image(self) -> None:
        p = self.pool("nosuch = 1\n")
        await p.run_pass()
        self.assertEqual((self.imaged(), p.last.problems if p.last else None), ([], ["no image 'nosuch' to keep warm"]))

    # --- demand comes first -------------------------------------------------------------------

    async def test_never_takes_a_device_a_waiting_request_could_use(self) -> None:
        """A free device that a waiting request could use (the moment between a device freeing
        up and the queue's offer) is left to the queue; the others may be warmed."""
        await self.busy("panda-0001", "panda-0003")
        rid = (await self.create(environment="prod"))["id"]
        self.assertEqual((await self.state(rid), await self.claimed(rid)), ("finding_device", None))
        await self.db.query("UPDATE devices SET state = 'ready' WHERE name = 'panda-0001'")
        await self.pool("android = 4\n").run_pass()
        self.assertEqual(self.imaged(), ["panda-0002", "panda-0004"])

    async def test_share_between_servers(self) -> None:
        """Each server keeps its share of a pool-wide target on its own devices only; a dead
        server's share falls to the live ones."""
        await fixtures.load_fixture(self.db, OTHER, 4, "2026-11-26 12:00:00", prefix="other")
        await self.db.query("UPDATE devices SET state = 'ready', state_timeout = NULL")
        await self.pool("android = 2\n").run_pass()
        self.assertEqual(len(self.imaged()), 1)
        self.assertTrue(self.imaged()[0].startswith("panda-"))
        await self.db.query("UPDATE imaging_servers SET last_seen = '2026-11-26 10:00:00' WHERE fqdn = ?", (OTHER,))
        await self.db.query("UPDATE imaging_servers SET last_seen = ? WHERE fqdn = ?", (dbnow(self.clock), HERE))
        await self.pool("android = 2\n").run_pass()
        self.assertEqual(len(self.imaged()), 2)
        self.assertTrue(all(n.startswith("panda-") for n in self.imaged()))

    async def test_a_dead_server_images_nothing(self) -> None:
        """A server the others count dead (its heartbeats are not getting through) keeps no
        share: a pass on it warm-images none of its devices; the live servers take the target."""
        await fixtures.load_fixture(self.db, OTHER, 4, "2026-11-26 12:00:00", prefix="other")
        await self.db.query("UPDATE devices SET state = 'ready', state_timeout = NULL")
        await self.db.query("UPDATE imaging_servers SET last_seen = '2026-11-26 10:00:00' WHERE fqdn = ?", (HERE,))
        await self.db.query("UPDATE imaging_servers SET last_seen = ? WHERE fqdn = ?", (dbnow(self.clock), OTHER))
        p = self.pool("android = 2\n")
        await p.run_pass()
        self.assertEqual(self.imaged(), [])
        self.assertEqual(p.last.progress if p.last else None, {"android@any": (0, 0)})

    async def test_auto_follows_the_last_hours_requests(self) -> None:
        """auto = true splits the spares over what 'any' requests asked for in the last hour."""
        await self.db.query("UPDATE devices SET state = 'self_test_running'")
        old = (await self.create(image="b2g", boot_config='{"b2gbase": "http://b/"}'))["id"]
        await self.db.query("UPDATE requests SET created = '2026-11-26 10:00:00' WHERE id = ?", (old,))
        for _ in range(2):
            await self.create(image="b2g", boot_config='{"b2gbase": "http://c/"}')
        await self.create(image="android")
        await self.db.query("UPDATE requests SET state = 'closed'")
        await self.db.query("UPDATE devices SET state = 'ready'")
        await self.pool("auto = true\nspares = 3\nmax_concurrent = 4\n").run_pass()
        bodies = sorted((c[2]["image"], c[2]["boot_config"]) for c in self.calls)
        self.assertEqual(bodies, [("android", "{}"), ("b2g", '{"b2gbase": "http://c/"}'),
                                  ("b2g", '{"b2gbase": "http://c/"}')])

    # --- interruptible --------------------------------------------------------------------------

    async def warming_one(self) -> str:
        """panda-0001 warm-imaging android; every other device busy."""
        await self.busy("panda-0002", "panda-0003", "panda-0004")
        await self.pool("android = 1\n").run_pass()
        self.assertEqual(self.imaged(), ["panda-0001"])
        return "panda-0001"

    async def test_a_waiting_request_stops_a_warm_imaging_it_could_use(self) -> None:
        """A request no free device serves stops a warm imaging of another image while the
        card is untouched: the image record is forgotten, the device is ready again, and the
        queue hands it over (the request then images it)."""
        name = await self.warming_one()
        await self.set_device(name, image="android", boot_config="{}", pristine=1)  # what the card held before
        rid = (await self.create(image="b2g", boot_config='{"b2gbase": "http://b/"}'))["id"]
        self.assertEqual(await self.claimed(rid), None)
        p = self.pool("android = 1\n")
        await p.run_pass()
        self.assertIn((name, "state_change", ("pxe_power_cycling", "ready")), self.calls)
        self.assertEqual((await self.table())[name][:2], ("ready", None))
        self.assertEqual((await self.table())[name][3], 0)
        self.assertIn(f"warm imaging stopped in pxe_power_cycling: request {rid} is waiting and could use this device;"
                      " the image on its card is unknown now", await self.device_log(name))
        await self.broker.matcher.run_pass()
        await self.broker.idle()
        self.assertEqual(await self.claimed(rid), name)
        await self.tick(0)
        self.assertEqual(self.http.events()[-1][1], {"image": "b2g", "boot_config": '{"b2gbase": "http://b/"}'})

    async def test_a_request_for_the_warm_image_waits_for_it(self) -> None:
        """A waiting request for the image being warmed stops nothing: it takes the device when
        it is ready, without an imaging of its own."""
        await self.warming_one()
        await self.create(image="android")
        await self.pool("android = 1\n").run_pass()
        self.assertEqual([c for c in self.calls if c[1] == "state_change"], [])

    async def test_not_once_the_card_is_written(self) -> None:
        """Past the download the imaging finishes: it is bounded, and the queue's estimate counts
        the device as busy (soon free)."""
        name = await self.warming_one()
        await self.db.query("UPDATE devices SET state = 'android_extracting' WHERE name = ?", (name,))
        await self.create(image="b2g", boot_config='{"b2gbase": "http://b/"}')
        await self.pool("android = 1\n").run_pass()
        self.assertEqual([c for c in self.calls if c[1] == "state_change"], [])
        snap = await self.db.runInteraction(queue.snapshot, None, True)
        self.assertIn(name, [b.name for b in snap.busy])

    async def test_a_claim_in_the_gap_gets_its_own_image(self) -> None:
        """A request that claims the device between the pass's check and LifeGuard taking the
        warm please_image gets an imaging of its own image instead."""
        await self.busy("panda-0002", "panda-0003", "panda-0004")
        test = self

        class Racing:
            async def _event(self, name: str, event: str, body: dict[str, Any]) -> None:
                test.rid = (await test.create(image="b2g", boot_config='{"b2gbase": "http://b/"}'))["id"]
                await test.lg.device_event(name, event, body)

            def device_event(self, name: str, event: str, body: dict[str, Any]) -> Any:
                return defer.Deferred.fromCoroutine(self._event(name, event, body))

            def state_change(self, name: str, old: str, new: str) -> Any:
                return test.lg.state_change(name, old, new)

        await self.pool("android = 1\n", Racing()).run_pass()
        self.assertEqual(await self.claimed(self.rid), "panda-0001")
        self.assertEqual((await self.table())["panda-0001"][2], "b2g")
        next_config = (await self.db.query("SELECT next_boot_config FROM devices WHERE name = 'panda-0001'"))[0][0]
        self.assertEqual(next_config, '{"b2gbase": "http://b/"}')
        self.assertIn(f"request {self.rid} claimed this device as its warm imaging started: installing the request's"
                      " image", await self.device_log("panda-0001"))

    async def test_an_ordinary_imaging_is_left_alone(self) -> None:
        """The hand-over touches only the warm pool's own please_image."""
        self.pool("android = 1\n")
        rid = await self.to_pending(image="b2g", boot_config='{"b2gbase": "http://b/"}')
        name = await self.claimed(rid)
        assert name is not None
        await self.lg.device_event(name, "please_image", {"image": "b2g", "boot_config": '{"b2gbase": "http://b/"}'})
        self.assertEqual((await self.table())[name][2], "b2g")
        self.assertFalse(any("warm" in m for m in await self.device_log(name)))

    # --- the service --------------------------------------------------------------------------

    async def test_service_runs_passes_on_the_clock(self) -> None:
        """A pass at start, one every interval (scaled), and a wake-up during a pass runs one more."""
        p = self.pool("android = 1\ninterval = 30\n")
        service = WarmPoolService(p)
        service.startService()
        await p.idle()
        self.assertEqual(p.passes, 1)
        self.clock.advance(30)
        p.wake()  # during the timer's pass: one more after it
        await p.idle()
        self.assertEqual(p.passes, 3)
        await service.stopService()
        p.wake()
        self.assertEqual(p.passes, 3, "no pass once stopped")


PassesSQLite, PassesMariaDB = on_both_backends(Passes)


class Wiring(SynchronousTestCase):
    def build(self, config: str) -> Any:
        from mozpool.tap import Options, makeService

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"[database]\nurl = sqlite:///{self.mktemp()}.sqlite\n{config}")
        o = Options()
        o.parseOptions(["--config", path, "--port", "0", "--tftp-port", "0"])
        top = makeService(o)
        self.addCleanup(top.db.close)
        return top

    def test_service_only_when_configured(self) -> None:
        """The tap adds the warm pool only when [warm_pool] asks for devices."""
        self.assertNotIn("warm_pool", {s.name for s in self.build("")})
        top = self.build("[warm_pool]\nandroid = 2\n")
        service = top.getServiceNamed("warm_pool")
        self.assertEqual(service.pool.settings.targets, (Target("android", "any", 2),))
