"""TFTP worker processes: handover, supervision (a dead worker replaced), and a clean stop.

First in memory (the real pool and worker protocols on a fake reactor, tests/bmm/tftp_workers.py),
then with real processes on loopback: a worker killed in the middle of a transfer, and a stop that
must leave no process behind.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IReactorProcess, IReactorSocket
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mozpool.bmm.tftp import TFTPServer, make_tftp_service
from mozpool.bmm.tftp import workers as W
from mozpool.bmm.tftp.worker import BusyPoll
from mozpool.fakes.tftpclient import TFTPTimeout, fetch
from tests.support.polling import until

from .test_tftp import CLIENT, FakeUDPReactor, TFTPTestMixin


class InMemoryPoolTests(TFTPTestMixin, SynchronousTestCase):
    workers = 2

    def setUp(self) -> None:
        super().setUp()
        self.content = self.write("kernel", os.urandom(5000))

    def test_least_busy_worker_takes_the_transfer(self) -> None:
        assert self.pool is not None
        for i in range(5):
            self.assertIsNotNone(self.rrq("kernel", addr=("127.0.0.1", 100 + i)))
        self.assertEqual(sorted(len(side.transfers) for side in self.pool.sides.values()), [2, 3])

    def test_killed_worker_loses_its_transfers_and_is_replaced(self) -> None:
        assert self.pool is not None
        self.reactor.advance(W.RESPAWN_STABLE_AFTER)  # the workers have lived: replaced at once
        port = self.rrq("kernel")
        assert port is not None
        [number] = [n for n, side in self.pool.sides.items() if side.transfers]
        spawned = self.pool.spawned
        self.pool.kill(number)
        # The daemon's table no longer holds the dead worker's transfer, so the client's next RRQ
        # (after its own timeout) is a new request, not a duplicate of a transfer nobody runs.
        self.assertEqual((self.server.sessions, self.server.by_client), ({}, {}))
        self.reactor.advance(0)
        self.assertEqual(self.pool.spawned, spawned + 1)
        self.assertEqual(len(self.pool.sides), 2)
        again = self.rrq("kernel")
        assert again is not None
        self.assertEqual(self.download(again), self.content)

    def test_a_worker_that_keeps_dying_is_replaced_after_growing_pauses(self) -> None:
        assert self.pool is not None
        pauses = []
        for _ in range(4):
            self.pool.kill(0)
            waited = 0.0
            while 0 not in self.pool.sides:
                self.reactor.advance(0.25)
                waited += 0.25
            pauses.append(waited)
        self.assertEqual(pauses, [0.5, 1.0, 2.0, 4.0])

    def test_without_a_ready_worker_the_daemon_sends_itself(self) -> None:
        assert self.pool is not None
        self.pool.kill(0)
        self.pool.kill(1)
        self.assertFalse(self.pool.available())
        port = self.rrq("kernel")
        assert port is not None
        self.assertIsInstance(self.server.sessions[(CLIENT[0], CLIENT[1], b"kernel")], type(port.protocol))
        self.assertEqual(self.download(port), self.content)

    def test_small_files_stay_in_the_daemon(self) -> None:
        assert self.pool is not None
        self.server.handover_min_bytes = 5001
        port = self.rrq("kernel")
        assert port is not None
        self.assertEqual(self.pool.transfers(), [])
        self.server.handover_min_bytes = 5000
        port = self.rrq("kernel", addr=("127.0.0.1", 7))
        self.assertEqual(self.pool.transfers(), [port.protocol])  # type: ignore[union-attr]

    def test_stop_ends_transfers_and_closes_every_channel(self) -> None:
        assert self.pool is not None
        port = self.rrq("kernel")
        assert port is not None
        self.main.stopListening()
        self.assertTrue(port.closed)
        sides = list(self.pool.sides.values())
        d = self.pool.stopService()
        self.successResultOf(d)
        self.assertTrue(all(side.transport is None for side in sides))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(60)
        self.assertEqual(self.pool.spawned, 2)  # nothing respawned after the stop

    def test_stop_gives_up_on_a_worker_that_outlives_sigkill(self) -> None:
        """Stuck in the kernel (a hung NFS root, say), a worker outlives even SIGKILL: stop kills
        it after stop_timeout and fires KILL_GRACE later anyway, saying so."""
        assert self.pool is not None
        stuck = [StuckProcess(4000 + slot.number) for slot in self.pool.slots]
        for slot, process in zip(self.pool.slots, stuck):
            slot.process = process
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        d = self.pool.stopService()
        self.reactor.advance(self.pool.stop_timeout - 0.1)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.assertEqual([p.signals for p in stuck], [[signal.SIGKILL], [signal.SIGKILL]])
        self.reactor.advance(W.KILL_GRACE - 0.1)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.successResultOf(d)
        [error] = [e for e in logged if e.get("log_level") == LogLevel.error]
        self.assertEqual(error["pids"], [4000, 4001])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        for slot in self.pool.slots:
            slot.process = None  # the cleanup's stop has nothing left to wait for

    def test_pool_needs_a_worker(self) -> None:
        self.assertRaises(ValueError, W.WorkerPool, FakeUDPReactor(), 0)


class StuckProcess:
    """A worker process that no signal ends."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []

    def signalProcess(self, number: int) -> None:
        self.signals.append(number)


class ServiceTests(SynchronousTestCase):
    def test_workers_option(self) -> None:
        fake = FakeUDPReactor()
        plain = make_tftp_service(self.mktemp(), 6969, "127.0.0.1", fake)
        self.assertIsNone(plain.workers)  # type: ignore[attr-defined]
        service = make_tftp_service(self.mktemp(), 6969, "127.0.0.1", fake, workers=3)
        pool = service.workers  # type: ignore[attr-defined]
        self.assertEqual((len(pool.slots), pool.interface), (3, "127.0.0.1"))
        self.assertIs(service.tftp_server.handover, pool)  # type: ignore[attr-defined]
        self.assertEqual([s.name for s in service], ["tftp-workers", None])  # type: ignore[attr-defined]


class FakePoll:
    """epoll's poll on a fake clock: each poll(0) takes `step` seconds and finds the next of
    `ready` (a list of results, [] for nothing); a sleeping poll takes `sleep` seconds."""

    def __init__(self, ready: list[list[tuple[int, int]]], sleep: float, step: float = 20e-6) -> None:
        self.now = 100.0
        self.ready = list(ready)
        self.sleep = sleep
        self.step = step
        self.calls: list[float] = []

    def clock(self) -> float:
        return self.now

    def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
        self.calls.append(timeout)
        if timeout == 0:
            self.now += self.step
            return self.ready.pop(0) if self.ready else []
        self.now += self.sleep if timeout < 0 else min(self.sleep, timeout)
        return [(7, 1)] if timeout < 0 or self.sleep <= timeout else []


class BusyPollTests(SynchronousTestCase):
    """The worker's wait: it polls without sleeping only while ACKs come back within the spin."""

    SPIN = 200e-6

    def wait(self, fake: FakePoll, spin: float | None = None) -> BusyPoll:
        return BusyPoll(fake.poll, self.SPIN if spin is None else spin, fake.clock)

    def test_a_cold_worker_sleeps_at_once(self) -> None:
        fake = FakePoll([], sleep=0.5)
        wait = self.wait(fake)
        self.assertEqual(wait(None, 4), [(7, 1)])
        self.assertEqual(fake.calls, [-1])
        self.assertFalse(wait.hot)  # half a second between events: nothing to gain by polling

    def test_events_faster_than_the_spin_are_polled_for(self) -> None:
        fake = FakePoll([[], [], [(5, 1)]], sleep=50e-6)
        wait = self.wait(fake)
        wait(None, 4)  # slept 50 us: hot
        self.assertTrue(wait.hot)
        fake.calls.clear()
        self.assertEqual(wait(None, 4), [(5, 1)])
        self.assertEqual(fake.calls, [0, 0, 0])  # found by polling, no sleep
        self.assertTrue(wait.hot)

    def test_the_spin_is_bounded_and_a_slow_client_cools_it(self) -> None:
        fake = FakePoll([], sleep=50e-6)
        wait = self.wait(fake)
        wait(None, 4)
        fake.sleep = 0.3  # the client went quiet
        fake.calls.clear()
        self.assertEqual(wait(None, 4), [(7, 1)])
        self.assertEqual(fake.calls, [0] * 10 + [-1])  # 10 polls of 20 us, then asleep
        self.assertFalse(wait.hot)
        fake.calls.clear()
        wait(None, 4)
        self.assertEqual(fake.calls, [-1])

    def test_never_past_the_reactors_timeout(self) -> None:
        fake = FakePoll([], sleep=50e-6)
        wait = self.wait(fake)
        wait(None, 4)
        fake.calls.clear()
        started = fake.now
        self.assertEqual(wait(60e-6, 4), [])  # a timer is due in 60 us
        self.assertEqual(fake.calls[:3], [0, 0, 0])
        self.assertEqual(fake.calls[3:], [0])  # what remains of the timeout
        self.assertAlmostEqual(fake.now - started, 80e-6)
        self.assertFalse(wait.hot)  # woken by the timer, not a datagram
        wait(None, 4)
        self.assertTrue(wait.hot)
        fake.calls.clear()
        wait(0, 4)  # due now: one look, no spin
        self.assertEqual(fake.calls, [0])

    def test_zero_never_spins(self) -> None:
        fake = FakePoll([], sleep=10e-6)
        wait = self.wait(fake, spin=0)
        for _ in range(3):
            wait(None, 4)
        self.assertEqual(fake.calls, [-1, -1, -1])
        self.assertFalse(wait.hot)


@implementer(IReactorProcess, IReactorSocket)
class SpawnRecorder:
    """Just enough reactor for WorkerPool.launch: records the worker's command line."""

    def __init__(self) -> None:
        self.args: list[str] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        self.args = list(args)
        return object()

    def adoptStreamConnection(self, fd: int, family: Any, factory: Any) -> None:
        pass

    def seconds(self) -> float:
        return 0.0


class LaunchTests(SynchronousTestCase):
    def test_the_busy_poll_reaches_the_worker(self) -> None:
        reactor_ = SpawnRecorder()
        W.WorkerPool(reactor_, 1, busy_poll=50e-6).launch(W.Slot(0))
        self.assertEqual(reactor_.args[reactor_.args.index("--busy-poll-us") + 1], "50")
        W.WorkerPool(reactor_, 1).launch(W.Slot(0))
        self.assertNotIn("--busy-poll-us", reactor_.args)  # the worker's default


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class RealWorkerTests(TestCase):
    """Worker processes for real, on loopback: spawnProcess, SCM_RIGHTS, SIGKILL."""

    timeout = 60

    async def wait_for(self, predicate: Any, seconds: float, what: str) -> None:
        await until(predicate, what, seconds, 0.05)

    async def start(self, workers: int = 2, **options: Any) -> None:
        self.root = FilePath(self.mktemp())
        self.root.makedirs()
        self.content = os.urandom(6 << 20)
        self.root.child("ramdisk").setContent(self.content)
        self.service = make_tftp_service(self.root, 0, "127.0.0.1", reactor, workers=workers,
                                         handover_min_bytes=0, **options)
        self.service.startService()
        self.pool: W.WorkerPool = self.service.workers  # type: ignore[attr-defined]
        self.server: TFTPServer = self.service.tftp_server  # type: ignore[attr-defined]
        udp = [s for s in self.service if s.name != "tftp-workers"][0]  # type: ignore[attr-defined]
        self.port = udp._port.getHost().port
        await self.wait_for(lambda: sum(1 for s in self.pool.slots if s.connection and s.connection.ready) == workers,
                            20, "workers ready")
        self.pids = list(self.pool.pids)
        self.addCleanup(self.stop_and_check)

    async def stop_and_check(self) -> None:
        pids = set(self.pids) | set(self.pool.pids)
        await self.service.stopService()
        self.assertEqual(self.pool.pids, [])
        self.assertEqual([pid for pid in pids if _alive(pid)], [])

    def get(self, **kw: Any) -> defer.Deferred[bytes]:
        kw.setdefault("max_size", 1 << 30)
        return fetch(reactor, "127.0.0.1", self.port, "ramdisk", **kw)

    async def test_download_through_a_worker(self) -> None:
        await self.start()
        data = await self.get(blksize=1428)
        self.assertEqual(data, self.content)
        # The worker reports the end once the final ACK is in: the table empties.
        await self.wait_for(lambda: not self.server.sessions, 20, "the transfer's end reported")

    async def test_an_idle_worker_sleeps(self) -> None:
        """It busy-polls only while ACKs come fast: once the transfer is over, its CPU stays still.
        (The setting is passed as the daemon passes it, on the worker's command line.)"""
        await self.start(workers=1, busy_poll=500e-6)
        self.assertEqual(await self.get(blksize=1428), self.content)
        await self.wait_for(lambda: not self.server.sessions, 20, "the transfer's end reported")
        [pid] = self.pool.pids
        before = _cpu_seconds(pid)
        await task.deferLater(reactor, 1.0)
        self.assertLess(_cpu_seconds(pid) - before, 0.2)

    async def test_killed_worker_is_replaced_and_no_transfer_hangs(self) -> None:
        await self.start()
        started = reactor.seconds()
        d = self.get(blksize=512, timeout=0.5, retries=3, deadline=20)
        await self.wait_for(lambda: any(s.connection and s.connection.transfers for s in self.pool.slots), 10,
                            "a transfer handed over")
        [slot] = [s for s in self.pool.slots if s.connection and s.connection.transfers]
        victim = slot.process.pid
        os.kill(victim, signal.SIGKILL)
        # The client hears nothing more: its fetch fails within its own bound instead of hanging.
        with self.assertRaises(TFTPTimeout):
            await d
        self.assertLess(reactor.seconds() - started, 20)
        await self.wait_for(lambda: not _alive(victim), 10, "the killed worker reaped")
        await self.wait_for(lambda: len(self.pool.pids) == 2 and victim not in self.pool.pids and self.pool.available()
                            and all(s.connection and s.connection.ready for s in self.pool.slots), 20,
                            "a replacement ready")
        self.assertEqual(self.server.sessions, {})
        self.pids = list(self.pool.pids)
        # Served again, by the survivors or the replacement.
        self.assertEqual(await self.get(blksize=1428), self.content)

    async def test_stop_leaves_no_process_behind(self) -> None:
        await self.start(workers=3)
        d = self.get(blksize=512, timeout=0.5, retries=2, deadline=20)
        d.addErrback(lambda f: f.trap(TFTPTimeout))
        await self.wait_for(lambda: self.server.sessions, 10, "a transfer running")
        pids = list(self.pool.pids)
        self.assertEqual(len(pids), 3)
        await self.service.stopService()
        self.assertEqual([pid for pid in pids if _alive(pid)], [])
        self.assertEqual(self.pool.pids, [])
        await d
        self.pids = []

    async def test_worker_exits_when_its_channel_closes(self) -> None:
        """As when the daemon is killed: the worker goes by itself (and here is replaced)."""
        await self.start(workers=1)
        [pid] = self.pool.pids
        slot = self.pool.slots[0]
        assert slot.connection is not None
        slot.connection.transport.loseConnection()
        await self.wait_for(lambda: not _alive(pid), 10, "the worker gone")
        await self.wait_for(lambda: self.pool.available(), 20, "a replacement")
        self.assertNotIn(pid, self.pool.pids)
