"""Redis up but refusing writes (READONLY: it became a replica; OOM: maxmemory reached), and a reply
lost after Redis ran a write: the sinks stall instead of dead-lettering, and append nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis

from tests.connectors.outage_cases import RedisCase, run_one
from tests.connectors.outage_harness import RedisService

pytestmark = pytest.mark.services


class _RedisRefusing:
    """The private Redis made to refuse writes for a while (it stays up): `down()` and `up()` send
    the two commands given."""

    def __init__(self, service: RedisService, name: str, down: list[Any], up: list[Any]):
        self.service, self.name, self._down, self._up = service, name, down, up
        self.url = service.url

    def _run(self, *command: Any) -> None:
        import redis

        c = redis.Redis.from_url(self.service.url)
        try:
            c.execute_command(*command)
        finally:
            c.close()

    def create(self) -> None:
        pass

    def down(self) -> None:
        self._run(*self._down)

    def up(self) -> None:
        self._run(*self._up)

    def cleanup(self) -> None:
        pass


@pytest.mark.parametrize("refusal", ["readonly", "oom"])
@pytest.mark.parametrize("method", ["script", "xadd"])
def test_redis_stream_sink_waits_while_redis_refuses_writes(redis_service: RedisService, tmp_path: Path,
                                                            refusal: str, method: str) -> None:
    """READONLY (the server became a replica) and OOM (maxmemory reached, noeviction) are the
    server's state, not the messages' fault: the sink stalls until writes are accepted again, and
    writes nothing twice."""
    from tests.connectors.redis_harness import free_port

    if refusal == "readonly":  # a replica of a master that is not there: read-only, data kept
        how = _RedisRefusing(redis_service, refusal, ["REPLICAOF", "127.0.0.1", str(free_port())],
                             ["REPLICAOF", "NO", "ONE"])
    else:
        how = _RedisRefusing(redis_service, refusal, ["CONFIG", "SET", "maxmemory", "1"],
                             ["CONFIG", "SET", "maxmemory", "0"])
    case = RedisCase(how)  # type: ignore[arg-type]
    case.kind = f"redis_{refusal}_{method}"
    sink = "{connection: r, stream: out, maxlen: null}"
    with_method = sink.replace("}", f", method: {method}}}")
    case.parts = lambda: {**RedisCase.parts(case), "sink": with_method}  # type: ignore[method-assign]
    asyncio.run(run_one(case, tmp_path, 2.0))


def test_redis_cache_sink_waits_while_redis_is_a_read_only_replica(redis_service: RedisService,
                                                                   tmp_path: Path) -> None:
    """The same refusal for redis_cache_sink (idempotent SETs: the whole batch is written again)."""
    from tests.connectors.redis_harness import free_port

    replica = _RedisRefusing(redis_service, "readonly", ["REPLICAOF", "127.0.0.1", str(free_port())],
                             ["REPLICAOF", "NO", "ONE"])
    case = RedisCase(replica)  # type: ignore[arg-type]
    case.kind = "redis_cache_readonly"
    cache = {"sink_type": "redis_cache_sink", "sink": "{connection: r, key: '\"k:\" + string(msg.id)'}"}
    case.parts = lambda: {**RedisCase.parts(case), **cache}  # type: ignore[method-assign]

    async def output() -> tuple[list[int], int]:
        r = aredis.Redis.from_url(redis_service.url)
        try:
            keys = [k async for k in r.scan_iter(match="k:*", count=5000)]
            return [int(k.split(b":")[1]) for k in keys], len(keys)
        finally:
            await r.aclose()

    case.output = output  # type: ignore[method-assign]
    asyncio.run(run_one(case, tmp_path, 2.0))


# -- a reply lost after Redis ran the write (it went down just then) -----------------------------------

class _ReplyCutter:
    """A TCP proxy in front of the private Redis that, when `armed`, lets the next EVALSHA through,
    gives Redis time to run it, then drops the connection instead of passing the reply back: what a
    client sees when Redis stops right after running its command."""

    def __init__(self, port: int):
        self.port = port
        self.armed = False
        self.cut = 0
        self.server: Any = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.port)
        cutting = asyncio.Event()

        async def up() -> None:
            while data := await cr.read(65536):
                sw.write(data)
                await sw.drain()
                if self.armed and b"EVALSHA" in data:
                    self.armed = False
                    cutting.set()
                    await asyncio.sleep(0.3)  # Redis runs it
                    self.cut += 1
                    cw.close()
                    sw.close()
                    return

        async def down() -> None:
            while data := await sr.read(65536):
                if cutting.is_set():
                    return
                cw.write(data)
                await cw.drain()

        with contextlib.suppress(Exception):
            await asyncio.gather(up(), down())
        for w in (cw, sw):
            w.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def test_redis_stream_sink_does_not_append_twice_a_batch_whose_reply_was_lost(redis_service: RedisService) -> None:
    from engine.errors import UNAVAILABLE, classify
    from engine.message import Msg
    from engine.runtime.context import NodeContext, Resources
    from operators.connectors.redis.streams import RedisStreamSink, RedisStreamSinkConfig

    async def main() -> None:
        cutter = _ReplyCutter(redis_service.server.port)
        url = await cutter.start()
        res = Resources()
        cfg = RedisStreamSinkConfig.model_validate({"connection": "r", "stream": "lost", "maxlen": None})
        sink = RedisStreamSink("out", cfg, NodeContext("out", {"r": {"type": "redis", "url": url}}, {}, res))
        try:
            await sink.start()
            first = [Msg({"id": i}) for i in range(2500)]  # three chunks of the script
            assert await sink.write(first) == []
            batch = [Msg({"id": i}) for i in range(2500, 5000)]
            cutter.armed = True
            with pytest.raises(Exception) as lost:
                await sink.write(batch)
            assert cutter.cut == 1 and classify(lost.value) == UNAVAILABLE
            assert await sink.write(batch) == []  # the runtime's retry: the same list
        finally:
            await res.close()
            await cutter.close()
        r = aredis.Redis.from_url(redis_service.url)
        try:
            ids = [orjson.loads(f[b"body"])["id"] for _, f in await r.xrange("lost")]
        finally:
            await r.aclose()
        assert sorted(ids) == list(range(5000)), f"{len(ids) - 5000} appended twice"

    asyncio.run(main())
