"""Versioned schema: ``sql/<backend>/schema-vN.sql`` is the whole schema at version N, and
``sql/<backend>/upgrade-to-vN.sql`` takes a database from N-1 to N.  A missing step fails loudly."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mozpool.logconfig import Logger

from mozpool.db.errors import SchemaError
from mozpool.db.pool import Cursor, Database, alone

log = Logger()


def sql_dir() -> Path:
    """The schema files: the checkout's ``sql/``, or the installed copy under share/."""
    candidates = [
        Path(__file__).resolve().parent.parent.parent / "sql",
        Path(sys.prefix) / "share" / "mozpool" / "sql",
    ]
    for c in candidates:
        if (c / "sqlite").is_dir():
            return c
    raise SchemaError("schema files not found in " + ", ".join(map(str, candidates)))


def _versions(backend: str, kind: str) -> dict[int, Path]:
    found = {}
    for p in (sql_dir() / backend).glob(f"{kind}-v*.sql"):
        m = re.fullmatch(rf"{kind}-v(\d+)\.sql", p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def latest_version(backend: str = "sqlite") -> int:
    return max(_versions(backend, "schema"))


def split_statements(text: str) -> list[str]:
    """The statements of a schema file: ``--`` comments dropped, split on ``;``."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _current(c: Cursor) -> int | None:
    try:
        return c.scalar("SELECT MAX(version) FROM schema_version")
    except Exception:
        return None


def _has_schema_table(c: Cursor, mysql: bool) -> bool:
    if mysql:
        return bool(c.execute("SHOW TABLES LIKE 'schema_version'").fetchall())
    return bool(
        c.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchall()
    )


async def current_version(db: Database) -> int | None:
    """The applied version, or None for an empty database."""

    def q(c: Cursor) -> int | None:
        if not _has_schema_table(c, db.mysql):
            return None
        return _current(c)

    return await db.runInteraction(q)


async def create_schema(db: Database) -> int:
    """Create the latest schema in an empty database; return its version."""
    versions = _versions(db.backend, "schema")
    target = max(versions)
    statements = split_statements(versions[target].read_text())

    @alone
    def create(c: Cursor) -> None:
        if _has_schema_table(c, db.mysql):
            raise SchemaError("the database already has a schema; use `mozpool-db upgrade`")
        try:
            for s in statements:
                c.execute(s)
        except Exception as e:
            if "already exists" in str(e):  # another server created it at the same moment
                raise SchemaError(f"the schema was being created by someone else: {e}") from e
            raise
        c.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))

    await db.runInteraction(create)
    log.info("created schema version {version} ({backend})", version=target, backend=db.backend)
    return target


async def upgrade(db: Database) -> int:
    """Apply every upgrade step past the current version; create the schema if there is none."""
    have = await current_version(db)
    if have is None:
        return await create_schema(db)
    target = latest_version(db.backend)
    if have > target:
        raise SchemaError(f"database schema v{have} is newer than this code's v{target}")
    steps = _versions(db.backend, "upgrade-to")
    for v in range(have + 1, target + 1):
        if v not in steps:
            raise SchemaError(f"no upgrade step to v{v} for {db.backend} in {sql_dir()}")
        statements = split_statements(steps[v].read_text())

        @alone
        def step(c: Cursor, statements: list[str] = statements, v: int = v) -> None:
            for s in statements:
                c.execute(s)
            c.execute("UPDATE schema_version SET version = ?", (v,))

        await db.runInteraction(step)
        log.info("upgraded schema to v{version}", version=v)
    return target


async def require_current(db: Database) -> None:
    """Fail at start-up when the schema is missing or not the version this code expects."""
    have = await current_version(db)
    want = latest_version(db.backend)
    if have is None:
        raise SchemaError("the database has no schema; run `mozpool-db create-schema`")
    if have != want:
        raise SchemaError(f"schema is v{have}, this code needs v{want}; run `mozpool-db upgrade`")
