"""``pxe-config [--active|--inactive] [-m TEXT] [-c FILE] ACTION [NAME]`` against the database.

The database comes from ``--db`` or the configuration named by ``$MOZPOOL_CONFIG``.
``--config`` here is the file holding the PXE config's contents (``-`` for stdin), as in the
original tool.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mozpool.cli import run_command
from mozpool.config import load_config
from mozpool.db import catalog
from mozpool.db.errors import Conflict
from mozpool.db.pool import Database

ACTIONS = ("add", "list", "show", "modify", "delete")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pxe-config", description="Manage the PXE configs in the MozPool database.")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--active", action="store_true", default=None, help="mark active / list only active")
    state.add_argument("--inactive", action="store_true", default=None, help="mark inactive")
    p.add_argument("--description", "-m", help="description")
    p.add_argument("--config", "-c", help="file with the config contents, or - for stdin")
    p.add_argument("--db", help="database URL (default: from $MOZPOOL_CONFIG)")
    p.add_argument("action", help="|".join(ACTIONS))
    p.add_argument("name", nargs="?")
    return p


def block(cfg: dict[str, Any]) -> str:
    head = f"** Name: {cfg['name']}" + ("" if cfg["active"] else " (inactive)")
    return f"{head}\n** Description: {cfg['description']}\n** Contents:\n{cfg['contents'].strip()}"


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.action not in ACTIONS:
        p.error(f"unknown action {a.action!r} (choose from {', '.join(ACTIONS)})")
    if a.action == "list":
        if a.name is not None:
            p.error("name is not allowed with 'list'")
        return
    if a.name is None:
        p.error("name is required")
    if a.action == "show" and (a.description or a.config or a.active or a.inactive):
        p.error("show does not take any additional options")
    if a.action == "add" and not (a.description and a.config):
        p.error("add requires --description and --config")


def read_contents(source: str | None) -> str | None:
    if source is None:
        return None
    if source == "-":
        if sys.stdin.isatty():
            print("Enter config contents:")
        return sys.stdin.read()
    with open(source) as f:
        return f.read()


async def run(reactor: Any, a: argparse.Namespace) -> int:
    config = load_config(None, {"db_url": a.db})
    contents = read_contents(a.config)
    active = True if a.active else False if a.inactive else None
    db = Database.fromURL(config.db_url, reactor)
    try:
        if a.action == "list":
            for cfg in await catalog.list_pxe_configs(db, active_only=bool(a.active)):
                print(block(cfg))
            return 0
        if a.action == "add":
            try:
                await db.runInteraction(catalog.add_pxe_config, a.name, a.description, contents, active is not False)
            except Conflict:
                print(f"pxe-config: a PXE config named {a.name} already exists", file=sys.stderr)
                return 1
        elif a.action == "modify":
            if not await db.runInteraction(catalog.modify_pxe_config, a.name, a.description, contents, active):
                print(f"pxe-config: no PXE config named {a.name}", file=sys.stderr)
                return 1
        elif a.action == "delete":
            try:
                if not await db.runInteraction(catalog.delete_pxe_config, a.name):
                    print(f"pxe-config: no PXE config named {a.name}", file=sys.stderr)
                    return 1
            except Conflict as e:
                print(f"pxe-config: {e}; not deleted", file=sys.stderr)
                return 1
            return 0
        cfg = await db.runInteraction(catalog.get_pxe_config, a.name)
        if cfg is None:
            print(f"pxe-config: no PXE config named {a.name}", file=sys.stderr)
            return 1
        print(block(cfg))
        return 0
    finally:
        db.close()


def main(argv: list[str] | None = None) -> None:
    p = parser()
    a = p.parse_args(argv)
    check_args(p, a)
    run_command("pxe-config", lambda reactor: run(reactor, a))


if __name__ == "__main__":
    main()
