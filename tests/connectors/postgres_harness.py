"""What the PostgreSQL tests share: the test database's DSN and a one-shot query helper."""

from __future__ import annotations

from typing import Any

import asyncpg

__all__ = ["DSN", "sql"]

DSN = "postgresql://root@127.0.0.1:5432/test"


async def sql(query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on a fresh connection (set-up and checks outside the code under test)."""
    conn = await asyncpg.connect(DSN)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()
