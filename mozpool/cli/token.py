"""``mozpool-token create NAME --role R | list | revoke NAME``: API tokens in the database."""

from __future__ import annotations

import argparse
from typing import Any

from mozpool.cli import run_command
from mozpool.config import load_config
from mozpool.db import schema, tokens
from mozpool.db.pool import Database
from mozpool.timeutil import dbnow


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mozpool-token",
        description="Create, list and revoke the bearer tokens of the MozPool API. Only a hash of "
        "each token is stored: the token is printed once, when it is created.",
    )
    p.add_argument("--config", "-c", help="INI configuration file (default: $MOZPOOL_CONFIG)")
    p.add_argument("--db", help="database URL (overrides the configuration)")
    sub = p.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="make a token; prints it alone on the last line")
    create.add_argument("name", help="who or what uses it (shown in audit log lines)")
    create.add_argument("--role", required=True, choices=tokens.ROLES,
                        help="reader: reads; user: requests of its own; operator: everything but "
                             "tokens; admin: everything")
    sub.add_parser("list", help="every token: name, role, created, revoked")
    revoke = sub.add_parser("revoke", help="revoke a token by name (effective within seconds)")
    revoke.add_argument("name")
    return p


async def run(reactor: Any, args: argparse.Namespace) -> int:
    config = load_config(args.config, {"db_url": args.db})
    db = Database.fromURL(config.db_url, reactor)
    try:
        await schema.require_current(db)
        now = dbnow(reactor)
        if args.action == "create":
            token = await db.runInteraction(tokens.create, args.name, args.role, now)
            print(f"created token {args.name!r} with role {args.role}; it is shown only now:")
            print(token)
        elif args.action == "list":
            rows = await db.runInteraction(tokens.list_tokens)
            width = max([len(t.name) for t in rows] + [4])
            print(f"{'NAME':<{width}}  {'ROLE':<8}  {'CREATED':<19}  REVOKED")
            for t in rows:
                print(f"{t.name:<{width}}  {t.role:<8}  {t.created:<19}  {t.revoked or '-'}")
        elif args.action == "revoke":
            await db.runInteraction(tokens.revoke, args.name, now)
            print(f"revoked token {args.name!r}")
    finally:
        db.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    run_command("mozpool-token", lambda reactor: run(reactor, args))


if __name__ == "__main__":
    main()
