"""`streamdag check-consistency` reached through the CLI's command plugins, on real services."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from engine.cli import main

DSN = "postgresql://root@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.services
def test_check_consistency_command_scores_and_exits(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    table = f"cc_{uuid.uuid4().hex[:10]}"
    prefix = f"cc-{uuid.uuid4().hex[:8]}:"

    async def setup() -> None:
        conn = await asyncpg.connect(DSN)
        await conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, version bigint)")
        await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(i, 1) for i in range(4)])
        await conn.close()
        r = aioredis.from_url(REDIS)
        for i in range(4):
            await r.set(f"{prefix}{i}", json.dumps({"id": i}))
            await r.set(f"{prefix}{i}:version", 1 if i != 3 else 0)
        await r.aclose()

    async def cleanup() -> None:
        conn = await asyncpg.connect(DSN)
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
        r = aioredis.from_url(REDIS)
        keys = [k async for k in r.scan_iter(f"{prefix}*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()

    asyncio.run(setup())
    try:
        base = ["check-consistency", "--dsn", DSN, "--table", table, "--key-column", "id",
                "--version-column", "version", "--redis-url", REDIS, "--key-prefix", prefix, "--json"]
        assert main(base) == 1  # key 3 has version 0 in the cache, 1 in the table
        report = json.loads(capsys.readouterr().out)
        assert report["matched"] == 3 and report["score"] == pytest.approx(0.75)
        prom = tmp_path / "consistency.prom"
        assert main([*base, "--min-score", "0.7", "--metrics-file", str(prom)]) == 0
        # for node_exporter's textfile collector; `streamdag alerts` fires StreamdagConsistencyLow on it
        scores = {s.name: s for f in text_string_to_metric_families(prom.read_text()) for s in f.samples}
        score = scores["streamdag_consistency_score"]
        assert score.value == pytest.approx(0.75) and score.labels == {"table": table, "key_prefix": prefix}
        assert list(tmp_path.iterdir()) == [prom]  # the temporary file was renamed over it
    finally:
        asyncio.run(cleanup())


@pytest.mark.services
@pytest.mark.parametrize(("extra", "expected"), [
    (["--table", "cc_no_such_table_x"], 'error: check-consistency: postgres table cc_no_such_table_x: relation '
                                        '"cc_no_such_table_x" does not exist'),
    (["--table", "t", "--redis-url", "redis://127.0.0.1:1/0"], "error: check-consistency: redis (redis://127.0.0.1:1/0): "
                                                             "cannot connect"),
    (["--table", "t", "--dsn", "postgresql://root:pw@127.0.0.1:1/test"],
     "error: check-consistency: postgres (postgresql://root:***@127.0.0.1:1/test): cannot connect"),
])
def test_check_consistency_that_cannot_check_says_why_and_exits_2(extra, expected, capsys) -> None:
    """Exit 2 (cannot check) is not exit 1 (score too low), and there is no traceback."""
    code = main(["check-consistency", "--key-column", "id", "--key-prefix", "x:", "--connect-timeout", "2", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(expected) and err.count("\n") == 1, err
