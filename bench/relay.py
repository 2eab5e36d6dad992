"""Benchmark: power-cycle many devices spread over simulated ProXR boards, in one process.

    PYTHONPATH=. python bench/relay.py                 # 320 devices, 10 boards, real pauses
    PYTHONPATH=. python bench/relay.py --scale 0.1     # same shape, pauses x0.1 (quick check)

A board handles one power-cycle per (cycle pause + recovery pause), so the hardware bound is
devices-per-board x that slot; the client should come within 1.15x of it.  The power-cycle
deadline is raised for the run (the daemon's 30 s would fail the tail of a 32-deep queue,
which is the state machine's business, not the client's throughput); the report says how many
cycles finished later than the daemon's deadline would allow.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react

from mozpool.bmm.relay import RelayClient, RelayTiming
from mozpool.fakes.relayboard import DEFAULT_RECOVERY_PAUSE, start_boards, stop_boards

DAEMON_DEADLINE = RelayTiming().power_cycle_deadline


async def bench(reactor: Any, options: argparse.Namespace) -> None:
    scale = options.scale
    timing = RelayTiming(
        power_cycle_deadline=options.deadline,
        cycle_pause=1.0 * scale,
        recovery_pause=1.0 * scale,
    )
    boards = start_boards(reactor, options.boards, recovery_pause=DEFAULT_RECOVERY_PAUSE * scale,
                          record_actions=True)
    client = RelayClient(reactor, timing)
    per_board = math.ceil(options.devices / options.boards)
    infos = []
    for i in range(options.devices):  # round-robin so every board gets its share
        board, slot = boards[i % options.boards], i // options.boards
        infos.append((board, slot // 8 % 4 + 1, slot % 8 + 1))

    finished: list[float] = []
    start = time.monotonic()

    def done(result: Any) -> Any:
        finished.append(time.monotonic() - start)
        return result

    results = await gatherResults(
        [client.power_cycle(b.relay_info(bank, relay)).addCallback(done) for b, bank, relay in infos]
    )
    total = time.monotonic() - start
    await client.drained()
    await stop_boards(boards)

    failures = [r.reason for r in results if not r.ok]
    slot = timing.cycle_pause + timing.recovery_pause
    bound = per_board * slot
    late = sum(1 for t in finished if t > DAEMON_DEADLINE * scale)
    cycles_seen = sum(len(b.actions or []) for b in boards) // 4
    print(f"devices {options.devices} on {options.boards} boards ({per_board} per board), "
          f"pause scale {scale}")
    print(f"cycle pause {timing.cycle_pause:.3f}s + recovery pause {timing.recovery_pause:.3f}s "
          f"= {slot:.3f}s per power-cycle per board")
    print(f"total time        {total:8.2f} s")
    print(f"hardware bound    {bound:8.2f} s   ({per_board} x {slot:.3f} s)")
    print(f"ratio             {total / bound:8.3f}   (target <= 1.15)")
    print(f"failures          {len(failures):8d}   {failures[:3] if failures else ''}")
    print(f"board cycles seen {cycles_seen:8d}")
    print(f"max concurrent connections on any board: {max(b.max_open_connections for b in boards)}")
    print(f"first/median/last completion: {min(finished):.2f} / "
          f"{sorted(finished)[len(finished) // 2]:.2f} / {max(finished):.2f} s; "
          f"{late} finished after the daemon's {DAEMON_DEADLINE * scale:.1f} s deadline")
    if failures or total / bound > 1.15:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=320)
    parser.add_argument("--boards", type=int, default=10)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every pause (client and board) by this factor")
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="power-cycle deadline for the run, seconds")
    options = parser.parse_args(argv)
    react(lambda reactor: Deferred.fromCoroutine(bench(reactor, options)))


if __name__ == "__main__":
    main(sys.argv[1:])
