"""``mozpool-db create-schema | upgrade | load-fixture --devices N | version``"""

from __future__ import annotations

import argparse
from typing import Any

from mozpool.cli import run_command
from mozpool.config import load_config
from mozpool.db import fixtures, schema
from mozpool.db.pool import Database
from mozpool.timeutil import dbnow


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mozpool-db", description="Create, upgrade and seed the MozPool database.")
    p.add_argument("--config", "-c", help="INI configuration file (default: $MOZPOOL_CONFIG)")
    p.add_argument("--db", help="database URL (overrides the configuration)")
    p.add_argument("--fqdn", help="imaging server that owns fixture devices (default: this server)")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("create-schema", help="create the schema in an empty database")
    sub.add_parser("upgrade", help="apply every missing upgrade step (creates the schema if none)")
    sub.add_parser("version", help="print the schema version")
    fx = sub.add_parser("load-fixture", help="seed images, PXE configs and N simulated pandas")
    fx.add_argument("--devices", type=int, default=20, help="number of devices (default 20)")
    fx.add_argument("--prefix", default="panda", help="device name prefix (default panda)")
    return p


async def run(reactor: Any, args: argparse.Namespace) -> int:
    config = load_config(args.config, {"db_url": args.db, "fqdn": args.fqdn})
    db = Database.fromURL(config.db_url, reactor)
    try:
        if args.action == "create-schema":
            print(f"created schema version {await schema.create_schema(db)}")
        elif args.action == "upgrade":
            print(f"schema is at version {await schema.upgrade(db)}")
        elif args.action == "version":
            print(await schema.current_version(db))
        elif args.action == "load-fixture":
            await schema.require_current(db)
            n = await fixtures.load_fixture(db, config.server_fqdn, args.devices, dbnow(reactor), prefix=args.prefix)
            print(f"loaded {n} devices owned by {config.server_fqdn}")
    finally:
        db.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    run_command("mozpool-db", lambda reactor: run(reactor, args))


if __name__ == "__main__":
    main()
