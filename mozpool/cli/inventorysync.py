"""``mozpool-inventorysync [--config F] [--db URL] [--verbose] [--ship-it] [--dry-run]``: one
inventory sync run against the configured database (spec bmm-protocols 7.7).

Exit 0 when the run completed, 1 when it stopped (the reason on stderr), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from mozpool.cli import run_command
from mozpool.config import load_config
from mozpool.db import schema
from mozpool.db.pool import Database
from mozpool.inventory.model import SyncAborted
from mozpool.inventory.sync import Sync, make_source, new_holder

PROG = "mozpool-inventorysync"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Bring the database's devices and relay boards in line with the inventory "
        "configured in [inventory] (Mozilla's inventory, NetBox or a file).",
    )
    p.add_argument("--config", "-c", help="INI configuration file (default: $MOZPOOL_CONFIG)")
    p.add_argument("--db", help="database URL (overrides the configuration)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print each system (downloaded or SKIPPED, with the reason) and each change")
    p.add_argument("--ship-it", action="store_true",
                   help="make the changes even when there are many, or the inventory lists no device; "
                        "for a person who has looked, never for a scheduled job")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="print the changes a run would make, and make none")
    return p


async def run(reactor: Any, args: argparse.Namespace) -> int:
    config = load_config(args.config, {"db_url": args.db})
    settings = config.inventory
    if not settings.configured:
        print(f"{PROG}: no inventory is configured: set [inventory] url (Mozilla's inventory or NetBox) "
              "or path (a file)", file=sys.stderr)
        return 1
    shown = {"system", "note", "change", "summary"} if args.verbose else {"change", "summary"} if args.dry_run else set()

    def report(kind: str, line: str) -> None:
        if kind in shown:
            print(line, flush=True)

    db = Database.fromURL(config.db_url, reactor)
    try:
        await schema.require_current(db)
        sync = Sync(
            db, make_source(settings, reactor), reactor, ignore_re=settings.ignore_devices_on_servers_re,
            ship_it=args.ship_it, dry_run=args.dry_run,
            holder=None if args.dry_run else new_holder(f"{PROG} on {socket.gethostname()}"), report=report,
        )
        try:
            await sync.run()
        except SyncAborted as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 1
    finally:
        db.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    run_command(PROG, lambda reactor: run(reactor, args))


if __name__ == "__main__":
    main()
