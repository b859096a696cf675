"""Subprocess of the crash test: JetStream source -> map -> JetStream sink until all `n` are acked.

argv: url in_stream out_subject n hold_after. With hold_after > 0 it stops handing acks back
after that many sink writes and prints `holding` — messages are fetched and published but not
acked — and waits to be killed with SIGKILL. Otherwise it prints its counters as JSON at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from jetstream_pipe import Pipe, make_ctx

from engine.runtime.context import Resources
from operators.connectors.jetstream.sink import JetStreamSink, JetStreamSinkConfig
from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig


async def main(url: str, stream: str, subject: str, n: int, hold_after: int) -> None:
    resources = Resources()
    src = JetStreamSource(
        "src",
        JetStreamSourceConfig(connection="nats", stream=stream, durable="d", batch=100, ack_wait=2.0),
        make_ctx("src", url, resources),
    )
    snk = JetStreamSink(
        "snk", JetStreamSinkConfig(connection="nats", subject=subject), make_ctx("snk", url, resources)
    )
    writes = [0]
    real_write = snk.write

    async def write(batch):
        failed = await real_write(batch)
        writes[0] += 1
        if hold_after and writes[0] == hold_after:
            pipe.hold_acks.set()
            print("holding", flush=True)
        return failed

    snk.write = write  # type: ignore[method-assign]
    pipe = Pipe(src, snk, lambda body, meta: {**body, "done": True}, limit=1000)
    if hold_after:
        await pipe.run(lambda: False, timeout=60)
    done = asyncio.Event()

    async def watch() -> None:  # done when the durable has nothing pending or unacked
        while True:
            await asyncio.sleep(0.05)
            if src._h is None:
                continue
            info = await src._h.js.consumer_info(stream, "d")
            if info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq >= n:
                done.set()
                return

    watcher = asyncio.ensure_future(watch())
    await pipe.run(done.is_set, timeout=60)
    watcher.cancel()
    print(
        json.dumps(
            {
                "published": snk.published,
                "duplicates": snk.duplicates,
                "acked": src.acked,
                "redeliveries": src.redeliveries,
            }
        ),
        flush=True,
    )
    await resources.close()


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], int(a[3]), int(a[4])))
