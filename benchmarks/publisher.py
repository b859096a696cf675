"""A load generator in its own process: publishes JSON orders to a NATS subject at a fixed rate.

Each body carries `ts`, its publish time (epoch seconds), so a consumer can measure publish-to-commit.
`python -m benchmarks.publisher SUBJECT COUNT RATE` (RATE 0: as fast as possible). Prints one JSON
line: messages, seconds, achieved rate. Run as a separate process so pacing does not share the
event loop of the pipeline under test.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import orjson

from benchmarks.machine import NATS_URL

__all__ = ["body", "publish"]

TICK = 0.001  # seconds between paced bursts


def body(i: int, ts: float) -> bytes:
    return orjson.dumps({"id": i, "customer": f"c-{i % 1000}", "amount": float(i % 100), "qty": i % 9 + 1,
                         "ts": ts, "note": "x" * 40})


async def publish(subject: str, count: int, rate: float, start_id: int = 0) -> dict[str, float]:
    import nats

    nc = await nats.connect(NATS_URL, pending_size=64 * 1024 * 1024)
    try:
        t0 = time.time()
        i = 0
        while i < count:
            if rate > 0:
                due = min(count, int((time.time() - t0) * rate) + 1)
                if due <= i:
                    await asyncio.sleep(TICK)
                    continue
            else:
                due = min(count, i + 1000)
            now = time.time()
            for j in range(i, due):
                await nc.publish(subject, body(start_id + j, now))
            i = due
            if rate <= 0:
                await nc.flush()
        await nc.flush()
        seconds = time.time() - t0
        return {"messages": count, "seconds": round(seconds, 3), "rate": round(count / seconds), "t0": t0}
    finally:
        await nc.close()


if __name__ == "__main__":
    import uvloop

    subject, n, r = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(uvloop.run(publish(subject, n, r))), flush=True)
