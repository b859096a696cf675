"""Keyed partitions: a keyed event-time window graph with 1 vs 2 workers, and the takeover after kill -9.

* N events (K users, event time 1 ms apart) are published once through `jetstream_sink` with
  `partition: {key: msg.user, count: 8}`. Each run reads the whole backlog with a fresh durable:
  `jetstream_source partitions: 8` -> `window` (tumbling 10 s of event time per user, count and
  sum, `idle_timeout` 2 s) -> `postgres_sink` upsert. Runs alternate 1, 2, 1, 2 workers in one
  invocation. Time is whole-process: from `streamdag run G --workers W` to the last window in the
  table (start-up, the partition take-over at start and the 2 s idle timeout that closes the last
  windows included); CPU is the supervisor's and its workers' (RUSAGE_CHILDREN) over N.
* Takeover with the defaults (`partition_ttl` 3 s, `ack_wait` 5 s): 2 workers, kill -9 of one
  mid-run: seconds until another worker owns each of its partitions (its log), and until the
  windows are complete, against the same run without a kill.

Run: `python benchmarks/bench_partitions.py [N]`. The machine is shared (2 cores): a second worker
competes with NATS and PostgreSQL for them; the ratio says what a second process buys here.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import nats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.workers_harness import Supervised

NATS_URL = os.environ.get("STREAMDAG_TEST_NATS", "nats://127.0.0.1:4222")
PG_DSN = os.environ.get("STREAMDAG_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
P, USERS, WINDOW_S = 8, 1000, 10
TOOK = re.compile(r"(took|released) partition (\d+)")


def _graph(tmp: Path, name: str, stream: str, table: str, durable: str, extra: str = "") -> Path:
    path = tmp / f"{durable}.yaml"
    path.write_text(f"""\
version: 1
name: {name}
connections:
  nats: {{type: nats, url: "{NATS_URL}"}}
  pg: {{type: postgres, dsn: "{PG_DSN}"}}
defaults: {{dead_letter: dead}}
nodes:
  read:
    type: jetstream_source
    config: {{connection: nats, stream: {stream}, durable: {durable}, subjects: [{stream}.e], partitions: {P}{extra}}}
  win:
    type: window
    inputs: [read]
    config: {{kind: tumbling, size: {WINDOW_S}s, time: event, timestamp: msg.ts, epoch_unit: ms, key: msg.user,
             idle_timeout: 2s, aggregates: {{n: {{op: count}}, total: {{op: sum, expr: msg.id}}}}}}
  store:
    type: postgres_sink
    inputs: [win]
    config: {{connection: pg, table: {table}, mode: upsert, key: [run, usr, start],
             columns: {{run: "'{durable}'", usr: msg.key, start: msg.start, n: msg.aggregates.n}}}}
  dead: {{type: stdout, inputs: [read.errors, win.late, win.errors, store.errors]}}
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
  gen: {{type: generate, config: {{count: {n}, template: '{{"id": msg.i, "user": "u" + string(msg.i % {USERS}), "ts": 1700000000000 + msg.i}}'}}}}
  pub:
    type: jetstream_sink
    inputs: [gen]
    config: {{connection: nats, subject: {stream}.e, partition: {{key: msg.user, count: {P}}}, msg_id: "string(msg.id)"}}
  dead: {{type: stdout, inputs: [gen.errors, pub.errors]}}
""")
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "engine.cli", "run", str(path)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - t


async def _sql(query: str) -> Any:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


def _count(table: str, durable: str) -> tuple[int, int]:
    r = asyncio.run(_sql(f"SELECT count(*) AS w, coalesce(sum(n), 0) AS n FROM \"{table}\" WHERE run = '{durable}'"))[0]
    return int(r["w"]), int(r["n"])


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _owned_after(run: Supervised, mark: int, parts: set[int]) -> bool:
    with run._lock:
        events = list(run.events)[mark:]
    took = {int(m[2]) for e in events if (m := TOOK.search(str(e.get("msg", "")))) and m[1] == "took"}
    return parts <= took


def _owned(run: Supervised) -> dict[str, set[int]]:
    with run._lock:
        events = list(run.events)
    out: dict[str, set[int]] = {}
    for e in events:
        m = TOOK.search(str(e.get("msg", "")))
        if m:
            s = out.setdefault(str(e.get("worker")), set())
            (s.add if m[1] == "took" else s.discard)(int(m[2]))
    return out


def one_run(tmp: Path, stream: str, table: str, n: int, windows: int, workers: int, kill: bool = False,
            extra: str = "") -> dict[str, Any]:
    durable = f"w{workers}{'k' if kill else ''}_{uuid.uuid4().hex[:6]}"
    graph = _graph(tmp, f"{stream}_{durable}", stream, table, durable, extra)
    cpu0, t0 = _cpu(), time.monotonic()
    run = Supervised(graph, workers, "--registry", "off", "--log-level", "info")
    res: dict[str, Any] = {"workers": workers, "kill": kill}
    try:
        if kill:
            run.wait_until(lambda: _count(table, durable)[1] > n // 4, 300, "a quarter of the windows")
            owned = _owned(run)
            pid = [p for i, p in run.started() if i == 1][-1]
            dead = next(v for k, v in owned.items() if k.endswith(f"-{pid}"))
            with run._lock:
                mark = len(run.events)
            killed = time.monotonic()
            run.kill_worker(1)
            run.wait_until(lambda: _owned_after(run, mark, dead), 60, "its partitions taken")
            res["partitions_taken_s"] = round(time.monotonic() - killed, 2)
            res["killed_partitions"] = len(dead)
        run.wait_until(lambda: _count(table, durable) == (windows, n), 600, "every window")
        res["seconds"] = round(time.monotonic() - t0, 2)
    finally:
        run.signal()
        run.finish()
    res["cpu_us_per_msg"] = round((_cpu() - cpu0) / n * 1e6, 1)
    res["msg_per_s"] = round(n / res["seconds"])
    return res


async def _setup(stream: str, table: str) -> None:
    nc = await nats.connect(NATS_URL)
    await nc.jetstream().add_stream(name=stream, subjects=[f"{stream}.e.*"])
    await nc.close()
    await _sql(f'CREATE TABLE "{table}" (run text, usr text, start text, n int, PRIMARY KEY (run, usr, start))')


async def _teardown(stream: str, table: str) -> None:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.delete_stream(stream)
    for info in await js.streams_info():
        if info.config.name.startswith(f"KV_streamdag_parts_{stream}_"):
            await js.delete_stream(info.config.name)
    await nc.close()
    await _sql(f'DROP TABLE IF EXISTS "{table}"')


def main(n: int = 200_000) -> list[dict[str, Any]]:
    from benchmarks.machine import load_average

    stream = f"BENCH_PARTS_{uuid.uuid4().hex[:6]}"
    table = stream.lower()
    windows = len({(i % USERS, i // (WINDOW_S * 1000)) for i in range(n)})
    asyncio.run(_setup(stream, table))
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            print(f"published {n} events in {_publish(tmp, stream, n):.1f}s; load {load_average()}")
            for workers in (1, 2, 1, 2):
                r = one_run(tmp, stream, table, n, windows, workers)
                results.append(r)
                print(r, flush=True)
            r = one_run(tmp, stream, table, n, windows, 2, kill=True)
            results.append(r)
            print(r, flush=True)
    finally:
        asyncio.run(_teardown(stream, table))
    print(f"load after: {load_average()}")
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
