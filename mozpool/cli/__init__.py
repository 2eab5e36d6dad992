"""Console scripts: mozpool-db, relay, pxe-config."""

from __future__ import annotations

import sys
from typing import Any, Awaitable, Callable

from twisted.internet import defer, task

from mozpool.config import ConfigError
from mozpool.db.errors import DatabaseError


def run_command(prog: str, run: Callable[[Any], Awaitable[int]]) -> None:
    """Run ``run(reactor)`` under ``task.react``; expected failures print one line and exit 1."""

    async def go(reactor: Any) -> None:
        try:
            code = await run(reactor)
        except (DatabaseError, ConfigError, ValueError, OSError) as e:
            print(f"{prog}: {e}", file=sys.stderr)
            code = 1
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
