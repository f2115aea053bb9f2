"""A database of its own at an earlier schema version, for testing one migration on old rows."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

from trustpub.registry import migrations


@contextlib.asynccontextmanager
async def database_before(pg_admin_url: str, version: str) -> AsyncIterator[str]:
    """A fresh database with every migration older than ``version`` applied (and recorded, so
    that :func:`migrations.apply` applies ``version`` and the later ones); dropped afterwards."""
    name = f"trustpub_mig_{uuid.uuid4().hex[:8]}"
    admin = await asyncio.wait_for(asyncpg.connect(pg_admin_url), 10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = pg_admin_url.rpartition("/")[0] + "/" + name
        conn = await asyncio.wait_for(asyncpg.connect(url), 10)
        try:
            await conn.execute(migrations._CREATE_TABLE)
            for shipped, sql in migrations.available():
                if shipped >= version:
                    break
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", shipped)
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
