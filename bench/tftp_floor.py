#!/usr/bin/env python3
"""How fast can any Python TFTP server serve a boot storm on this machine? The floor, measured.

    python bench/tftp_floor.py [--repeat N] [--concurrency 32] [--mib 16]

Issue 17 asks for 32 concurrent 16 MiB lock-step downloads at >= 1.2x tftpd-hpa. On a 2-core
machine whose clients (curl) share the cores, that is a contest for CPU, so this script races
tftpd-hpa and our server (as bench/tftp.py runs it) against two servers that do the least a
Python server can do per block -- no reactor, no timers, no retransmission, no confinement:

- ``floor-plain``: every transfer on one shared data socket; one blocking ``recvfrom`` and one
  ``sendto`` per block, the file read with ``read()``;
- ``floor-mmsg``: the same, but ACKs taken in batches with ``recvmmsg`` and DATA sent in batches
  with ``sendmmsg`` (through ctypes), so the system calls per block drop below one.

If neither reaches the target, no Python server will: what remains is the kernel's work for each
packet and the clients' own CPU. Every download is checked by SHA-256 (bench/tftp.py's Bench).
These floor servers are toys (threads, blocking sockets, no error handling): never serve with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from typing import Any

import tftp as tb  # bench/tftp.py: its servers, clients and cells


def serve_floor(kind: str, root: str) -> None:
    """Run a floor server until killed; print its port first."""
    main = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    main.bind(("127.0.0.1", 0))
    data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    data.bind(("127.0.0.1", 0))
    data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    transfers: dict[Any, list[Any]] = {}
    print(main.getsockname()[1], flush=True)

    def accept() -> None:
        """RRQs on the main port: open the file, answer with an OACK from the shared data socket."""
        while True:
            request, peer = main.recvfrom(2048)
            parts = request[2:].split(b"\0")
            options = dict(zip(parts[2::2], parts[3::2]))
            blksize = int(options.get(b"blksize", 512))
            f = open(os.path.join(root, parts[0].decode()), "rb", buffering=0)
            oack = b"\0\6blksize\0" + str(blksize).encode() + b"\0"
            if b"tsize" in options:
                oack += b"tsize\0" + str(os.fstat(f.fileno()).st_size).encode() + b"\0"
            packet = bytearray(4 + blksize)
            key = peer if kind == "plain" else socket.inet_aton(peer[0]) + struct.pack("!H", peer[1])
            # file, blksize, last block sent, final block sent, packet buffer, its payload
            transfers[key] = [f, blksize, 0, False, packet, memoryview(packet)[4:]]
            data.sendto(oack, peer)

    threading.Thread(target=accept, daemon=True).start()
    if kind == "plain":
        serve_plain(data, transfers)
    else:
        serve_mmsg(data, transfers)


def serve_plain(data: socket.socket, transfers: dict[Any, list[Any]]) -> None:
    pack = struct.Struct("!HH").pack
    recvfrom, sendto = data.recvfrom, data.sendto
    while True:
        ack, peer = recvfrom(128)
        t = transfers.get(peer)
        if t is None or ((ack[2] << 8) | ack[3]) != t[2] & 0xFFFF:
            continue
        if t[3]:
            del transfers[peer]
            t[0].close()
            continue
        payload = t[0].read(t[1])
        t[2] += 1
        sendto(pack(3, t[2] & 0xFFFF) + payload, peer)
        t[3] = len(payload) < t[1]


def serve_mmsg(data: socket.socket, transfers: dict[Any, list[Any]]) -> None:
    import ctypes
    import ctypes.util
    from ctypes import POINTER, Structure, addressof, c_int, c_size_t, c_uint, c_uint32, c_void_p

    class iovec(Structure):
        _fields_ = [("iov_base", c_void_p), ("iov_len", c_size_t)]

    class msghdr(Structure):
        _fields_ = [("msg_name", c_void_p), ("msg_namelen", c_uint32), ("msg_iov", POINTER(iovec)),
                    ("msg_iovlen", c_size_t), ("msg_control", c_void_p), ("msg_controllen", c_size_t),
                    ("msg_flags", c_int)]

    class mmsghdr(Structure):
        _fields_ = [("msg_hdr", msghdr), ("msg_len", c_uint)]

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    n = 64
    ack_bytes = (ctypes.c_char * (n * 128))()
    names = (ctypes.c_char * (n * 16))()
    riov, rmsg = (iovec * n)(), (mmsghdr * n)()
    siov, smsg = (iovec * n)(), (mmsghdr * n)()
    for i in range(n):
        riov[i].iov_base, riov[i].iov_len = addressof(ack_bytes) + i * 128, 128
        rmsg[i].msg_hdr.msg_name, rmsg[i].msg_hdr.msg_namelen = addressof(names) + i * 16, 16
        rmsg[i].msg_hdr.msg_iov, rmsg[i].msg_hdr.msg_iovlen = ctypes.pointer(riov[i]), 1
        smsg[i].msg_hdr.msg_namelen = 16
        smsg[i].msg_hdr.msg_iov, smsg[i].msg_hdr.msg_iovlen = ctypes.pointer(siov[i]), 1
    name_view, ack_view = memoryview(names).cast("B"), memoryview(ack_bytes).cast("B")
    pinned: dict[int, Any] = {}  # id(packet) -> its ctypes view, so its address stays valid
    fd, wait_for_one, names_at = data.fileno(), 0x10000, addressof(names)
    pack_into = struct.Struct("!HH").pack_into
    while True:
        got = libc.recvmmsg(fd, rmsg, n, wait_for_one, None)
        out = 0
        for i in range(max(got, 0)):
            rmsg[i].msg_hdr.msg_namelen = 16
            key = bytes(name_view[i * 16 + 4:i * 16 + 8]) + bytes(name_view[i * 16 + 2:i * 16 + 4])
            t = transfers.get(key)
            if t is None or ((ack_view[i * 128 + 2] << 8) | ack_view[i * 128 + 3]) != t[2] & 0xFFFF:
                continue
            if t[3]:
                del transfers[key]
                pinned.pop(id(t[4]), None)
                t[0].close()
                continue
            size = t[0].readinto(t[5])
            t[2] += 1
            pack_into(t[4], 0, 3, t[2] & 0xFFFF)
            t[3] = size < t[1]
            view = pinned.get(id(t[4]))
            if view is None:
                view = pinned[id(t[4])] = (ctypes.c_char * len(t[4])).from_buffer(t[4])
            smsg[out].msg_hdr.msg_name = names_at + i * 16
            siov[out].iov_base, siov[out].iov_len = addressof(view), 4 + size
            out += 1
        if out:
            libc.sendmmsg(fd, smsg, out, 0)


def start_floor(kind: str, root: str) -> tb.Server:
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", kind, root], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return tb.Server(f"floor-{kind}", int(proc.stdout.readline()), proc, False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "DIR"), help="internal: run a floor server")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each server's best is kept")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--mib", type=int, default=16, help="size of each download")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="our server's workers")
    args = parser.parse_args()
    if args.serve:
        serve_floor(args.serve[0], args.serve[1])
        return 0
    work = tempfile.mkdtemp(prefix="tftp-floor-")
    root, out = os.path.join(work, "root"), os.path.join(work, "out")
    os.makedirs(root)
    os.makedirs(out)
    for d in (work, root):
        os.chmod(d, 0o755)  # tftpd-hpa drops privileges
    path = os.path.join(root, "conc.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(args.mib * tb.MiB))
    os.chmod(path, 0o644)
    servers: list[tb.Server] = []
    try:
        hpa = tb.start_tftpd_hpa(root)
        if hpa is None:
            return 2
        servers = [hpa, tb.start_ours(root, None, args.workers, None), start_floor("plain", root),
                   start_floor("mmsg", root)]
        bench = tb.Bench(root, out, {"conc.bin": tb.sha256(path)}, args.repeat)
        jobs = []
        for s in servers:
            outs = [os.path.join(out, f"{s.name}-{i}") for i in range(args.concurrency)]
            jobs.append((s, [tb.curl_args(s.port, "conc.bin", o, 1428) for o in outs], [("conc.bin", o) for o in outs]))
        best = bench.cell(f"{args.concurrency} x {args.mib} MiB concurrent", jobs)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    reference = best["tftpd-hpa"]
    print()
    print("| server | best s | median s | server CPU s | machine CPU s | ratio to tftpd-hpa | sha256 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, r in best.items():
        print(f"| {name} | {r.seconds:.2f} | {r.median:.2f} | {r.cpu:.2f} | {r.machine:.2f} |"
              f" {reference.seconds / r.seconds:.2f} | {'ok' if r.ok else 'FAILED ' + r.note} |")
    cores = os.cpu_count() or 1
    print(f"\nissue 17's target: >= 1.2x tftpd-hpa, i.e. done in {reference.seconds / 1.2:.2f} s: at most "
          f"{cores * reference.seconds / 1.2:.2f} CPU-seconds of work on this machine's {cores} cores, clients"
          " and kernel included (compare the machine CPU column)")
    return 0 if all(r.ok for r in best.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
