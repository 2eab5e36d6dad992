"""Every row of the request table (state-machines.md 2.3), device selection (2.4), contacting
LifeGuard and its results (2.5), R1, on SQLite and MariaDB, driven by Clock and the driver's tick."""

from __future__ import annotations

from twisted.internet import defer, error
from twisted.internet.address import HostnameAddress

from mozpool.broker import machine
from mozpool.broker.interfaces import RequestSpec
from tests.broker.support import HERE, BrokerTest
from tests.support.dbtest import on_both_backends

CLOSABLE = ("new", "finding_device", "contact_lifeguard", "contacting_lifeguard", "pending", "ready", "expired")


class Table(BrokerTest):
    # --- new -------------------------------------------------------------------------------

    async def test_create_finds_and_claims_a_device_at_once(self) -> None:
        created = await self.create()
        rid = created["id"]
        self.assertEqual(await self.state(rid), "contact_lifeguard")
        self.assertEqual(created["assigned_device"], await self.claimed(rid))
        self.assertTrue(created["assigned_device"].startswith("panda-"))
        self.assertEqual(created["url"], f"http://{HERE}/api/request/{rid}/")
        self.assertEqual(created["expires"], "2026-11-26T13:00:00")
        self.assertEqual(await self.counters(rid), {"finding_device": 1})
        msgs = await self.messages(rid)
        self.assertIn(f"Assigning device {created['assigned_device']}", msgs)
        self.assertIn("entering state finding_device", msgs)
        self.assertEqual(self.http.calls, [], "the slow HTTP work waits for contact_lifeguard's timeout")

    async def test_a_lost_claim_race_tries_the_next_candidate_at_once(self) -> None:
        """6.4: an integrity error on the claim means someone else got the device first."""
        from mozpool.broker import selection
        from mozpool.db.errors import Conflict

        real_claim = selection.claim
        lost: list[int] = []

        def racing_claim(c, request_id: int, device_id: int, now: str, stamp: bool = True) -> None:
            if not lost:
                lost.append(device_id)
                raise Conflict("someone else got it first")
            real_claim(c, request_id, device_id, now, stamp)

        def taken(c, pairs) -> None:  # a claim in bulk loses too: its claims are made one by one
            raise Conflict("someone else got one first")

        self.patch(selection, "claim", racing_claim)
        self.patch(selection, "insert_claims", taken)
        created = await self.create()
        rid = created["id"]
        self.assertEqual(await self.state(rid), "contact_lifeguard", "no wait for the next attempt")
        self.assertEqual(await self.counters(rid), {"finding_device": 1})
        claimed = await self.claimed(rid)
        lost_name = (await self.db.query("SELECT name FROM devices WHERE id = ?", (lost[0],)))[0][0]
        self.assertNotEqual(claimed, lost_name)
        self.assertIn(f"device {lost_name} was claimed by another request; trying another", await self.messages(rid))

    async def test_new_has_no_timer_and_accepts_find_device(self) -> None:
        await self.db.query(
            "INSERT INTO requests (imaging_server_id, requested_device, assignee, expires, image_id, boot_config,"
            " state, state_counters, state_timeout, environment) SELECT s.id, 'any', 'x', '2026-11-26 13:00:00',"
            " i.id, '{}', 'new', '{}', NULL, 'any' FROM imaging_servers s, images i WHERE s.fqdn = ? AND i.name = 'android'",
            (HERE,))
        rid = int((await self.db.query("SELECT MAX(id) FROM requests"))[0][0])
        await self.tick(3600 - 1)
        self.assertEqual(await self.state(rid), "new")
        await self.event(rid, "find_device")
        self.assertEqual(await self.state(rid), "contact_lifeguard")

    # --- closable --------------------------------------------------------------------------

    async def put_in(self, state: str) -> int:
        rid = await self.to_pending()
        await self.db.query("UPDATE requests SET state = ?, state_timeout = NULL WHERE id = ?", (state, rid))
        if state in machine.CLAIM_CLEARING:
            await self.db.query("DELETE FROM device_requests WHERE request_id = ?", (rid,))
        return rid

    async def test_close_and_expire_in_every_closable_state(self) -> None:
        for event, message in (("close", "Request closed."), ("expire", "Request expired.")):
            for state in CLOSABLE:
                rid = await self.put_in(state)
                await self.event(rid, event)
                self.assertEqual(await self.state(rid), "closed", (event, state))
                self.assertIsNone(await self.claimed(rid), "closed clears the claim")
                self.assertIn(message, await self.messages(rid))

    async def test_final_states_ignore_everything(self) -> None:
        for state in machine.FAILED_STATES + ("closed",):
            rid = await self.put_in(state)
            for event in machine.EVENTS:
                await self.event(rid, event, {"imaging_result": "complete"})
                self.assertEqual(await self.state(rid), state)
            msgs = await self.messages(rid)
            self.assertIn(f"ignored event close in state {state}", msgs)
            self.assertIn(f"ignored event lifeguard_finished in state {state}", msgs)

    async def test_final_states_clear_the_claim_on_entry(self) -> None:
        for state in machine.CLAIM_CLEARING:
            rid = await self.to_pending()
            runner = self.broker.runner
            self.assertTrue(await runner.state_change(str(rid), "pending", state))
            self.assertIsNone(await self.claimed(rid), state)

    async def test_unknown_events_are_ignored(self) -> None:
        rid = await self.to_pending()
        await self.event(rid, "please_image")
        await self.event(rid, "state")  # an Automat input, but not an event
        self.assertEqual(await self.state(rid), "pending")
        self.assertIn("ignored event please_image in state pending", await self.messages(rid))

    async def test_unknown_stored_state_reads_as_expired_and_closes(self) -> None:
        rid = await self.put_in("bogus")
        self.assertEqual(await self.broker.runner.current_state(str(rid)), "expired")
        await self.event(rid, "lifeguard_contacted")
        self.assertEqual(await self.state(rid), "bogus")
        await self.event(rid, "close")
        self.assertEqual(await self.state(rid), "closed")

    # --- finding_device (2.4) --------------------------------------------------------------

    async def test_any_waits_in_the_queue_until_its_queue_timeout(self) -> None:
        """Issue 14: no give-up after 60 attempts; the request waits its queue_timeout (600 s by
        default, not scaled), then fails with failed_device_busy."""
        await self.db.query("UPDATE devices SET state = 'self_test_running'")
        rid = (await self.create())["id"]
        self.assertIn("no suitable device is free; waiting in the queue", await self.messages(rid))
        for n in range(2, 11):
            await self.tick(60)  # the safety poll: the queue itself is woken by changes
            self.assertEqual((await self.row(rid))[:2], ("finding_device", {"finding_device": n}))
        await self.tick(59)
        self.assertEqual(await self.state(rid), "finding_device")
        await self.tick(1)  # 600 s after creation
        self.assertEqual(await self.row(rid), ("failed_device_busy", {"finding_device": 10}, None))
        self.assertIn("no device became free within the request's queue_timeout", await self.messages(rid))

    async def test_queue_timeout_is_the_requests_own(self) -> None:
        await self.db.query("UPDATE devices SET state = 'self_test_running'")
        created = await self.broker.create_request("any", RequestSpec("t", 3600, "android", queue_timeout=25))
        rid = created["id"]
        await self.tick(20)
        self.assertEqual(await self.state(rid), "finding_device")
        await self.tick(10)
        self.assertEqual(await self.state(rid), "failed_device_busy")

    async def test_queue_timeout_0_fails_at_once_without_a_device(self) -> None:
        await self.db.query("UPDATE devices SET state = 'self_test_running'")
        created = await self.broker.create_request("any", RequestSpec("t", 3600, "android", queue_timeout=0))
        self.assertEqual(await self.state(created["id"]), "failed_device_busy")

    async def test_an_impossible_request_fails_at_once(self) -> None:
        nowhere = await self.create(environment="qa")
        self.assertEqual(await self.state(nowhere["id"]), "failed_device_not_found")
        self.assertIn("no device is in environment qa", await self.messages(nowhere["id"]))
        # An image with PXE configs only for a hardware type no device has.
        await self.db.query("INSERT INTO hardware_types (type, model) VALUES ('phone', 'nexus')")
        await self.db.query(
            "INSERT INTO image_pxe_configs (image_id, hardware_type_id, pxe_config_id)"
            " SELECT i.id, h.id, NULL FROM images i, hardware_types h WHERE i.name = 'reusable' AND h.model = 'nexus'")
        rid = (await self.create(image="reusable", boot_config='{"b2gbase": "x"}'))["id"]
        self.assertEqual(await self.state(rid), "failed_device_not_found")
        self.assertIn("no device in the pool can take image reusable: no PXE config for their hardware",
                      await self.messages(rid))

    async def test_any_finds_a_device_that_becomes_ready(self) -> None:
        await self.db.query("UPDATE devices SET state = 'self_test_running'")
        rid = (await self.create())["id"]
        await self.tick(10)
        await self.set_device("panda-0003", state="ready")
        await self.tick(10)  # the driver's tick wakes the queue (here no change feed does)
        self.assertEqual(await self.state(rid), "contact_lifeguard")
        self.assertEqual(await self.claimed(rid), "panda-0003")
        self.assertEqual(await self.counters(rid), {"finding_device": 1}, "served by the queue, not a poll")

    async def test_named_waits_for_its_device(self) -> None:
        await self.set_device("panda-0002", state="sut_verifying")
        created = await self.create("panda-0002")
        rid = created["id"]
        self.assertEqual(created["assigned_device"], "")
        await self.tick(10)
        self.assertEqual(await self.state(rid), "finding_device")
        await self.set_device("panda-0002", state="ready")
        await self.tick(10)
        self.assertEqual((await self.state(rid), await self.claimed(rid)), ("contact_lifeguard", "panda-0002"))

    async def test_named_device_in_a_failed_state(self) -> None:
        await self.set_device("panda-0002", state="failed_pxe_booting")
        created = await self.create("panda-0002")
        self.assertEqual(await self.state(created["id"]), "failed_bad_device")
        self.assertIn("device panda-0002 is in state failed_pxe_booting", await self.messages(created["id"]))

    async def test_named_picks_that_device(self) -> None:
        created = await self.create("panda-0004")
        self.assertEqual(created["assigned_device"], "panda-0004")

    async def test_environment_matching(self) -> None:
        chosen = set()
        for _ in range(2):
            created = await self.create(environment="staging")
            chosen.add(created["assigned_device"])
        self.assertEqual(chosen, {"panda-0002", "panda-0004"})
        # staging is used up: the next staging request waits, an 'any' request still gets prod
        # (from the queue: the staging request waits ahead of it, but cannot use prod devices).
        waiting = await self.create(environment="staging")
        self.assertEqual((await self.state(waiting["id"]), waiting["assigned_device"]), ("finding_device", ""))
        anywhere = await self.create(environment="any")
        got = await self.claimed(anywhere["id"])
        self.assertIn(got, ("panda-0001", "panda-0003"))
        self.assertEqual(await self.state(waiting["id"]), "finding_device")
        # A named device outside the environment is not available.
        free_prod = ({"panda-0001", "panda-0003"} - {got}).pop()
        named = await self.create(free_prod, environment="staging")
        self.assertIsNone(await self.claimed(named["id"]))

    async def test_held_devices_are_not_offered(self) -> None:
        names = {(await self.create())["assigned_device"] for _ in range(4)}
        self.assertEqual(len(names), 4)
        fifth = await self.create()
        self.assertEqual((await self.state(fifth["id"]), fifth["assigned_device"]), ("finding_device", ""))

    async def test_selection_is_uniform_and_seedable(self) -> None:
        picks = []
        for seed in range(12):
            broker = self.makeBroker(seed)
            created = await broker.create_request("any", RequestSpec("t", 60, "android"))
            picks.append(created["assigned_device"])
            await broker.return_request(created["id"])
        self.assertGreater(len(set(picks)), 1, "random, not always the first")
        again = []
        for seed in range(12):
            broker = self.makeBroker(seed)
            created = await broker.create_request("any", RequestSpec("t", 60, "android"))
            again.append(created["assigned_device"])
            await broker.return_request(created["id"])
        self.assertEqual(picks, again)

    async def test_reuse_prefers_a_device_with_the_same_image_and_boot_config(self) -> None:
        await self.set_device("panda-0003", image="reusable", boot_config='{ "b2gbase" :"http://b/"}')
        await self.set_device("panda-0004", image="reusable", boot_config='{"b2gbase": "http://other/"}')
        for seed in range(6):
            broker = self.makeBroker(seed)
            created = await broker.create_request("any", RequestSpec("t", 60, "reusable", "any", '{"b2gbase": "http://b/"}'))
            self.assertEqual(created["assigned_device"], "panda-0003", seed)
            await broker.return_request(created["id"])

    async def test_reuse_power_cycles_only(self) -> None:
        await self.set_device("panda-0003", image="reusable", boot_config='{"b2gbase":"http://b/"}')
        rid = await self.to_pending(image="reusable", boot_config='{"b2gbase": "http://b/"}')
        self.assertEqual(await self.claimed(rid), "panda-0003")
        self.assertEqual(self.http.events(),
                         [(f"http://{HERE}/api/device/panda-0003/event/please_power_cycle/", {})])

    async def test_a_pristine_device_is_handed_over_as_it_is(self) -> None:
        """Issue 14's warm pool: imaged ahead of demand and never handed out, the device holding
        the image asked for goes to the request without a please_* event, even for an image that
        is not reusable; it is no longer pristine once handed out."""
        await self.set_device("panda-0002", image="android", boot_config="{}", pristine=1)
        rid = (await self.create())["id"]
        self.assertEqual(await self.claimed(rid), "panda-0002", "the pristine device is preferred")
        await self.tick(0)
        self.assertEqual(await self.state(rid), "ready")
        self.assertEqual(self.http.calls, [])
        self.assertIn("device panda-0002 is pristine with image android: handed over without re-imaging",
                      await self.messages(rid))
        self.assertEqual((await self.db.query("SELECT pristine FROM devices WHERE name = 'panda-0002'"))[0][0], 0)
        self.assertEqual(await self.db.query("SELECT samples FROM imaging_stats"), [],
                         "a hand-over is no imaging: the ETA's imaging times leave it out")
        # A pristine device with another boot_config is imaged as usual.
        await self.set_device("panda-0003", image="reusable", boot_config='{"b2gbase": "x"}', pristine=1)
        other = await self.to_pending(device="panda-0003", image="reusable", boot_config='{"b2gbase": "y"}')
        self.assertEqual(self.http.events()[-1][0].rsplit("/", 2)[-2], "please_image")
        self.assertEqual(await self.state(other), "pending")

    async def test_no_reuse_when_boot_config_differs_or_image_not_reusable(self) -> None:
        await self.set_device("panda-0001", image="reusable", boot_config='{"b2gbase": "http://x/"}')
        rid = await self.to_pending(device="panda-0001", image="reusable", boot_config='{"b2gbase": "http://b/"}')
        self.assertEqual(self.http.events()[-1][0].rsplit("/", 2)[-2], "please_image")
        self.assertEqual(self.http.events()[-1][1], {"image": "reusable", "boot_config": '{"b2gbase": "http://b/"}'})
        await self.event(rid, "close")
        await self.set_device("panda-0002", image="android", boot_config="{}")
        await self.to_pending(device="panda-0002", image="android")
        self.assertEqual(self.http.events()[-1],
                         (f"http://{HERE}/api/device/panda-0002/event/please_image/",
                          {"image": "android", "boot_config": "{}"}))

    async def test_reuse_falls_back_to_any_device(self) -> None:
        created = await self.create(image="reusable", boot_config='{"b2gbase": "http://b/"}')
        self.assertNotEqual(created["assigned_device"], "")

    async def test_a_new_attempt_drops_the_old_claim(self) -> None:
        rid = await self.to_pending()
        first = await self.claimed(rid)
        await self.event(rid, "lifeguard_finished", {"imaging_result": "failed-bad-device"})
        self.assertEqual(await self.state(rid), "contact_lifeguard")
        self.assertEqual(len([c for c in await self.claims() if c[0] == rid]), 1)
        self.assertIsNotNone(first)

    # --- contact_lifeguard / contacting_lifeguard (2.5) ------------------------------------

    async def test_contact_lifeguard_posts_please_image_over_http(self) -> None:
        created = await self.create(image="b2g", boot_config='{"b2gbase": "http://builds/"}')
        rid, device = created["id"], created["assigned_device"]
        self.assertEqual(await self.row(rid), ("contact_lifeguard", {"finding_device": 1}, "2026-11-26 12:00:00"))
        self.http.default = defer.Deferred()  # hold the answer
        await self.driver.tick()
        self.assertEqual(await self.state(rid), "contacting_lifeguard")
        self.assertEqual(len(self.http.calls), 1)
        call = self.http.calls[0]
        self.assertEqual(call["url"], f"http://{HERE}/api/device/{device}/event/please_image/")
        self.assertEqual(call["body"], {"image": "b2g", "boot_config": '{"b2gbase": "http://builds/"}'})
        self.assertEqual(call["headers"], {b"Content-Type": [b"application/json"]})
        self.assertFalse(call["allow_redirects"], "redirects are followed by hand, keeping method and body")
        from tests.broker.support import FakeResponse

        self.http.default.callback(FakeResponse(200))
        await self.broker.idle()
        self.assertEqual(await self.state(rid), "pending")

    async def test_device_of_another_server_is_contacted_there(self) -> None:
        await self.db.query("INSERT INTO imaging_servers (fqdn) VALUES ('b.example.com')")
        await self.db.query(
            "UPDATE devices SET imaging_server_id = (SELECT id FROM imaging_servers WHERE fqdn = 'b.example.com')"
            " WHERE name = 'panda-0002'")
        await self.to_pending(device="panda-0002")
        self.assertEqual(self.http.calls[0]["url"], "http://b.example.com/api/device/panda-0002/event/please_image/")

    async def test_device_no_longer_ready(self) -> None:
        created = await self.create()
        rid, device = created["id"], created["assigned_device"]
        await self.db.query("UPDATE devices SET state = 'start_self_test'")
        await self.tick(0)
        self.assertEqual(await self.row(rid), ("finding_device", {"finding_device": 2}, "2026-11-26 12:01:00"))
        self.assertIsNone(await self.claimed(rid))
        self.assertEqual(self.http.calls, [])
        self.assertIn(f"device {device} is in state start_self_test, not ready; looking for another device",
                      await self.messages(rid))

    async def test_named_device_no_longer_ready_waits_for_it(self) -> None:
        rid = (await self.create("panda-0001"))["id"]
        await self.set_device("panda-0001", state="start_self_test")
        await self.tick(0)
        self.assertEqual(await self.row(rid), ("finding_device", {"finding_device": 2}, "2026-11-26 12:01:00"))

    async def test_a_lost_answer_is_not_a_lost_device(self) -> None:
        """R2 resolved: a re-entry of contacting_lifeguard that finds the device busy (our first
        POST arrived; its answer was lost) takes it as contacted instead of dropping it."""
        self.http.answers = [defer.Deferred()]
        rid = (await self.create())["id"]
        device = await self.claimed(rid)
        self.clock.advance(0)
        await self.driver.tick()  # not idle(): the POST hangs until its bound
        self.assertEqual(await self.state(rid), "contacting_lifeguard")
        await self.set_device(device, state="pxe_power_cycling")
        await self.tick(20)  # the POST's bound
        await self.tick(10)  # the state's timeout
        self.assertEqual((await self.state(rid), await self.claimed(rid)), ("pending", device))
        self.assertIn(f"device {device} is in state pxe_power_cycling: LifeGuard took our event",
                      await self.messages(rid))

    async def assertRetriedThenFailed(self, answer: object, expect_in_log: str) -> None:
        self.http.default = answer
        rid = (await self.create())["id"]
        await self.tick(0)
        self.assertEqual(await self.state(rid), "contacting_lifeguard")
        self.assertIn(expect_in_log, "\n".join(await self.messages(rid)))
        for n in range(1, 5):
            await self.tick(30)
            self.assertEqual((await self.row(rid))[:2],
                             ("contacting_lifeguard", {"finding_device": 1, "contacting_lifeguard": n}))
        self.assertEqual(len(self.http.calls), 5, "a POST for each visit")
        await self.tick(30)
        self.assertEqual(await self.row(rid), ("failed_device_not_found", {"finding_device": 1}, None))
        self.assertIsNone(await self.claimed(rid))

    async def test_contacting_non_200_retries_then_fails(self) -> None:
        await self.assertRetriedThenFailed(500, "answered 500; will retry")

    async def test_contacting_transport_error_counts_the_same(self) -> None:
        await self.assertRetriedThenFailed(error.ConnectionRefusedError("nope"), "Connection was refused")

    async def test_contacting_is_bounded(self) -> None:
        await self.assertBounded(defer.Deferred())

    async def test_a_connection_attempt_cut_off_is_a_timeout_too(self) -> None:
        """Cancelling a connection attempt fails it with ConnectingCancelledError, not
        CancelledError: it is reported as the timeout it is all the same."""
        address = HostnameAddress(b"lifeguard.example.com", 80)
        await self.assertBounded(defer.Deferred(lambda d: d.errback(error.ConnectingCancelledError(address))))

    async def assertBounded(self, hung: "defer.Deferred[object]") -> None:
        self.http.answers = [hung]
        rid = (await self.create())["id"]
        self.clock.advance(0)
        await self.driver.tick()
        self.assertEqual(await self.state(rid), "contacting_lifeguard")
        self.assertEqual(len(self.broker._contacts), 1)
        self.clock.advance(19.9)
        self.assertEqual(len(self.broker._contacts), 1)
        self.clock.advance(0.2)
        await self.broker.idle()
        self.assertEqual(self.broker._contacts, set())
        self.assertTrue(hung.called, "the hung call was cancelled")
        self.assertIn("LifeGuard did not answer within 20 s", "\n".join(await self.messages(rid)), "a timeout is logged")
        await self.tick(10)  # the state's own timeout then retries
        self.assertEqual(len(self.http.calls), 2)
        self.assertEqual(await self.state(rid), "pending")

    async def test_bound_follows_the_real_work_not_the_time_scale(self) -> None:
        """Issue 14: at time scale 0.01 the POST used to be cut off after 0.2 s, so a loaded
        LifeGuard made requests drop devices that were imaging for them."""
        self.broker.runner.time_scale = 0.01
        self.assertEqual(self.broker.contact_bound(), 20.0)
        self.assertEqual(self.broker.runner.delay("contacting_lifeguard"), 21.0)
        self.assertAlmostEqual(self.broker.runner.delay("pending") or 0, 0.6)

    async def test_one_redirect_is_followed_with_method_and_body(self) -> None:
        self.http.answers = [(302, "http://c.example.com/api/device/panda-0001/event/please_image/"), 200]
        rid = await self.to_pending(device="panda-0001")
        self.assertEqual(len(self.http.calls), 2)
        first, second = self.http.calls
        self.assertEqual(second["url"], "http://c.example.com/api/device/panda-0001/event/please_image/")
        self.assertEqual(second["body"], first["body"])
        self.assertEqual(await self.state(rid), "pending")

    async def test_a_second_redirect_is_not_followed(self) -> None:
        self.http.answers = [(302, "http://c.example.com/x/"), (302, "http://d.example.com/y/")]
        rid = (await self.create())["id"]
        await self.tick(0)
        self.assertEqual(len(self.http.calls), 2)
        self.assertEqual(await self.state(rid), "contacting_lifeguard")
        self.assertIn("answered 302", "\n".join(await self.messages(rid)))

    async def test_late_contacted_after_close_is_ignored(self) -> None:
        answer: defer.Deferred[object] = defer.Deferred()
        self.http.default = answer
        rid = (await self.create())["id"]
        await self.driver.tick()
        await self.broker.request_event(rid, "close", {})
        from tests.broker.support import FakeResponse

        answer.callback(FakeResponse(200))
        await self.broker.idle()
        self.assertEqual(await self.state(rid), "closed")
        self.assertIn("ignored event lifeguard_contacted in state closed", await self.messages(rid))

    # --- pending and results (2.5) ---------------------------------------------------------

    async def test_complete_makes_it_ready_and_keeps_the_claim(self) -> None:
        rid = await self.to_pending()
        device = await self.claimed(rid)
        self.clock.advance(90)
        await self.event(rid, "lifeguard_finished", {"imaging_result": "complete"})
        self.assertEqual(await self.row(rid), ("ready", {"finding_device": 1}, None))
        self.assertEqual(await self.claimed(rid), device)
        stats = await self.db.query("SELECT samples, mean_seconds FROM imaging_stats")
        self.assertEqual([(int(n), float(t)) for n, t in stats], [(1, 90.0)], "claim to ready, for the ETA")
        await self.tick(3000)
        self.assertEqual(await self.state(rid), "ready", "ready has no timer")

    async def test_finished_without_result_reads_the_claim(self) -> None:
        rid = await self.to_pending()
        await self.event(rid, "lifeguard_finished")
        self.assertEqual(await self.state(rid), "pending", "no result yet: nothing happens")
        await self.set_result(rid, "complete")
        await self.event(rid, "lifeguard_finished")
        self.assertEqual(await self.state(rid), "ready")

    async def test_pending_timeout_polls_the_stored_result(self) -> None:
        rid = await self.to_pending()
        await self.set_result(rid, "complete")
        await self.tick(59)
        self.assertEqual(await self.state(rid), "pending")
        await self.tick(1)
        self.assertEqual(await self.state(rid), "ready")
        self.assertNotIn("pending", await self.counters(rid))

    async def test_pending_any_gives_up_after_20_timeouts_and_R1(self) -> None:
        rid = await self.to_pending()
        for n in range(1, 20):
            await self.tick(60)
            self.assertEqual(await self.state(rid), "pending")
            self.assertEqual((await self.counters(rid))["pending"], n)
        await self.tick(60)
        self.assertEqual(await self.state(rid), "contact_lifeguard")
        self.assertEqual(await self.counters(rid), {"finding_device": 2}, "R1: pending is cleared")
        await self.tick(0)
        await self.tick(60)
        self.assertEqual((await self.row(rid))[:2], ("pending", {"finding_device": 2, "pending": 1}),
                         "R1: a later visit to pending gets its full budget")

    async def test_pending_named_waits_for_ever(self) -> None:
        rid = await self.to_pending(device="panda-0001")
        for _ in range(25):
            await self.tick(60)
        self.assertEqual(await self.row(rid), ("pending", {"finding_device": 1}, "2026-11-26 12:26:00"))

    async def test_bad_device_any_looks_again(self) -> None:
        rid = await self.to_pending()
        await self.tick(60)
        await self.event(rid, "lifeguard_finished", {"imaging_result": "failed-bad-device"})
        self.assertEqual(await self.state(rid), "contact_lifeguard")
        self.assertEqual(await self.counters(rid), {"finding_device": 2})

    async def test_bad_device_named_fails(self) -> None:
        rid = await self.to_pending(device="panda-0001")
        await self.event(rid, "lifeguard_finished", {"imaging_result": "failed-bad-device"})
        self.assertEqual(await self.state(rid), "failed_bad_device")
        self.assertIsNone(await self.claimed(rid))

    async def test_bad_image_gets_two_installs(self) -> None:
        rid = await self.to_pending()
        await self.event(rid, "lifeguard_finished", {"imaging_result": "failed-bad-image"})
        self.assertEqual(await self.state(rid), "contact_lifeguard")
        self.assertEqual(await self.counters(rid), {"finding_device": 2, "bad-images": 1})
        await self.tick(0)
        self.assertEqual(await self.state(rid), "pending")
        await self.set_result(rid, "failed-bad-image")
        await self.tick(60)  # found by the pending poll this time
        self.assertEqual(await self.state(rid), "failed_bad_image")
        self.assertEqual(await self.counters(rid), {"finding_device": 2, "bad-images": 2})
        self.assertIsNone(await self.claimed(rid))

    async def test_bad_image_named_also_gets_two_installs(self) -> None:
        rid = await self.to_pending(device="panda-0001")
        await self.event(rid, "lifeguard_finished", {"imaging_result": "failed-bad-image"})
        self.assertEqual(await self.claimed(rid), "panda-0001")
        self.assertEqual(await self.state(rid), "contact_lifeguard")

    async def test_unexpected_result_looks_again(self) -> None:
        rid = await self.to_pending(device="panda-0001")
        await self.event(rid, "lifeguard_finished", {"imaging_result": "sideways"})
        self.assertEqual(await self.state(rid), "contact_lifeguard")
        self.assertIn("unexpected imaging result 'sideways'; looking for another device", await self.messages(rid))

    async def test_lifeguard_finished_outside_pending_is_ignored(self) -> None:
        rid = (await self.create())["id"]
        await self.event(rid, "lifeguard_finished", {"imaging_result": "complete"})
        self.assertEqual(await self.state(rid), "contact_lifeguard")

    async def test_timeout_in_a_state_without_a_rule(self) -> None:
        rid = await self.put_in("ready")
        await self.db.query("UPDATE requests SET state_timeout = '2026-11-26 11:00:00' WHERE id = ?", (rid,))
        await self.tick(0)
        self.assertEqual(await self.row(rid), ("ready", {"finding_device": 1}, None))
        self.assertIn("retrying the entry of state ready", await self.messages(rid))


TableSQLite, TableMariaDB = on_both_backends(Table)
