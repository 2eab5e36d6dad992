"""The TFTP session table under abuse: per-client limit, fair share of a full table, bounded memory.

Driven in memory like test_tftp.py: a fake datagram reactor on task.Clock, no sockets, no sleeps.
Clients here use non-loopback addresses, since loopback clients are exempt from the per-client limit.
"""

from __future__ import annotations

import gc
import os
import random
import weakref
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from mozpool.bmm.tftp import (
    DEFAULT_MAX_TRANSFERS,
    DEFAULT_MAX_TRANSFERS_PER_CLIENT,
    DEFAULT_MAX_WINDOW_BYTES,
    TFTPServer,
    make_tftp_service,
)
from mozpool.bmm.tftp import packets as P
from mozpool.bmm.tftp import backend as backend_module
from mozpool.config import Config, ConfigError, load_config

from mozpool.bmm.tftp import worker as worker_module

from .test_tftp import FakeDatagramPort, FakeUDPReactor
from .tftp_workers import InMemoryWorkerPool

FLOODER = "10.0.0.66"
DEVICE = ("10.0.0.7", 1024)

#: the retransmission schedule with the defaults: resends after 1, 2, 4, 8 s, gives up 8 s later
ABANDONED_AFTER = 1 + 2 + 4 + 8 + 8


class TableTestCase(SynchronousTestCase):
    """A server on a fake reactor, with every file it opens recorded."""

    options: dict[str, Any] = {}
    #: 0: transfers run in the server's process; N: handed over to N (in-memory) workers
    workers = 0

    def setUp(self) -> None:
        self.root = FilePath(self.mktemp())
        self.root.makedirs()
        self.root.child("kernel").setContent(os.urandom(64 * 1024))
        self.root.child("cfg").setContent(b"default linux\n" * 3000)
        self.reactor = FakeUDPReactor()
        options = dict(self.options)
        self.pool: InMemoryWorkerPool | None = None
        if self.workers:
            self.pool = InMemoryWorkerPool(self.reactor, self.workers, interface="10.0.0.1")
            self.pool.startService()
            self.addCleanup(self.pool.stopService)
            options.update(handover=self.pool, handover_min_bytes=0)
        self.server = TFTPServer(self.root, self.reactor, **options)
        self.main = self.reactor.listenUDP(69, self.server, interface="10.0.0.1")
        #: the files the transfers read (in worker mode, the workers' copies of the descriptors)
        self.opened: list[Any] = []
        if self.workers:
            original_adopt = worker_module.adopt_file

            def adopting(fd: int) -> Any:
                f = original_adopt(fd)
                self.opened.append(f)
                return f

            self.patch(worker_module, "adopt_file", adopting)
        else:
            original = backend_module.open_regular

            def recording(path: bytes) -> tuple[Any, int]:
                f, size = original(path)
                self.opened.append(f)
                return f, size

            self.patch(backend_module, "open_regular", recording)
        self.addCleanup(self.server.stopProtocol)

    def transfer_of(self, key: tuple[str, int, bytes]) -> Any:
        """The ReadTransfer that runs the session ``key``, wherever it runs."""
        if self.pool is None:
            return self.server.sessions[key]
        [transfer] = [t for t in self.pool.transfers() if t.peer == key[:2]]
        return transfer

    def buffered(self) -> int:
        """Bytes buffered by every running transfer, wherever it runs."""
        if self.pool is None:
            return self.server.buffered_bytes
        return sum(t.buffered_bytes for t in self.pool.transfers())

    def running(self) -> list[Any]:
        return list(self.server.sessions.values()) if self.pool is None else self.pool.transfers()

    def rrq(self, addr: tuple[str, int], name: bytes = b"kernel",
            options: dict[str, str] | None = None, mode: str = "octet") -> FakeDatagramPort | None:
        """Send an RRQ; the transfer port it opened, or None."""
        before = len(self.reactor.ports)
        self.server.datagramReceived(P.encode_request(name, mode, options), addr)
        if len(self.reactor.ports) == before:
            return None
        return self.reactor.ports[-1]

    def refusal(self, addr: tuple[str, int]) -> tuple[int, str]:
        """The one ERROR the main socket sent, which must have gone to addr."""
        sent = self.main.take()
        self.assertEqual([a for _, a in sent], [addr])
        return P.parse_error(sent[0][0])

    def flood(self, count: int, host: str = FLOODER) -> list[FakeDatagramPort | None]:
        """RRQs from one host, each from its own port, none ever acknowledged."""
        return [self.rrq((host, 2000 + i)) for i in range(count)]

    def wait(self, seconds: float) -> None:
        """Let time pass in half-second steps, as a real clock would (one big advance would find
        every retransmission timer late at once)."""
        self.reactor.pump([0.5] * int(seconds * 2))

    def held(self) -> dict[str, int]:
        return {host: len(transfers) for host, transfers in self.server.by_client.items()}

    def download(self, port: FakeDatagramPort, addr: tuple[str, int]) -> bytes:
        """Acknowledge each block until the transfer ends; the payload received."""
        out = []
        while not port.closed:
            sent = port.take()
            self.assertTrue(sent, "transfer stalled")
            block, payload = P.parse_data(sent[-1][0])
            out.append(payload)
            port.protocol.datagramReceived(P.encode_ack(block), addr)
        return b"".join(out)


class ClientLimitTests(TableTestCase):
    def test_flood_refused_past_the_limit_and_another_host_served(self) -> None:
        """50 RRQs from one address that never ACKs: 8 transfers, 42 refusals; a device still boots."""
        ports = self.flood(50)
        opened = [p for p in ports if p is not None]
        self.assertEqual(len(opened), DEFAULT_MAX_TRANSFERS_PER_CLIENT)
        self.assertEqual(ports[:8], opened)
        refusals = self.main.take()
        self.assertEqual([a for _, a in refusals], [(FLOODER, 2000 + i) for i in range(8, 50)])
        self.assertEqual({P.parse_error(d) for d, _ in refusals}, {(0, "too many transfers from your address")})
        self.assertEqual(len(self.opened), 8)

        port = self.rrq(DEVICE)
        assert port is not None
        self.assertEqual(self.download(port, DEVICE), self.root.child("kernel").getContent())
        self.assertEqual(self.held(), {FLOODER: 8})

        # Once its transfers have timed out, the flooding host is a client like any other again.
        self.wait(ABANDONED_AFTER)
        self.assertEqual(self.server.sessions, {})
        self.assertTrue(all(p.closed for p in opened))
        self.assertIsNotNone(self.rrq((FLOODER, 3000)))

    def test_refusal_allocates_nothing(self) -> None:
        self.flood(DEFAULT_MAX_TRANSFERS_PER_CLIENT)
        self.main.take()
        ports, files, calls = len(self.reactor.ports), len(self.opened), len(self.reactor.getDelayedCalls())
        sessions = dict(self.server.sessions)
        self.assertIsNone(self.rrq((FLOODER, 9999), options={"blksize": "1468", "tsize": "0"}))
        self.assertEqual(self.refusal((FLOODER, 9999)), (0, "too many transfers from your address"))
        self.assertEqual((len(self.reactor.ports), len(self.opened), len(self.reactor.getDelayedCalls())),
                         (ports, files, calls))
        self.assertEqual(self.server.sessions, sessions)

    def test_limit_counts_running_transfers_only(self) -> None:
        self.server.max_transfers_per_client = 2
        first, second = self.flood(2)
        assert first is not None and second is not None
        self.assertIsNone(self.rrq((FLOODER, 3000)))
        self.main.take()
        first.protocol.datagramReceived(P.encode_error(0, "abort"), (FLOODER, 2000))
        self.assertEqual(self.held(), {FLOODER: 1})
        self.assertIsNotNone(self.rrq((FLOODER, 3000)))

    def test_zero_means_no_limit(self) -> None:
        self.server.max_transfers_per_client = 0
        self.assertTrue(all(self.flood(20)))
        self.assertEqual(self.held(), {FLOODER: 20})

    def test_loopback_clients_exempt(self) -> None:
        """Every simulated device of --fakes boots from 127.0.0.1; ::1 and mapped 127/8 are local too."""
        for host in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"):
            self.assertTrue(all(self.flood(10, host=host)), host)
        self.assertEqual(self.main.take(), [])
        self.assertEqual(len(self.flood(10, host="::ffff:10.0.0.66")), 10)
        self.assertEqual(self.held()["::ffff:10.0.0.66"], 8)

    def test_invalid_limits_refused(self) -> None:
        self.assertRaises(ValueError, TFTPServer, self.root, self.reactor, max_transfers=0)
        self.assertRaises(ValueError, TFTPServer, self.root, self.reactor, max_transfers_per_client=-1)


class FairShareTests(TableTestCase):
    options = {"max_transfers": 16, "max_transfers_per_client": 0}

    def test_flooder_filling_the_table_cannot_starve_other_hosts(self) -> None:
        ports = self.flood(17)
        self.assertEqual(len([p for p in ports if p]), 16)
        self.assertEqual(self.refusal((FLOODER, 2016)), (0, "server busy"))

        oldest = ports[0]
        assert oldest is not None
        oldest.take()
        port = self.rrq(DEVICE)
        assert port is not None
        self.assertEqual(self.main.take(), [])
        # The flooder's oldest transfer made room: its peer is told, its file and socket released.
        self.assertEqual([P.parse_error(d) for d, _ in oldest.take()], [(0, "server busy, transfer cancelled")])
        self.assertTrue(oldest.closed)
        self.assertTrue(self.opened[0].closed)
        self.assertEqual(self.successResultOf(oldest.protocol.done), "displaced")  # type: ignore[attr-defined]
        self.assertEqual(self.held(), {FLOODER: 15, DEVICE[0]: 1})
        self.assertEqual(self.download(port, DEVICE), self.root.child("kernel").getContent())

        # More devices get in the same way while the flood goes on.
        for i in range(5):
            self.flood(3)
            self.main.take()
            device = ("10.0.1.%d" % i, 1024)
            self.assertIsNotNone(self.rrq(device))
        self.assertEqual(len(self.server.sessions), 16)
        self.assertEqual(self.held()[FLOODER], 11)

    def test_oldest_of_the_busiest_client_is_displaced(self) -> None:
        b1 = self.rrq(("10.0.0.2", 1))
        a1 = self.rrq(("10.0.0.1", 1))
        self.server.max_transfers = 4
        a2 = self.rrq(("10.0.0.1", 2))
        b2 = self.rrq(("10.0.0.2", 2))
        self.assertTrue(all((a1, a2, b1, b2)))
        # 10.0.0.1 and .2 hold two each; .2's oldest started first, so it goes.
        self.assertIsNotNone(self.rrq(("10.0.0.3", 1)))
        self.assertEqual([p.closed for p in (b1, a1, a2, b2)], [True, False, False, False])  # type: ignore[union-attr]
        self.assertEqual(self.held(), {"10.0.0.1": 2, "10.0.0.2": 1, "10.0.0.3": 1})
        # Now the busiest holds 2, one more than .3: the table is as even as it can be.
        self.assertIsNone(self.rrq(("10.0.0.3", 2)))
        self.assertEqual(self.refusal(("10.0.0.3", 2)), (0, "server busy"))
        # A client holding nothing may still take one from the busiest.
        self.assertIsNotNone(self.rrq(("10.0.0.4", 1)))
        self.assertTrue(a1.closed)  # type: ignore[union-attr]
        self.assertEqual(self.held(), {"10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.3": 1, "10.0.0.4": 1})

    def test_even_clients_never_displace_each_other(self) -> None:
        self.server.max_transfers = 4
        self.flood(2, host="10.0.0.1")
        self.flood(2, host="10.0.0.2")
        for _ in range(3):
            for host in ("10.0.0.1", "10.0.0.2"):
                self.assertIsNone(self.rrq((host, 5000)))
                self.assertEqual(self.refusal((host, 5000)), (0, "server busy"))
        self.assertFalse(any(p.closed for p in self.reactor.ports))

    def test_refused_request_displaces_nothing(self) -> None:
        """Eviction happens only for a transfer that will start: a missing file takes no one's place."""
        self.flood(16)
        self.assertIsNone(self.rrq(DEVICE, name=b"pxelinux.cfg/01-aa-bb-cc-dd-ee-ff"))
        self.assertEqual(self.refusal(DEVICE)[0], P.ERR_NOT_FOUND)
        self.assertEqual(self.held(), {FLOODER: 16})
        self.assertFalse(any(p.closed for p in self.reactor.ports))

    def test_fair_share_rule_holds_under_random_load(self) -> None:
        """Random RRQs, completions and time from hosts of very different appetites."""
        rng = random.Random(10)
        hosts = ["10.0.2.%d" % i for i in range(7)]
        weights = [30, 10, 5, 2, 1, 1, 1]  # the first is a flood
        port_numbers = iter(range(1000, 100000))
        capacity = self.server.max_transfers
        outcomes = {"served": 0, "displacing": 0, "busy": 0}
        for _ in range(3000):
            roll = rng.random()
            if roll < 0.7:
                host = rng.choices(hosts, weights)[0]
                before = self.held()
                mine = before.get(host, 0)
                full = sum(before.values()) == capacity
                port = self.rrq((host, next(port_numbers)))
                after = self.held()
                if port is None:
                    outcomes["busy"] += 1
                    self.assertTrue(full)
                    self.assertLessEqual(max(before.values()), mine + 1)
                    # Never refused below a fair share of the table.
                    wanting = len(before) + (host not in before)
                    self.assertGreaterEqual(mine, capacity // wanting)
                    self.assertEqual(after, before)
                elif full:
                    outcomes["displacing"] += 1
                    losers = [h for h in before if after.get(h, 0) < before[h]]
                    self.assertEqual(len(losers), 1)
                    self.assertEqual(before[losers[0]], max(before.values()))
                    self.assertGreaterEqual(before[losers[0]], mine + 2)
                else:
                    outcomes["served"] += 1
                self.main.take()
            elif roll < 0.85 and self.server.sessions:
                key = rng.choice(list(self.server.sessions))
                self.transfer_of(key).datagramReceived(P.encode_error(0, "done"), key[:2])
            else:
                self.reactor.advance(rng.choice([0.5, 2, 8]))
            self.assertLessEqual(len(self.server.sessions), capacity)
            self.assertEqual(sum(self.held().values()), len(self.server.sessions))
        self.assertTrue(all(outcomes.values()), outcomes)


class MemoryTests(TableTestCase):
    def abandon(self, options: dict[str, str], mode: str = "octet", name: bytes = b"kernel") -> None:
        """A client that takes the first window and is never heard of again: all of it is released."""
        port = self.rrq(DEVICE, name=name, options=options, mode=mode)
        assert port is not None
        transfer = port.protocol
        [f] = self.opened
        port.protocol.datagramReceived(P.encode_ack(0), DEVICE)
        held = transfer.buffered_bytes  # type: ignore[attr-defined]
        self.assertGreater(held, 0)

        self.wait(ABANDONED_AFTER - 0.5)
        self.assertFalse(f.closed)
        self.assertEqual(transfer.buffered_bytes, held)  # type: ignore[attr-defined]
        self.reactor.advance(0.5)
        self.assertTrue(f.closed)
        self.assertTrue(port.closed)
        self.assertEqual(transfer.buffered_bytes, 0)  # type: ignore[attr-defined]
        self.assertEqual((self.server.sessions, self.server.by_client), ({}, {}))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(transfer.done), "timeout")  # type: ignore[attr-defined]

        # Nothing in the server keeps the transfer (or its file) alive.
        gone = weakref.ref(transfer)
        self.reactor.ports.remove(port)
        del port, transfer, f
        self.opened.clear()
        gc.collect()
        self.assertIsNone(gone())

    def test_abandoned_transfer_closes_its_file_and_frees_its_state(self) -> None:
        self.abandon({"blksize": "1024", "windowsize": "8"})

    def test_abandoned_netascii_transfer_drops_its_carry(self) -> None:
        self.abandon({"blksize": "512"}, mode="netascii", name=b"cfg")

    def test_window_bounded_by_max_window_bytes(self) -> None:
        cases = [
            ({"blksize": "65464", "windowsize": "64"}, "4", DEFAULT_MAX_WINDOW_BYTES),
            ({"windowsize": "64", "blksize": "65464"}, "4", DEFAULT_MAX_WINDOW_BYTES),  # any order
            ({"blksize": "1468", "windowsize": "64"}, "64", DEFAULT_MAX_WINDOW_BYTES),
            ({"blksize": "1024", "windowsize": "16"}, "7", 8192),
            ({"blksize": "1024", "windowsize": "16"}, "1", 100),  # never below one block
        ]
        for i, (options, expected, limit) in enumerate(cases):
            self.server.max_window_bytes = limit
            port = self.rrq(("10.0.3.%d" % i, 1), options=options)
            assert port is not None
            self.assertEqual(P.parse_oack(port.take()[0][0])["windowsize"], expected, options)

    def test_total_buffered_bounded_by_table_size(self) -> None:
        """A full table of clients that ask for the biggest windows and then go silent."""
        self.root.child("ramdisk").setContent(os.urandom(1 << 20))
        self.server.max_transfers = 12
        for i in range(40):
            addr = ("10.0.4.%d" % i, 1)
            port = self.rrq(addr, name=b"ramdisk", options={"blksize": "65464", "windowsize": "65535"})
            if port is not None:
                port.protocol.datagramReceived(P.encode_ack(0), addr)
            self.main.take()
            self.assertLessEqual(self.buffered(), self.server.max_transfers * DEFAULT_MAX_WINDOW_BYTES)
        self.assertEqual(len(self.server.sessions), 12)
        self.assertGreater(self.buffered(), 12 * 3 * 65468)
        for transfer in self.running():
            self.assertLessEqual(transfer.buffered_bytes, DEFAULT_MAX_WINDOW_BYTES)
        open_files = [f for f in self.opened if not f.closed]
        self.assertEqual(len(open_files), 12)  # the displaced ones were closed
        self.wait(ABANDONED_AFTER)
        self.assertEqual(self.buffered(), 0)
        self.assertTrue(all(f.closed for f in self.opened))


class ClientLimitWorkerTests(ClientLimitTests):
    """The same rules with every transfer handed over to one of three workers: the table stays
    the daemon's, so they hold across workers."""

    workers = 3


class FairShareWorkerTests(FairShareTests):
    workers = 3


class MemoryWorkerTests(MemoryTests):
    workers = 3


class ConfigurationTests(SynchronousTestCase):
    def test_defaults_agree(self) -> None:
        c = Config()
        self.assertEqual((c.tftp_max_transfers, c.tftp_max_transfers_per_client),
                         (DEFAULT_MAX_TRANSFERS, DEFAULT_MAX_TRANSFERS_PER_CLIENT))
        self.assertEqual((DEFAULT_MAX_TRANSFERS, DEFAULT_MAX_TRANSFERS_PER_CLIENT), (128, 8))

    def test_ini_keys(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[tftp]\nmax_transfers = 40\nmax_transfers_per_client = 0\n")
        c = load_config(path)
        self.assertEqual((c.tftp_max_transfers, c.tftp_max_transfers_per_client), (40, 0))
        with open(path, "w") as f:
            f.write("[tftp]\nmax_transfers = 0\n")
        self.assertRaises(ConfigError, load_config, path)

    def test_dist_file_documents_the_defaults(self) -> None:
        import mozpool

        c = load_config(os.path.join(os.path.dirname(mozpool.__file__), "config.ini.dist"))
        self.assertEqual((c.tftp_max_transfers, c.tftp_max_transfers_per_client), (128, 8))

    def test_service_passes_the_limits(self) -> None:
        reactor = FakeUDPReactor()
        service = make_tftp_service(self.mktemp(), 6969, "127.0.0.1", reactor,
                                  max_transfers=40, max_transfers_per_client=3)
        service.startService()
        self.addCleanup(service.stopService)
        server = reactor.ports[0].protocol
        self.assertEqual((server.max_transfers, server.max_transfers_per_client), (40, 3))  # type: ignore[attr-defined]
