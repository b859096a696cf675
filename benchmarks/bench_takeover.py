"""Takeover of a partition with checkpointed window state: kill -9 of its owner, until the survivor
has restored the state and processed the partition's next message.

Whole processes, as a user runs them: K events, one per key (K keys, all in one open 1-hour
event-time window), are published to partition 0 of a 1-partition subject (`jetstream_sink
partition: {key: msg.user, count: 1}`). Two `streamdag run` processes of the graph
`jetstream_source partitions: 1` -> `window` (tumbling 1 h, count, `acks: checkpoint` to
PostgreSQL every 1 s) -> stdout start; one takes the partition and folds the K events; once the
consumer's ack floor is at K (every event covered by a durable checkpoint) the owner gets kill -9
and one more event is published to the partition. Reported, in seconds from the kill:

* `took_s`: the survivor owns the partition (its log; the dead owner's KV entry expires after
  `partition_ttl`, 3 s by default);
* `restored_s`: the survivor has restored the K-key checkpoint (its log);
* `takeover_s`: the next event is processed: folded into the restored state and covered by a
  durable checkpoint (the consumer's ack floor at K + 1; the 1 s checkpoint interval included).

Everything before the probe was acked at the kill, but the probe itself is usually handed to the
dead owner's still-open pull request: the survivor then waits `ack_wait` (5 s by default) before
pulling, so that message comes back first (`waited_for_ack_wait`); the restore runs meanwhile. Run: `python benchmarks/bench_takeover.py [K ...]` (default 10000 1000000).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import nats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.machine import load_average

NATS_URL = os.environ.get("STREAMDAG_TEST_NATS", "nats://127.0.0.1:4222")
PG_DSN = os.environ.get("STREAMDAG_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
T0_MS = 1_700_000_000_000


class Proc:
    """One `streamdag run` process; its JSON log records with the monotonic time they were read."""

    def __init__(self, graph: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", str(graph), "--registry", "off",
                                      "--log-format", "json", "--log-level", "info"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.events: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                msg = str(json.loads(line).get("msg", ""))
            except (ValueError, AttributeError):
                msg = line.strip()
            self.events.append((time.monotonic(), msg))

    def first(self, text: str, since: float = 0.0) -> tuple[float, str] | None:
        return next(((t, m) for t, m in list(self.events) if t >= since and text in m), None)

    def owns(self) -> bool:
        """Its last word on partition 0 is that it took it."""
        last = [m for _, m in list(self.events) if "took partition 0" in m or "released partition 0" in m]
        return bool(last) and "took" in last[-1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _graph(tmp: Path, stream: str, durable: str, table: str) -> Path:
    path = tmp / f"{durable}.yaml"
    path.write_text(f"""\
version: 1
name: {durable}
connections:
  nats: {{type: nats, url: "{NATS_URL}"}}
  pg: {{type: postgres, dsn: "{PG_DSN}"}}
defaults: {{dead_letter: dead}}
nodes:
  read:
    type: jetstream_source
    config: {{connection: nats, stream: {stream}, durable: {durable}, subjects: [{stream}.e], partitions: 1}}
  win:
    type: window
    inputs: [read]
    config: {{kind: tumbling, size: 1h, time: event, timestamp: msg.ts, epoch_unit: ms, key: msg.user,
             aggregates: {{n: {{op: count}}}}, acks: checkpoint,
             checkpoint: {{connection: pg, interval: 1s, table: {table}, max_bytes: 1GiB}}}}
  out: {{type: stdout, inputs: [win]}}
  dead: {{type: stdout, inputs: [read.errors, win.late, win.errors]}}
""")
    return path


def _publish(tmp: Path, stream: str, n: int) -> float:
    path = tmp / "pub.yaml"
    path.write_text(f"""\
version: 1
name: {stream}_pub
connections:
  nats: {{type: nats, url: "{NATS_URL}"}}
nodes:
  gen: {{type: generate, config: {{count: {n}, template: '{{"user": "u" + string(msg.i), "ts": {T0_MS} + msg.i % 1000}}'}}}}
  pub:
    type: jetstream_sink
    inputs: [gen]
    config: {{connection: nats, subject: {stream}.e, partition: {{key: msg.user, count: 1}}}}
  dead: {{type: stdout, inputs: [gen.errors, pub.errors]}}
""")
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "engine.cli", "run", str(path)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - t


async def _ack_floor(js: Any, stream: str, consumer: str) -> int:
    try:
        return int((await js.consumer_info(stream, consumer)).ack_floor.stream_seq)
    except Exception:  # noqa: BLE001 - not created yet
        return -1


async def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def one(tmp: Path, keys: int) -> dict[str, Any]:
    stream = f"BENCH_TO_{uuid.uuid4().hex[:6]}"
    durable = f"to{keys}"
    table = f"bench_to_{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream}.e.*"])
    procs: list[Proc] = []
    res: dict[str, Any] = {"keys": keys}
    try:
        res["publish_s"] = round(_publish(tmp, stream, keys), 1)
        graph = _graph(tmp, stream, durable, table)
        started = time.monotonic()
        procs = [Proc(graph), Proc(graph)]

        async def folded() -> bool:
            if any(p.proc.poll() is not None for p in procs):
                raise RuntimeError("a worker exited: " + "\n".join(m for p in procs for _, m in p.events[-20:]))
            return await _ack_floor(js, stream, f"{durable}-p0") >= keys

        await _wait(folded, 1800, f"{keys} events folded and checkpointed")
        res["fold_and_checkpoint_s"] = round(time.monotonic() - started, 1)
        owner = next(p for p in procs if p.owns())
        res["moves_before_kill"] = sum(1 for p in procs for _, m in list(p.events) if "took partition 0" in m) - 1
        survivor = next(p for p in procs if p is not owner)
        killed = time.monotonic()
        owner.proc.send_signal(signal.SIGKILL)
        await js.publish(f"{stream}.e.0", json.dumps({"user": "probe", "ts": T0_MS + 5}).encode())

        async def processed() -> bool:
            return await _ack_floor(js, stream, f"{durable}-p0") >= keys + 1

        await _wait(processed, 120, "the next event processed by the survivor")
        res["takeover_s"] = round(time.monotonic() - killed, 2)
        for name, text in (("took_s", "took partition 0"), ("restored_s", "restored partition 0")):
            hit = survivor.first(text, killed)
            res[name] = round(hit[0] - killed, 2) if hit else None
        waiting = survivor.first("waiting", killed)  # the probe went to the dead owner's open pull
        res["waited_for_ack_wait"] = waiting[1].split(": ", 1)[-1] if waiting else None
        restored = survivor.first("restored partition 0", killed)
        res["restored_log"] = restored[1] if restored else None
    finally:
        for p in procs:
            p.stop()
        await js.delete_stream(stream)
        for info in await js.streams_info():
            if info.config.name.startswith(f"KV_streamdag_parts_{stream}_"):
                await js.delete_stream(info.config.name)
        await nc.close()
        conn = await asyncpg.connect(PG_DSN)
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.close()
    return res


def main(sizes: list[int]) -> None:
    print(f"load before: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        for keys in sizes:
            print(asyncio.run(one(Path(d), keys)), flush=True)
    print(f"load after: {load_average()}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10_000, 1_000_000])
