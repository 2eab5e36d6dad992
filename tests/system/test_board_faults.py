"""Fault isolation by blast radius over real wires (issue 15): a daemon with 64 simulated pandas
on two simulated ProXR boards at time scale 0.01, and whole-board faults from the command line
(``--fail-board BOARD:MODE@FROM-UNTIL``).

- A hung board: its devices end ``board_suspect`` (none failed, none held) within the configured
  window, requests keep being served by the other board, and when the board answers again every
  device comes back with no human action.
- One device failing alone (its relay stuck) is still quarantined as before.
- An image that fails on every device trips the server's cap instead of failing the lab.

The figures for the notes (time from the hang to the board being suspect, devices quarantined,
requests failed) are printed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tests.system.daemon import Daemon

HEALTH = "[health]\nboard_failures = 3\nboard_window = 600\nprobe_interval = 30\nprobe_max_interval = 120\n"


def board_devices(n: int) -> list[str]:
    return [f"panda-{i:04d}" for i in range(32 * (n - 1) + 1, 32 * n + 1)]


async def serve(d: Daemon, count: int, timeout: float = 60) -> tuple[list[str], list[str]]:
    """``count`` sequential `any` requests, each returned once it ends: (devices served, failures)."""
    served, failed = [], []
    for _ in range(count):
        code, body = await d.request("any", duration=600)
        assert code == 200, body
        rid = body["request"]["id"]
        state = await d.wait_request(rid, timeout=timeout)
        if state == "ready":
            served.append((await d.get(f"/api/request/{rid}/details/"))["assigned_device"])
        else:
            failed.append(state)
        await d.call("POST", f"/api/request/{rid}/return/")
    return served, failed


async def seen_in_log(d: Daemon, text: str, timeout: float) -> float:
    """When (this process's clock) ``text`` first shows in the daemon's log, polled every 20 ms."""
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        if text in d.log_text():
            return reactor.seconds()
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{text!r} not logged within {timeout} s\n" + d.log_text()[-3000:])


class BoardFaults(TestCase):
    timeout = 900

    async def test_a_hung_board_is_isolated_and_comes_back_by_itself(self) -> None:
        # Board 1 hangs 40 s (nominal 4000 s) after start, for 60 s.
        d = Daemon(self, fakes=64, config=HEALTH, extra_args=("--fail-board", "1:hang@4000-10000"))
        await d.start()
        await d.wait_ready(timeout=120)
        boards = (await d.get("/api/health/"))["boards"]
        self.assertEqual([b["health"] for b in boards], ["ok", "ok"])
        name = boards[0]["name"]
        hung_at = await seen_in_log(d, "fakes: board 1 (port", 60)
        # The lab goes on: an operator power-cycles some of its devices, requests come.
        for device in board_devices(1)[:4]:
            await d.call("POST", f"/api/device/{device}/event/please_power_cycle/", {})

        async def suspect() -> Any:
            found = await d.get(f"/api/relay/{name}/health/")
            return found if found["board"]["health"] == "suspect" else None

        report = await d.wait_for(suspect, 60, "board suspect")
        to_suspect = reactor.seconds() - hung_at
        # Found by the probes after a device's failed power cycle, or by the idle-board checks
        # when those come first: either way for not answering twice.
        self.assertRegex(report["board"]["reason"], "did not answer 2 probes|two checks in a row failed")
        self.assertIn("timeout communicating with", report["board"]["reason"])
        served, failed = await serve(d, 6)
        self.assertEqual(failed, [], "no request failed because of the hung board")
        self.assertFalse(set(served) & set(board_devices(1)), "requests avoid the suspect board's devices")

        async def isolated() -> bool:
            states = await d.device_states()
            return all(states[n] == "board_suspect" for n in board_devices(1))

        await d.wait_for(isolated, 30, "board 1's devices waiting for it")
        states = await d.device_states()
        quarantined = [n for n in board_devices(1) if states[n].startswith("failed_") or states[n] == "held"]
        self.assertEqual(quarantined, [], "no device quarantined by a hung board")
        self.assertTrue(all(states[n] == "ready" for n in board_devices(2)))
        health = await d.get("/api/health/")
        self.assertEqual([b["health"] for b in health["boards"]], ["suspect", "ok"])
        code, metrics = await d.call("GET", "/metrics")
        self.assertIn(f'mozpool_power_controller_suspect{{board="{name}"', str(metrics))

        # The board answers again: the next probe finds it, and every device comes back.
        freed_at = await seen_in_log(d, "is now ok", 120)
        await d.wait_ready(board_devices(1), timeout=120)
        back = reactor.seconds() - freed_at
        self.assertEqual((await d.get(f"/api/relay/{name}/health/"))["board"]["health"], "ok")
        print(f"\nhung board: suspect {to_suspect:.2f} s after it hung (time scale 0.01); devices quarantined "
              f"{len(quarantined)}; requests failed {len(failed)} of {len(served) + len(failed)}; all 32 devices "
              f"ready again {back:.2f} s after it answered")

    async def test_one_device_failing_alone_is_quarantined_as_before(self) -> None:
        """A device that never gets past its boot loader fails its PXE boots alone: its own fault,
        quarantined in failed_pxe_booting as before; its board stays ok."""
        d = Daemon(self, fakes=32, config=HEALTH, extra_args=("--fail", "panda-0005:booting",
                                                              "--fail-board", "1:flaky:0"))
        await d.start()  # (a flaky board with P = 0 is a healthy one: the option parses, nothing else)
        await d.wait_ready([n for n in board_devices(1) if n != "panda-0005"], timeout=120)

        async def quarantined() -> bool:
            return (await d.device_states())["panda-0005"] == "failed_pxe_booting"

        await d.wait_for(quarantined, 240, "panda-0005 quarantined")
        health = await d.get("/api/health/")
        self.assertEqual([b["health"] for b in health["boards"]], ["ok"])
        self.assertEqual(health["servers"][0]["held"], [])

    async def test_an_image_failing_everywhere_trips_the_cap(self) -> None:
        d = Daemon(self, fakes=32, config=HEALTH + "quarantine_cap = 2\nquarantine_window = 6000\n",
                   extra_args=("--fail", "*:android_downloading"))
        await d.start()
        await d.wait_ready(timeout=120)
        served, failed = await serve(d, 2, timeout=300)
        states = await d.device_states()
        health = await d.get("/api/health/")
        quarantines = health["servers"][0]["quarantines"]
        held = health["servers"][0]["held"]
        failed_devices = [n for n, s in states.items() if s.startswith("failed_")]
        self.assertLessEqual(quarantines, 2, "no more automatic quarantines than the cap")
        self.assertEqual(served, [])
        self.assertTrue(held, "past the cap, devices are held")
        self.assertEqual(sorted(held), sorted(n for n, s in states.items() if s == "held"))
        self.assertIn("failed_bad_image", failed, "the request hears that its image is bad")
        print(f"\nbad image: {quarantines} quarantined (cap 2), {len(held)} held, {len(failed_devices)} in failed_*; "
              f"requests: {failed}")
