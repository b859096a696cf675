"""The redis_stream_source reports its connection up or down (streamdag_connection_up)."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from pathlib import Path

import pytest

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner
from tests.connectors.test_postgres_sink import app, table  # noqa: F401  (fixtures)

pytestmark = pytest.mark.services


def _source(tmp_path: Path, url: str):
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        name: conn
        connections: {{cache: {{type: redis, url: "{url}"}}}}
        defaults: {{dead_letter: sink}}
        nodes:
          src: {{type: redis_stream_source, config: {{connection: cache, stream: s-{uuid.uuid4().hex[:8]}, group: g}}}}
          sink: {{type: drop, inputs: [src]}}
    """))
    runner = Runner(load_graph(str(path)))
    return runner, runner.nodes["src"]


def test_connection_state_follows_the_last_call(tmp_path: Path) -> None:
    async def main() -> None:
        runner, src = _source(tmp_path, "redis://127.0.0.1:6379/0")
        await src.start()
        assert src.connection_state() == {}
        assert await src._retrying(lambda: src._client.ping())
        assert src.connection_state() == {"cache": True}
        await runner.resources.close()

        import redis.asyncio as aioredis

        src._client = aioredis.from_url("redis://127.0.0.1:1/0")  # the server "went away": nothing listens
        src._stopping = asyncio.Event()
        task = asyncio.create_task(src._retrying(lambda: src._client.ping()))
        for _ in range(200):
            if src.connection_state() == {"cache": False}:
                break
            await asyncio.sleep(0.01)
        assert src.connection_state() == {"cache": False}
        src._stopping.set()
        await asyncio.gather(task, return_exceptions=True)
        await src._client.aclose()
        await runner.resources.close()

    asyncio.run(main())


def test_postgres_sink_reports_a_cut_connection_then_its_recovery(table: str, app: str) -> None:
    import asyncpg

    from engine.message import Msg
    from tests.connectors.test_postgres_sink import make

    sink, res = make(table, app, mode="upsert", key=["id"], retry={"max_attempts": 1})

    async def main() -> None:
        await sink.start()
        try:
            assert sink.connection_state() == {}
            await sink.write([Msg({"id": 1, "version": 1, "total": 1})])
            assert sink.connection_state() == {"pg": True}
            good = sink.pool
            # the server "went away": a pool whose every connection attempt is refused
            sink.pool = await asyncpg.create_pool("postgresql://root@127.0.0.1:1/test", min_size=0, max_size=1)
            with pytest.raises(OSError):  # one attempt only: the runtime's retry policy would take it from here
                await sink.write([Msg({"id": 2, "version": 1, "total": 2})])
            assert sink.connection_state() == {"pg": False}
            await sink.pool.close()
            sink.pool = good
            await sink.write([Msg({"id": 2, "version": 1, "total": 2})])
            assert sink.connection_state() == {"pg": True}
        finally:
            await res.close()

    asyncio.run(main())
