"""Schema migrations: ``sql/NNNN_name.sql`` files, applied in order, each exactly once.

Applied versions are recorded in ``schema_migrations``. A session-level advisory lock
serialises concurrent runs (two replicas starting at once, ``make up`` and a test), and
every file runs in its own transaction together with its ``schema_migrations`` row, so a
failed migration leaves nothing half-applied.
"""

from __future__ import annotations

import re
from importlib import resources

import asyncpg

# An arbitrary constant shared by every trustpub process: "trustpub" in ASCII, as an int8.
MIGRATION_LOCK_ID = 0x7472757374707562

_FILE = re.compile(r"(?P<version>[0-9]{4}_[a-z0-9_]+)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def available() -> list[tuple[str, str]]:
    """Every migration shipped with the package, as (version, SQL), in order."""
    out: list[tuple[str, str]] = []
    for entry in resources.files("trustpub.registry").joinpath("sql").iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            out.append((match["version"], entry.read_text(encoding="utf-8")))
    return sorted(out)


async def apply(dsn: str, *, timeout: float = 30.0) -> list[str]:
    """Apply every migration not yet recorded; return the versions applied now.

    Idempotent: a second run applies nothing and returns ``[]``.

    Raises:
        OSError, asyncpg.PostgresError: the database is unreachable or a migration failed
            (that migration's changes are rolled back).
    """
    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        # Session-level: held across the per-file transactions, released on unlock or
        # when the connection closes (even if this process dies).
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(_CREATE_TABLE)
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            applied: list[str] = []
            for version, sql in available():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await conn.close()
