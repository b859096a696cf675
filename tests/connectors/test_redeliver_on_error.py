"""`defaults.on_error: redeliver` through the real runtime: a message failing in the graph is nak'ed
with the retry delay, delivered again, and dead-lettered by its source after `max_deliver`."""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from pathlib import Path

import nats
import orjson
import pytest

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner

pytestmark = pytest.mark.services


def test_poison_message_is_redelivered_then_dead_lettered(tmp_path: Path) -> None:
    name = f"REDELIVER_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        name: redeliver
        connections:
          nats: {{type: nats, url: "nats://127.0.0.1:4222"}}
        defaults: {{dead_letter: dead, on_error: redeliver}}
        nodes:
          src:
            type: jetstream_source
            config:
              connection: nats
              stream: {name}
              durable: d
              max_deliver: 3
              retry: {{initial_backoff: 0.05, max_backoff: 0.1, jitter: 0}}
          shape: {{type: map, inputs: [src], config: {{expr: '{{"id": msg.id, "amount": msg.amount, "seen": true}}'}}}}
          price: {{type: map, inputs: [shape], config: {{expr: '{{"id": msg.id, "total": double(msg.amount) * 2.0}}'}}}}
          out: {{type: file_sink, inputs: [price], config: {{path: out.ndjson}}}}
          dead: {{type: file_sink, inputs: [src.errors], config: {{path: dead.ndjson}}}}
    """))

    async def main() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        await js.add_stream(name=name, subjects=[f"{name}.>"])
        try:
            for i in range(20):
                body = {"id": i, "amount": "not a number" if i == 7 else i}
                await js.publish(f"{name}.in", orjson.dumps(body))
            runner = Runner(load_graph(str(path)))
            task = asyncio.create_task(runner.run())
            deadline = time.monotonic() + 30
            while runner.stats["dead"].committed < 1 or runner.stats["out"].committed < 19:
                assert time.monotonic() < deadline, "poison message never reached the dead letter"
                await asyncio.sleep(0.05)
            runner.stop()
            report = await task
            assert report.error is None
            t = report.totals()
            # 19 delivered once; the poison entered 3 times: failed (nak'ed) twice, then dead-lettered
            assert (t["delivered"], t["nacked"], t["dead_lettered"], t["in_flight"]) == (19, 3, 1, 0)
            info = await js.consumer_info(name, "d")
            assert info.num_ack_pending == 0 and info.num_pending == 0
        finally:
            await js.delete_stream(name)
            await nc.close()

    asyncio.run(main())
    dead = [orjson.loads(x) for x in (tmp_path / "dead.ndjson").read_bytes().splitlines()]
    # the body as it was read, not as the first map rewrote it (map rewrites messages in place)
    assert len(dead) == 1 and dead[0]["payload"] == {"id": 7, "amount": "not a number"} and dead[0]["attempt"] == 3
    assert "delivered 3 times" in dead[0]["error"]
    out = sorted(orjson.loads(x)["id"] for x in (tmp_path / "out.ndjson").read_bytes().splitlines())
    assert out == [i for i in range(20) if i != 7]
