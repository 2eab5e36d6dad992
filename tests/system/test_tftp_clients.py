"""System tests: our TFTP server on 127.0.0.1 against the real Debian clients tftp-hpa, atftp and curl.

A client binary that is missing skips its tests, except under CI=true where it fails them
(install with `apt-get install -y tftp-hpa atftp curl`).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase

from mozpool.bmm.tftp import TFTPServer
from mozpool.bmm.tftp import packets as P
from mozpool.bmm.tftp.netascii import to_netascii

SECRET = b"the secret outside the root\n"
TEXT = b"DEFAULT linux\nLABEL linux\r\n  KERNEL vmlinuz\n  APPEND root=/dev/ram0 \rbare cr\n" * 20


def client(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{name} is not installed (apt-get install -y tftp-hpa atftp curl)")
        raise SkipTest(f"{name} is not installed")
    return path


class LossyRelay:
    """A loopback UDP relay between one client and the server that drops chosen DATA packets once.

    The client talks to `port`; the relay talks to the server from its own socket and follows the
    server's transfer port once the first answer arrives.
    """

    def __init__(self, serverPort: int, dropBlocks: set[int]) -> None:
        self.drop = set(dropBlocks)
        self.dataSeen: dict[int, int] = {}
        self.dropped: list[int] = []
        relay = self

        class ClientSide(DatagramProtocol):
            client: Any = None

            def datagramReceived(self, data: bytes, addr: Any) -> None:
                self.client = addr
                serverSide.transport.write(data, serverSide.target)

        class ServerSide(DatagramProtocol):
            target: Any = ("127.0.0.1", serverPort)

            def datagramReceived(self, data: bytes, addr: Any) -> None:
                self.target = addr
                if P.opcode_of(data) == P.DATA:
                    block = P.parse_data(data)[0]
                    relay.dataSeen[block] = relay.dataSeen.get(block, 0) + 1
                    if block in relay.drop:
                        relay.drop.discard(block)
                        relay.dropped.append(block)
                        return
                clientSide.transport.write(data, clientSide.client)

        clientSide, serverSide = ClientSide(), ServerSide()
        self.clientPort = reactor.listenUDP(0, clientSide, interface="127.0.0.1")
        self.serverPort = reactor.listenUDP(0, serverSide, interface="127.0.0.1")
        self.port = self.clientPort.getHost().port

    def stop(self) -> defer.Deferred[Any]:
        return defer.gatherResults(
            [defer.maybeDeferred(self.clientPort.stopListening), defer.maybeDeferred(self.serverPort.stopListening)]
        )


class ClientTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        base = FilePath(self.mktemp())
        self.root = base.child("root")
        self.root.makedirs()
        self.out = base.child("out")
        self.out.makedirs()
        self.files = {
            "kernel.bin": os.urandom(300 * 1024 + 17),
            "exact.bin": os.urandom(512 * 64),
            "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff": TEXT,
            "empty": b"",
        }
        for name, content in self.files.items():
            fp = self.root.preauthChild(name)
            fp.parent().makedirs(ignoreExistingDirectory=True)
            fp.setContent(content)
        base.child("secret").setContent(SECRET)
        os.symlink(base.child("secret").path, self.root.child("escape").path)
        os.symlink(base.path, self.root.child("updir").path)
        os.symlink("kernel.bin", self.root.child("alias").path)
        self.server = TFTPServer(self.root, reactor)
        self.listening = reactor.listenUDP(0, self.server, interface="127.0.0.1")
        self.addCleanup(self.listening.stopListening)
        self.port = self.listening.getHost().port

    async def runClient(self, executable: str, args: list[str]) -> tuple[bytes, int]:
        out, err, code = await getProcessOutputAndValue(
            executable, args, env=dict(os.environ), path=self.out.path, reactor=reactor
        )
        return out + err, code

    def outFile(self, name: str) -> FilePath[str]:
        return self.out.child(name)

    def assertNotLeaked(self, local: FilePath[str]) -> None:
        if local.exists():
            self.assertNotIn(SECRET.strip(), local.getContent())

    # -- the transfer's socket, with real sockets

    async def test_a_stranger_gets_error_5_and_the_transfer_carries_on(self) -> None:
        """With real sockets: a datagram from anyone but the client reaching the transfer's port
        is answered with ERROR 5 (spec 5.2), and the client's transfer goes on to the end."""
        got: dict[str, list[tuple[bytes, Any]]] = {"client": [], "stranger": []}
        arrived: dict[str, defer.Deferred[None]] = {}

        class Peer(DatagramProtocol):
            def __init__(self, who: str) -> None:
                self.who = who

            def datagramReceived(self, data: bytes, addr: Any) -> None:
                got[self.who].append((data, addr))
                waiting = arrived.pop(self.who, None)
                if waiting is not None:
                    waiting.callback(None)

        def expect(who: str) -> defer.Deferred[None]:
            arrived[who] = d = defer.Deferred()
            return d.addTimeout(5, reactor)

        ports = {who: reactor.listenUDP(0, Peer(who), interface="127.0.0.1") for who in got}
        for p in ports.values():
            self.addCleanup(p.stopListening)
        first = expect("client")
        ports["client"].write(P.encode_request(b"kernel.bin", "octet", {"blksize": "1024"}), ("127.0.0.1", self.port))
        await first
        oack, tid = got["client"][0]
        self.assertEqual(P.parse_oack(oack), {"blksize": "1024"})
        [transfer] = self.server.sessions.values()

        answered = expect("stranger")
        ports["stranger"].write(P.encode_ack(0), tid)
        await answered
        self.assertEqual([(P.parse_error(d)[0], a) for d, a in got["stranger"]], [(5, tid)])

        content = self.files["kernel.bin"]
        block = 0
        while True:
            nxt = expect("client")
            ports["client"].write(P.encode_ack(block), tid)
            await nxt
            data, addr = got["client"][-1]
            self.assertEqual(addr, tid)
            block, payload = P.parse_data(data)
            self.assertEqual(payload, content[(block - 1) * 1024:block * 1024])
            if len(payload) < 1024:
                break
        ports["client"].write(P.encode_ack(block), tid)
        self.assertEqual(await transfer.done, "complete")
        self.assertEqual(self.server.sessions, {})

    # -- tftp-hpa (lock-step, blksize 512, no options)

    async def tftpHpa(self, mode: str, command: str, remote: str, local: str, port: int | None = None) -> bytes:
        output, _ = await self.runClient(client("tftp"), ["-m", mode, "127.0.0.1", str(port or self.port),
                                                    "-c", command, remote, local])
        return output

    async def test_tftp_hpa_octet(self) -> None:
        for name in ("kernel.bin", "exact.bin", "empty", "alias"):
            local = self.outFile(name)
            await self.tftpHpa("octet", "get", name, local.path)
            expected = self.files["kernel.bin" if name == "alias" else name]
            self.assertEqual(local.getContent(), expected, name)
        self.assertEqual(self.server.sessions, {})

    async def test_tftp_hpa_netascii(self) -> None:
        """tftp-hpa converts netascii back to local text, so the download equals the file."""
        local = self.outFile("cfg")
        await self.tftpHpa("netascii", "get", "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", local.path)
        self.assertEqual(local.getContent(), TEXT)

    async def test_tftp_hpa_write_refused(self) -> None:
        upload = self.out.child("up.txt")
        upload.setContent(b"upload")
        output = await self.tftpHpa("octet", "put", upload.path, "up.txt")
        self.assertIn(b"Error code 2", output)
        self.assertFalse(self.root.child("up.txt").exists())

    async def test_tftp_hpa_escapes_refused(self) -> None:
        secret = FilePath(self.root.dirname()).child("secret").path
        for i, (remote, code) in enumerate([("../secret", 2), ("pxelinux.cfg/../../secret", 2),
                                            (secret, 1), ("escape", 2), ("updir/secret", 2)]):
            local = self.outFile(f"escape{i}")
            output = await self.tftpHpa("octet", "get", remote, local.path)
            self.assertIn(b"Error code %d" % code, output, remote)
            self.assertNotLeaked(local)

    async def test_tftp_hpa_lost_data(self) -> None:
        """The 3rd DATA is dropped once: our retransmission timer recovers, bytes are identical."""
        relay = LossyRelay(self.port, {3})
        self.addCleanup(relay.stop)
        local = self.outFile("lossy")
        await self.tftpHpa("octet", "get", "kernel.bin", local.path, port=relay.port)
        self.assertEqual(relay.dropped, [3])
        self.assertGreaterEqual(relay.dataSeen[3], 2)
        self.assertEqual(local.getContent(), self.files["kernel.bin"])

    # -- curl (tftp://, blksize option)

    async def curl(self, url: str, local: FilePath[str], *extra: str, port: int | None = None) -> tuple[bytes, int]:
        return await self.runClient(client("curl"), ["-sS", "--max-time", "30", *extra,
                                               f"tftp://127.0.0.1:{port or self.port}/{url}", "-o", local.path])

    async def test_curl_octet_and_blksize(self) -> None:
        for blksize in (None, "8", "1428", "8192", "65464"):
            local = self.outFile(f"curl-{blksize}")
            extra = ["--tftp-blksize", blksize] if blksize else []
            output, code = await self.curl("kernel.bin", local, *extra)
            self.assertEqual(code, 0, output)
            self.assertEqual(local.getContent(), self.files["kernel.bin"], blksize)

    async def test_curl_netascii(self) -> None:
        """curl asks for netascii but keeps the wire form: the download is the converted text."""
        local = self.outFile("curl-cfg")
        output, code = await self.curl("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff;mode=netascii", local)
        self.assertEqual(code, 0, output)
        self.assertEqual(local.getContent(), to_netascii(TEXT))

    async def test_curl_escapes_refused(self) -> None:
        cases = [("escape", 69), ("updir/secret", 69), ("%2e%2e/secret", 69), ("/" + self.root.dirname().lstrip("/") + "/secret", 68)]
        for i, (url, code) in enumerate(cases):
            local = self.outFile(f"curl-escape{i}")
            output, rc = await self.curl(url, local, "--path-as-is")
            self.assertEqual(rc, code, (url, output))
            self.assertNotLeaked(local)

    async def test_curl_lost_data(self) -> None:
        relay = LossyRelay(self.port, {3})
        self.addCleanup(relay.stop)
        local = self.outFile("curl-lossy")
        # curl asks for its retry interval as the timeout option (6 s by default): keep it short.
        output, code = await self.curl("kernel.bin", local, "--tftp-blksize", "1428", "--connect-timeout", "3",
                                       port=relay.port)
        self.assertEqual(code, 0, output)
        self.assertEqual(relay.dropped, [3])
        self.assertEqual(local.getContent(), self.files["kernel.bin"])

    # -- atftp (every option, windowsize)

    async def atftp(self, remote: str, local: FilePath[str], *options: str, port: int | None = None) -> tuple[bytes, int]:
        args = ["--trace", "--tftp-timeout", "2", "-g", "-r", remote, "-l", local.path]
        for option in options:
            args += ["--option", option]
        return await self.runClient(client("atftp"), args + ["127.0.0.1", str(port or self.port)])

    async def test_atftp_options(self) -> None:
        """Each option is negotiated (the OACK atftp traces lists it) and the bytes are identical."""
        size = len(self.files["kernel.bin"])
        cases = [
            (["blksize 1428"], b"blksize: 1428"),
            (["blksize 65464"], b"blksize: 65464"),
            (["tsize enable"], b"tsize: %d" % size),
            (["timeout 3"], b"timeout: 3"),
            (["windowsize 16"], b"windowsize: 16"),
            (["windowsize 16", "blksize 1428", "tsize enable", "timeout 2"], b"windowsize: 16"),
        ]
        for i, (options, expected) in enumerate(cases):
            local = self.outFile(f"atftp{i}")
            output, code = await self.atftp("kernel.bin", local, *options)
            self.assertEqual(code, 0, output)
            oack = [line for line in output.splitlines() if b"received OACK" in line]
            self.assertEqual(len(oack), 1, output[-500:])
            self.assertIn(expected, oack[0])
            self.assertEqual(local.getContent(), self.files["kernel.bin"], options)

    async def test_atftp_windowed_exact_and_empty(self) -> None:
        # blksize 8 makes the OACK longer than one segment of a segmented (GSO) window send.
        for name, blksize in (("exact.bin", "512"), ("empty", "512"), ("exact.bin", "8")):
            local = self.outFile(f"atftp-{name}-{blksize}")
            output, code = await self.atftp(name, local, "windowsize 8", f"blksize {blksize}")
            self.assertEqual(code, 0, output)
            self.assertIn(b"received OACK <windowsize: 8, blksize: %s," % blksize.encode(), output)
            self.assertEqual(local.getContent(), self.files[name])

    async def test_atftp_windowed_lost_data(self) -> None:
        """Lost blocks inside a window: the client acknowledges short and we resume after it."""
        relay = LossyRelay(self.port, {3, 40})
        self.addCleanup(relay.stop)
        local = self.outFile("atftp-lossy")
        output, code = await self.atftp("kernel.bin", local, "windowsize 16", "blksize 1428", port=relay.port)
        self.assertEqual(code, 0, output)
        self.assertEqual(sorted(relay.dropped), [3, 40])
        self.assertEqual(local.getContent(), self.files["kernel.bin"])

    async def test_atftp_escapes_refused(self) -> None:
        for i, remote in enumerate(["../secret", "escape", "updir/secret", "pxelinux.cfg/../../secret"]):
            local = self.outFile(f"atftp-escape{i}")
            output, code = await self.atftp(remote, local)
            self.assertNotEqual(code, 0)
            self.assertIn(b"access violation", output)
            self.assertNotLeaked(local)
