"""The TFTP backend seam (tx-tftp's IBackend/IReader) and the PXE configs served from memory."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mozpool.bmm import pxe
from mozpool.bmm.tftp import packets as P
from mozpool.bmm.tftp.backend import (
    AccessViolation,
    BytesReader,
    FileNotFound,
    FilesystemBackend,
    IBackend,
    IFileReader,
    IReader,
)

from .test_tftp import CLIENT, TFTPTestMixin

MAC = "0a1b2c3d4e5f"
NAME = b"pxelinux.cfg/01-0a-1b-2c-3d-4e-5f"


class ReaderTests(SynchronousTestCase):
    def test_bytes_reader(self) -> None:
        reader = BytesReader(b"0123456789")
        verifyObject(IReader, reader)
        self.assertEqual(reader.size, 10)
        self.assertEqual([reader.read(4), reader.read(4), reader.read(4), reader.read(4)],
                         [b"0123", b"4567", b"89", b""])
        reader.finish()
        self.assertEqual(reader.read(4), b"")

    def test_file_reader(self) -> None:
        root = FilePath(self.mktemp())
        root.makedirs()
        root.child("k").setContent(b"kernel bytes")
        reader = FilesystemBackend(root).get_reader(b"/k")
        verifyObject(IFileReader, reader)
        self.assertEqual(reader.size, 12)
        self.assertEqual(os.fstat(reader.fileno()).st_size, 12)
        buffer = bytearray(6)
        self.assertEqual(reader.readinto(memoryview(buffer)), 6)
        self.assertEqual((bytes(buffer), reader.read(100)), (b"kernel", b" bytes"))
        reader.finish()
        self.assertTrue(reader.closed)

    def test_filesystem_backend_refusals(self) -> None:
        root = FilePath(self.mktemp())
        root.makedirs()
        root.child("dir").makedirs()
        backend = FilesystemBackend(root.path)
        verifyObject(IBackend, backend)
        self.assertRaises(FileNotFound, backend.get_reader, b"missing")
        self.assertRaises(AccessViolation, backend.get_reader, b"../etc/passwd")
        self.assertRaises(AccessViolation, backend.get_reader, b"dir")


class PXEConfigsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)

    def test_memory_only_writes_no_file(self) -> None:
        configs = pxe.PXEConfigs(self.root, files=False)
        configs.set(MAC.upper(), "kernel at %IPADDRESS% token %BOOTTOKEN%", "10.0.0.1", "tok")
        self.assertEqual(configs.get(MAC), b"kernel at 10.0.0.1 token tok")
        self.assertFalse(os.path.exists(os.path.join(self.root, "pxelinux.cfg")))
        configs.clear(MAC)
        self.assertIsNone(configs.get(MAC))
        configs.clear(MAC)  # none is fine
        self.assertRaises(pxe.BadMAC, configs.set, "nonsense", "x", "1.1.1.1")

    def test_files_kept_and_reloaded_after_a_restart(self) -> None:
        """With files on, the spec's file is written, and a new table (a restarted daemon) has it."""
        configs = pxe.PXEConfigs(self.root)
        configs.set(MAC, "for %IPADDRESS%", "10.0.0.1")
        self.assertEqual(pxe.read_pxe_config(self.root, MAC), "for 10.0.0.1")
        other = "0a0000000001"
        configs.set(other, "second", "10.0.0.1")
        configs.clear(other)
        self.assertIsNone(pxe.read_pxe_config(self.root, other))
        with open(os.path.join(self.root, "pxelinux.cfg", "default"), "w") as f:
            f.write("not a device's")
        restarted = pxe.PXEConfigs(self.root)
        self.assertEqual((restarted.get(MAC), restarted.get(other), len(restarted)), (b"for 10.0.0.1", None, 1))
        self.assertEqual(len(pxe.PXEConfigs(self.root, files=False)), 0)

    def test_config_names(self) -> None:
        self.assertEqual(pxe.mac_of_config_name(NAME), MAC)
        self.assertEqual(pxe.mac_of_config_name(b"//pxelinux.cfg/01-0A-1B-2C-3D-4E-5F"), MAC)
        for other in (b"pxelinux.cfg/default", b"pxelinux.cfg/C0A80001", b"pxelinux.cfg/01-0a-1b-2c-3d-4e",
                      b"x/pxelinux.cfg/01-0a-1b-2c-3d-4e-5f", b"pxelinux.cfg/01-0a-1b-2c-3d-4e-5f/x"):
            self.assertIsNone(pxe.mac_of_config_name(other), other)


class PXEBackendTests(TFTPTestMixin, SynchronousTestCase):
    """The TFTP server answering from the PXE table first and the root for everything else."""

    def setUp(self) -> None:
        super().setUp()
        self.configs = pxe.PXEConfigs(self.root.path, files=False)
        self.server.backend = pxe.PXEConfigBackend(self.configs, FilesystemBackend(self.root))
        verifyObject(IBackend, self.server.backend)

    def test_serves_the_current_config(self) -> None:
        self.configs.set(MAC, "label linux %IPADDRESS%\n", "10.0.0.1")
        port = self.rrq(NAME, options={"tsize": "0", "blksize": "1468"})
        assert port is not None
        self.assertEqual(P.parse_oack(port.take()[0][0]), {"tsize": "21", "blksize": "1468"})
        self.assertEqual(self.download(port, oack=True), b"label linux 10.0.0.1\n")
        self.configs.set(MAC, "second boot\n", "10.0.0.1")
        port = self.rrq(NAME)
        assert port is not None
        self.assertEqual(self.download(port), b"second boot\n")

    def test_no_config_is_file_not_found_whatever_the_disk_says(self) -> None:
        self.write(NAME.decode(), b"a stale file nobody clears")
        self.assertIsNone(self.rrq(NAME))
        self.assertEqual(self.mainError(), (1, "file not found"))
        self.configs.set(MAC, "x", "10.0.0.1")
        self.configs.clear(MAC)
        self.assertIsNone(self.rrq("/" + NAME.decode()))
        self.assertEqual(self.mainError()[0], 1)

    def test_a_config_changed_mid_transfer_does_not_change_that_transfer(self) -> None:
        self.configs.set(MAC, "a" * 600, "10.0.0.1")
        port = self.rrq(NAME)
        assert port is not None
        first = self.blocks(port)
        self.configs.set(MAC, "b" * 600, "10.0.0.1")
        self.ack(port, 1)
        self.assertEqual(first + self.blocks(port), [(1, b"a" * 512), (2, b"a" * 88)])

    def test_other_names_from_the_root_with_its_confinement(self) -> None:
        content = self.write("pxelinux.cfg/default", b"default menu")
        port = self.rrq("pxelinux.cfg/default")
        assert port is not None
        self.assertEqual(self.download(port), content)
        self.assertIsNone(self.rrq("../secret"))
        self.assertEqual(self.mainError()[0], 2)

    def test_configs_are_never_handed_to_a_worker(self) -> None:
        """A config is no file: even a worker mode with no size threshold sends it from here."""
        handed: list[Any] = []

        class Handover:
            def available(self) -> bool:
                return True

            def hand_over(self, *args: Any) -> Any:
                handed.append(args)
                raise AssertionError("handed over")

        self.server.handover = Handover()
        self.server.handover_min_bytes = 0
        self.configs.set(MAC, "x" * 10, "10.0.0.1")
        port = self.rrq(NAME)
        assert port is not None
        self.assertEqual(self.download(port), b"x" * 10)
        self.assertEqual(handed, [])


@implementer(IBackend)
class LaterBackend:
    """A backend whose readers arrive later, as tx-tftp allows (a Deferred)."""

    def __init__(self) -> None:
        self.pending: dict[bytes, defer.Deferred[Any]] = {}

    def get_reader(self, name: bytes) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending[name] = d
        return d


class DeferredBackendTests(TFTPTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.backend = LaterBackend()
        self.server.backend = self.backend

    def test_reader_later(self) -> None:
        self.assertIsNone(self.rrq("k"))
        self.assertIsNone(self.rrq("k"))  # retransmitted while waiting: still one request
        self.assertEqual(list(self.backend.pending), [b"k"])
        self.backend.pending[b"k"].callback(BytesReader(b"late"))
        port = self.reactor.ports[-1]
        self.assertEqual(self.download(port), b"late")

    def test_refusal_later(self) -> None:
        self.rrq("k")
        self.backend.pending[b"k"].errback(FileNotFound())
        self.assertEqual(self.mainError(), (1, "file not found"))
        self.assertEqual(self.server.sessions, {})

    def test_table_checked_again_when_the_reader_arrives(self) -> None:
        """The table filled while the reader was on its way: the reader is released, busy answered."""
        self.server.max_transfers = 1
        self.rrq("k")
        self.server.backend = FilesystemBackend(self.root)
        self.write("other", b"x")
        self.assertIsNotNone(self.rrq("other", addr=("127.0.0.1", 5)))
        reader = BytesReader(b"late")
        self.backend.pending[b"k"].callback(reader)
        self.assertEqual(self.mainError(), (0, "server busy"))
        self.assertEqual(reader.read(1), b"")  # finished
        self.assertNotIn((CLIENT[0], CLIENT[1], b"k"), self.server.sessions)


class PXEBackendWorkerTests(PXEBackendTests):
    """With workers, configs are still answered by the daemon, and files from the root by workers."""

    workers = 2

    def test_root_files_go_to_a_worker(self) -> None:
        self.write("kernel", b"k" * 2000)
        port = self.rrq("kernel")
        assert port is not None and self.pool is not None
        self.assertEqual(self.pool.transfers(), [port.protocol])
