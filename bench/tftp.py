#!/usr/bin/env python3
"""Benchmark our TFTP server against tftpd-hpa and atftpd on loopback (spec bmm-protocols.md 5.7).

    python bench/tftp.py [--repeat N] [--quick] [--profile FILE]

One run serves the same directory from three servers, each on its own free port:

- ours: this script re-run as `python bench/tftp.py --serve DIR PORT` (a separate process, one reactor)
- tftpd-hpa: `in.tftpd -L -s DIR -a 127.0.0.1:PORT` (Debian package tftpd-hpa)
- atftpd: `atftpd --daemon --no-fork --port PORT --bind-address 127.0.0.1 DIR` (Debian package
  atftpd, which conflicts with tftpd-hpa; unpack it beside it with
  `cd /opt/atftpd && apt-get download atftpd && dpkg-deb -x atftpd_*.deb root`, found there, on
  $PATH, or given with --atftpd / $ATFTPD)

and measures, with real clients, every download checked by SHA-256:

1. one 64 MiB file lock-step at blksize 1428 (curl --tftp-blksize 1428), reference tftpd-hpa,
   target (issue 17) >= 1.0x;
2. the same with windowsize 16 (atftp --option "windowsize 16"), reference atftpd, target >= 1.0x;
3. 32 concurrent 16 MiB downloads (curl, blksize 1428), reference tftpd-hpa, target >= 1.2x;
4. a PXE boot storm: 200 devices each fetching its PXE config and then a 30 MiB image,
   reference tftpd-hpa, target >= 1.2x;
5. first-packet latency (RRQ to DATA 1 of a 4 KiB file) and "file not found" latency, scripted client.

Each cell runs --repeat rounds (default 5) with the servers taking turns, and keeps each server's
best run (the median is printed too): loopback lock-step timing swings by 2x with whatever else the
machine is doing. TFTP_BENCH_LOG=1 makes our server log to stderr.

This is a developer tool, not a test: it uses blocking sockets and subprocess freely.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MiB = 1024 * 1024


# -- serving our server (the child process) ------------------------------------------------------


def serve(root: str, port: int, profile: str | None, workers: int, busy_poll_us: int | None) -> None:
    """Run our server as the daemon does (PXE configs from memory, `workers` worker processes)
    until SIGTERM/SIGINT. With --profile, the main process is profiled into FILE and each worker
    into FILE.<slot>."""
    sys.path.insert(0, REPO)
    from twisted.internet import reactor

    from mozpool.bmm.pxe import PXEConfigBackend, PXEConfigs
    from mozpool.bmm.tftp import make_tftp_service
    from mozpool.bmm.tftp.backend import FilesystemBackend

    if os.environ.get("TFTP_BENCH_LOG"):
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    if profile:
        os.environ["MOZPOOL_TFTP_WORKER_PROFILE"] = profile
    # The configs the other servers read from pxelinux.cfg/ are loaded into the table and served
    # from memory, as the daemon serves them; 256 transfers at once for the 200-device storm.
    configs = PXEConfigs(root, files=True)
    busy_poll = None if busy_poll_us is None else busy_poll_us / 1e6
    service = make_tftp_service(root, port, "127.0.0.1", reactor, workers=workers, max_transfers=256, busy_poll=busy_poll,
                                backend=PXEConfigBackend(configs, FilesystemBackend(root)))
    service.startService()
    udp = service if not workers else [s for s in service if s.name != "tftp-workers"][0]
    print(udp._port.getHost().port, flush=True)

    # SIGTERM stops the reactor, which stops the service first; the reactor's own signal handling
    # also reaps the workers (SIGCHLD), without which stopService would wait for them forever.
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    if profile:
        import cProfile

        cProfile.runctx("reactor.run()", globals(), locals(), profile)
    else:
        reactor.run()


# -- helpers ---------------------------------------------------------------------------------------


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process, its reaped children (tftpd-hpa forks one per transfer) and its
    live children (our workers)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    return ticks / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(c) for c in children)


def machine_busy_seconds() -> float:
    """CPU seconds spent non-idle on all cores (server, clients and kernel together)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    windowsize: bool  # whether the server negotiates RFC 7440

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_ours(root: str, profile: str | None, workers: int, busy_poll_us: int | None) -> Server:
    args = [sys.executable, os.path.abspath(__file__), "--serve", root, "0", "--workers", str(workers)]
    if busy_poll_us is not None:
        args += ["--busy-poll-us", str(busy_poll_us)]
    if profile:
        args += ["--profile", profile]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    time.sleep(1.0 if workers else 0.1)  # the workers' interpreters start
    return Server("ours", port, proc, True)


def start_tftpd_hpa(root: str) -> Server | None:
    binary = shutil.which("in.tftpd") or ("/usr/sbin/in.tftpd" if os.path.exists("/usr/sbin/in.tftpd") else None)
    if not binary:
        print("in.tftpd not found (apt-get install tftpd-hpa): skipping tftpd-hpa", file=sys.stderr)
        return None
    port = free_udp_port()
    proc = subprocess.Popen([binary, "-L", "-s", root, "-a", f"127.0.0.1:{port}"])
    time.sleep(0.3)
    return Server("tftpd-hpa", port, proc, False)


def find_atftpd(explicit: str | None) -> str | None:
    for candidate in (explicit, os.environ.get("ATFTPD"), shutil.which("atftpd"), "/usr/sbin/atftpd",
                      "/opt/atftpd/root/usr/sbin/atftpd"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def start_atftpd(root: str, explicit: str | None) -> Server | None:
    binary = find_atftpd(explicit)
    if not binary:
        print("atftpd not found: skipping atftpd", file=sys.stderr)
        return None
    port = free_udp_port()
    proc = subprocess.Popen(
        [binary, "--daemon", "--no-fork", "--port", str(port), "--bind-address", "127.0.0.1",
         "--logfile", "/dev/null", "--maxthread", "128", root],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    return Server("atftpd", port, proc, True)


# -- clients ---------------------------------------------------------------------------------------


def curl_args(port: int, name: str, out: str, blksize: int) -> list[str]:
    return ["curl", "-s", "-S", "--max-time", "300", "--tftp-blksize", str(blksize),
            f"tftp://127.0.0.1:{port}/{name}", "-o", out]


def atftp_args(port: int, name: str, out: str, blksize: int, windowsize: int) -> list[str]:
    return ["atftp", "-g", "-r", name, "-l", out, "--option", f"blksize {blksize}",
            "--option", f"windowsize {windowsize}", "--tftp-timeout", "2", "127.0.0.1", str(port)]


@dataclass
class Result:
    test: str
    server: str
    seconds: float
    mbytes: float
    cpu: float
    machine: float
    ok: bool
    note: str = ""
    median: float = float("nan")

    @property
    def rate(self) -> float:
        return self.mbytes / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Bench:
    root: str
    out: str
    digests: dict[str, str]
    repeat: int
    results: list[Result] = field(default_factory=list)

    def once(self, test: str, server: Server, commands: list[list[str]], files: list[tuple[str, str]]) -> Result:
        """Run the client commands at once and check every download by SHA-256."""
        for _, out in files:
            if os.path.exists(out):
                os.unlink(out)
        cpu0 = cpu_seconds(server.proc.pid)
        busy0 = machine_busy_seconds()
        t0 = time.perf_counter()
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
        errors = [p.communicate()[1] for p in procs]
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(server.proc.pid) - cpu0
        machine = machine_busy_seconds() - busy0
        if server.name == "tftpd-hpa":
            cpu = float("nan")  # its per-transfer children are not reaped in time to count
        ok = all(p.returncode == 0 for p in procs) and all(
            os.path.exists(out) and sha256(out) == self.digests[name] for name, out in files
        )
        note = "" if ok else (b" ".join(e.strip() for e in errors if e).decode(errors="replace")[:80] or "bad sha256")
        mbytes = sum(os.path.getsize(os.path.join(self.root, name)) for name, _ in files) / 1e6
        return Result(test, server.name, elapsed, mbytes, cpu, machine, ok, note)

    def cell(self, test: str, jobs: list[tuple[Server, list[list[str]], list[tuple[str, str]]]],
             repeat: int | None = None) -> dict[str, Result]:
        """`repeat` rounds, servers taking turns within each round so background load hits all
        alike; the best run of each server is kept (any failed run marks the cell failed)."""
        runs: dict[str, list[Result]] = {server.name: [] for server, _, _ in jobs}
        for _ in range(repeat or self.repeat):
            for server, commands, files in jobs:
                runs[server.name].append(self.once(test, server, commands, files))
        best = {}
        for name, results in runs.items():
            good = [r for r in results if r.ok]
            b = min(good, key=lambda r: r.seconds) if len(good) == len(results) else next(r for r in results if not r.ok)
            b.median = statistics.median(r.seconds for r in results)
            best[name] = b
            self.results.append(b)
            print(f"  {test:<34} {name:<10} best {b.seconds:6.2f} s {b.rate:7.1f} MB/s median {b.median:6.2f} s"
                  f" cpu {b.cpu:5.2f} s machine {b.machine:5.2f} s {'ok' if b.ok else 'FAILED ' + b.note}", flush=True)
        return best


def first_packet_latency(port: int, name: bytes, count: int = 50) -> tuple[float, bool]:
    """Median seconds from RRQ to the first answer, with our codec in a blocking client."""
    sys.path.insert(0, REPO)
    from mozpool.bmm.tftp.packets import encode_ack, encode_error, encode_request, opcode_of

    times = []
    answered_ok = True
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        t0 = time.perf_counter()
        s.sendto(encode_request(name, "octet", {"blksize": "1468"}), ("127.0.0.1", port))
        try:
            data, addr = s.recvfrom(70000)
        except socket.timeout:
            answered_ok = False
            s.close()
            continue
        times.append(time.perf_counter() - t0)
        if opcode_of(data) == 6:  # OACK: end politely so the server frees the transfer
            s.sendto(encode_error(8, "bench"), addr)
        elif opcode_of(data) == 3:
            s.sendto(encode_ack(1), addr)
        s.close()
    return (statistics.median(times) if times else float("nan")), answered_ok


# -- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", nargs=2, metavar=("DIR", "PORT"), help="internal: run our server")
    parser.add_argument("--profile", help="cProfile our server into this file (workers: FILE.<slot>)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="our worker processes (default: one per CPU; 0: the daemon's process only)")
    parser.add_argument("--busy-poll-us", type=int,
                        help="our workers' busy poll in microseconds (default: the daemon's; 0: off)")
    parser.add_argument("--devices", type=int, default=200, help="devices in the PXE boot storm")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per cell; each server's best is kept")
    parser.add_argument("--quick", action="store_true", help="smaller files (8/4 MiB) for a smoke run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--storm-repeat", type=int, default=2, help="rounds of the (long) PXE boot storm cell")
    parser.add_argument("--atftpd", help="path of the atftpd binary")
    parser.add_argument("--only", help="comma-separated servers to run (ours,tftpd-hpa,atftpd)")
    parser.add_argument("--tests", default="lockstep,window,concurrent,storm,latency",
                        help="comma-separated subset of lockstep,window,concurrent,storm,latency")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.profile, args.workers, args.busy_poll_us)
        return 0

    for tool in ("curl", "atftp"):
        if not shutil.which(tool):
            print(f"{tool} is required (apt-get install -y curl atftp)", file=sys.stderr)
            return 2

    big_size, conc_size, image_size = (8 * MiB, 4 * MiB, 2 * MiB) if args.quick else (64 * MiB, 16 * MiB, 30 * MiB)
    work = tempfile.mkdtemp(prefix="tftp-bench-")
    root = os.path.join(work, "root")
    out = os.path.join(work, "out")
    os.makedirs(root)
    os.makedirs(out)
    os.chmod(work, 0o755)
    os.chmod(root, 0o755)  # atftpd and tftpd-hpa drop privileges to nobody/tftp
    digests: dict[str, str] = {}
    macs = ["02-00-00-00-%02x-%02x" % (i >> 8, i & 0xFF) for i in range(args.devices)]
    os.makedirs(os.path.join(root, "pxelinux.cfg"))
    os.chmod(os.path.join(root, "pxelinux.cfg"), 0o755)
    for mac in macs:
        name = f"pxelinux.cfg/01-{mac}"
        with open(os.path.join(root, name), "w") as f:
            f.write(f"default live\nlabel live\n  kernel image.bin\n  append mac={mac} "
                    "mobile-imaging-url=http://10.0.0.1/scripts/android-second-stage.sh\n")
        os.chmod(os.path.join(root, name), 0o644)
        digests[name] = sha256(os.path.join(root, name))
    for name, size in (("big.bin", big_size), ("conc.bin", conc_size), ("image.bin", image_size), ("pxe.cfg", 4096)):
        path = os.path.join(root, name)
        with open(path, "wb") as f:
            remaining = size
            while remaining:
                chunk = os.urandom(min(remaining, 4 * MiB))
                f.write(chunk)
                remaining -= len(chunk)
        os.chmod(path, 0o644)
        digests[name] = sha256(path)

    servers: list[Server] = []
    wanted = set(args.only.split(",")) if args.only else {"ours", "tftpd-hpa", "atftpd"}
    try:
        if "ours" in wanted:
            servers.append(start_ours(root, args.profile, args.workers, args.busy_poll_us))
        for start in (lambda: start_tftpd_hpa(root), lambda: start_atftpd(root, args.atftpd)):
            s = start()
            if s is not None and s.name in wanted:
                servers.append(s)
            elif s is not None:
                s.stop()
        bench = Bench(root, out, digests, args.repeat)
        n = args.concurrency
        big_mib, conc_mib = big_size // MiB, conc_size // MiB
        t1 = f"{big_mib} MiB lock-step blksize 1428"
        t2 = f"{big_mib} MiB windowsize 16 blksize 1428"
        t3 = f"{n} x {conc_mib} MiB concurrent"
        t4 = f"{len(macs)} devices: PXE config + {image_size // MiB} MiB"
        print(f"files in {root}; servers: " + ", ".join(f"{s.name}:{s.port}" for s in servers))
        tests = set(args.tests.split(","))
        if "lockstep" in tests:
            bench.cell(t1, [(s, [curl_args(s.port, "big.bin", os.path.join(out, f"{s.name}-big"), 1428)],
                             [("big.bin", os.path.join(out, f"{s.name}-big"))]) for s in servers])
        if "window" in tests:
            cells = bench.cell(t2, [(s, [atftp_args(s.port, "big.bin", os.path.join(out, f"{s.name}-win"), 1428, 16)],
                                     [("big.bin", os.path.join(out, f"{s.name}-win"))]) for s in servers])
            for s in servers:
                if not s.windowsize:
                    cells[s.name].note = "no RFC 7440: lock-step"
        if "concurrent" in tests:
            jobs = []
            for s in servers:
                outs = [os.path.join(out, f"{s.name}-c{i}") for i in range(n)]
                jobs.append((s, [curl_args(s.port, "conc.bin", o, 1428) for o in outs], [("conc.bin", o) for o in outs]))
            bench.cell(t3, jobs)
        if "storm" in tests:
            jobs = []
            for s in servers:
                commands, files = [], []
                for i, mac in enumerate(macs):
                    cfg, img = os.path.join(out, f"{s.name}-cfg{i}"), os.path.join(out, f"{s.name}-img{i}")
                    cfg_cmd = " ".join(curl_args(s.port, f"pxelinux.cfg/01-{mac}", cfg, 1428))
                    img_cmd = " ".join(curl_args(s.port, "image.bin", img, 1428))
                    commands.append(["sh", "-c", f"{cfg_cmd} && {img_cmd}"])
                    files += [(f"pxelinux.cfg/01-{mac}", cfg), ("image.bin", img)]
                jobs.append((s, commands, files))
            bench.cell(t4, jobs, repeat=args.storm_repeat)
        latencies = {}
        for s in servers if "latency" in tests else []:
            latencies[s.name] = (first_packet_latency(s.port, b"pxe.cfg"), first_packet_latency(s.port, b"missing.cfg"))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    references = {t1: ("tftpd-hpa", 1.0), t2: ("atftpd", 1.0), t3: ("tftpd-hpa", 1.2), t4: ("tftpd-hpa", 1.2)}
    print()
    print("| test | server | best s | median s | MB/s (best) | server CPU s | machine CPU s | ratio | target | sha256 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    by_key = {(r.test, r.server): r for r in bench.results}
    for r in bench.results:
        ref_name, target = references[r.test]
        ref = by_key.get((r.test, ref_name))
        ratio = r.rate / ref.rate if ref and ref.rate else float("nan")
        mark = ""
        if r.server == "ours" and ref:
            mark = f">= {target}x {'met' if ratio >= target else 'MISSED'}"
        elif r.server == ref_name:
            mark = "reference"
        print(f"| {r.test} | {r.server} | {r.seconds:.2f} | {r.median:.2f} | {r.rate:.1f} | {r.cpu:.2f} | {r.machine:.2f} | {ratio:.2f} | {mark} |"
              f" {'ok' if r.ok else 'FAILED'} {r.note} |")
    print()
    print("| server | first packet (4 KiB, OACK) ms | file not found ms |")
    print("| --- | ---: | ---: |")
    for name, ((hit, ok1), (miss, ok2)) in latencies.items():
        print(f"| {name} | {hit * 1000:.2f}{'' if ok1 else ' (lost answers)'} | {miss * 1000:.2f}{'' if ok2 else ' (lost answers)'} |")
    return 0 if all(r.ok for r in bench.results) else 1


if __name__ == "__main__":
    sys.exit(main())
