"""``relay powercycle|status|turnon|turnoff HOST[:PORT] BANK RELAY``: drive one relay by hand.

Spec: ``spec/bmm-protocols.md`` 1.7.  Runs the daemon's own client (one operation, 60 s
deadline).  It cannot share the daemon's board lock, so while the daemon talks to the board
the board refuses this command and it prints ``FAILED``.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from mozpool.bmm.relay import (
    RelayClient,
    RelayConfigError,
    RelayInfo,
    RelayResult,
    RelayTiming,
    check_bank_relay,
    parse_board_address,
)

USAGE = "Usage: relay [powercycle|status|turnon|turnoff] <hostname> <bank> <relay>"
COMMANDS = ("powercycle", "status", "turnon", "turnoff")
DEADLINE = 60.0


class UsageError(Exception):
    """Bad command line; the optional message is the one-line reason printed after the usage."""


def parse_args(argv: Sequence[str]) -> tuple[str, RelayInfo]:
    if len(argv) != 4 or argv[0] not in COMMANDS:
        raise UsageError()
    command, board_text, bank_text, relay_text = argv
    try:
        bank, relay = int(bank_text), int(relay_text)
    except ValueError:
        raise UsageError(f"bank and relay must be integers, got {bank_text!r} {relay_text!r}")
    try:
        check_bank_relay(bank, relay)
        board = parse_board_address(board_text)
    except RelayConfigError as e:
        raise UsageError(str(e))
    return command, RelayInfo(board, bank, relay)


async def run(reactor: object, command: str, info: RelayInfo, timing: RelayTiming) -> None:
    """One operation; failure ends in ``SystemExit(1)`` so ``react`` exits 1."""
    client = RelayClient(reactor, timing)  # type: ignore[arg-type]
    result: RelayResult
    if command == "powercycle":
        result = await client.power_cycle(info)
    elif command == "turnon":
        result = await client.power_on(info)
    elif command == "turnoff":
        result = await client.power_off(info)
    else:
        result = await client.get_status(info)
    if not result.ok:
        print("FAILED")
        print(result.reason, file=sys.stderr)
        raise SystemExit(1)
    if command == "status":
        print(f"bank {info.bank}, relay {info.relay} status: {'on' if result.status else 'off'}")
    else:
        print("OK")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point; exits 0 (OK), 1 (FAILED) or 2 (usage)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        command, info = parse_args(args)
    except UsageError as e:
        print(USAGE)
        if e.args:
            print(e.args[0])
        sys.exit(2)
    timing = RelayTiming.uniform(DEADLINE)

    def go(reactor: object) -> Deferred[None]:
        return Deferred.fromCoroutine(run(reactor, command, info, timing))

    react(go)


if __name__ == "__main__":
    main()
