"""kill -9 of `streamdag run` (JetStream -> window with checkpoints -> PostgreSQL upsert) in the middle
of open windows, then a restart: the final rows are those of one uninterrupted run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "connectors"))

from jetstream_fixtures import NATS_URL, add_stream, connect, unique, wait_for

from tests.connectors.postgres_harness import DSN, sql

STREAMDAG = str(Path(sys.executable).with_name("streamdag"))
N, KEYS = 4000, 40  # 40 s of event time, 5 s windows: 8 windows of 40 keys

GRAPH = """
version: 1
name: ck_crash
connections:
  nats: {{type: nats, url: "{nats}"}}
  pg: {{type: postgres, dsn: "{dsn}"}}
defaults: {{dead_letter: dead}}
nodes:
  src:
    type: jetstream_source
    config: {{connection: nats, stream: {stream}, durable: d, batch: 50, ack_wait: 2s}}
  slow:
    type: rate_limit
    inputs: [src]
    config: {{rate: 1500, burst: 50}}
  win:
    type: window
    inputs: [slow]
    config:
      kind: tumbling
      size: 5s
      key: msg.k
      time: event
      timestamp: msg.t
      idle_timeout: 1s
      checkpoint: {{connection: pg, interval: 300ms, table: {table}}}
      aggregates: {{n: {{op: count}}, total: {{op: sum, expr: msg.v}}}}
  rows:
    type: postgres_sink
    inputs: [win]
    config:
      connection: pg
      table: {out}
      mode: upsert
      key: [k, start]
      columns: {{k: msg.key, start: msg.start, n: msg.count, total: msg.aggregates.total}}
  dead:
    type: file_sink
    inputs: [src.errors, win.errors, win.late, rows.errors]
    config: {{path: dead.ndjson}}
"""


@pytest.mark.services
def test_kill_9_mid_window_then_restart_gives_the_rows_of_an_uninterrupted_run(tmp_path: Path) -> None:
    name = unique("ckcrash")
    stream, table, out = f"{name}_IN", f"{name}_ck", f"{name}_out"
    expected_n: Counter[tuple[str, int]] = Counter()
    expected_total: Counter[tuple[str, int]] = Counter()
    bodies = []
    for i in range(N):
        k, t, v = f"k{i % KEYS}", i / 100, i % 13
        bodies.append(json.dumps({"k": k, "t": t, "v": v}).encode())
        expected_n[(k, int(t // 5) * 5)] += 1
        expected_total[(k, int(t // 5) * 5)] += v
    (tmp_path / "graph.yaml").write_text(GRAPH.format(nats=NATS_URL, dsn=DSN, stream=stream, table=table, out=out))

    async def rows() -> dict[tuple[str, int], tuple[int, int]]:
        got = await sql(f'SELECT k, start, n, total FROM "{out}"')
        return {(r["k"], int(r["start"][17:19]) + 60 * int(r["start"][14:16])): (int(r["n"]), int(r["total"]))
                for r in got}

    async def main() -> str:
        nc = await connect()
        js = nc.jetstream()
        try:
            await add_stream(js, stream)
            for body in bodies:
                await nc.publish(f"{stream}.x", body)
            await nc.flush()
            await sql(f'CREATE TABLE "{out}" (k text, start text, n bigint, total bigint, PRIMARY KEY (k, start))')
            cmd = [STREAMDAG, "run", str(tmp_path / "graph.yaml")]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            first = await asyncio.create_subprocess_exec(*cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.DEVNULL)

            async def mid_run() -> bool:  # some windows out, a checkpoint saved, most input still to come
                assert first.returncode is None, "streamdag run ended early"
                try:
                    info = await js.consumer_info(stream, "d")
                except Exception:  # noqa: BLE001 - the consumer is not created yet
                    return False
                return len(await rows()) >= KEYS and info.ack_floor.stream_seq >= 1000

            await wait_for(mid_run, timeout=20, what="windows out and a checkpoint acknowledged")
            first.send_signal(signal.SIGKILL)
            await first.wait()
            # restart after ack_wait, as a supervisor should for an event-time window (docs/jetstream.md):
            # the server then redelivers what the killed run held before anything newer
            await asyncio.sleep(2.5)
            before = await rows()
            acked = (await js.consumer_info(stream, "d")).ack_floor.stream_seq
            assert 0 < acked < N and len(before) < len(expected_n)  # killed in the middle

            log = tmp_path / "second.log"
            with log.open("w") as f:
                second = await asyncio.create_subprocess_exec(*cmd, cwd=tmp_path, env=env, stderr=f,
                                                              stdout=subprocess.DEVNULL)
                try:
                    async def finished() -> bool:
                        got = await rows()
                        return len(got) == len(expected_n) and all(
                            got[w] == (expected_n[w], expected_total[w]) for w in got)

                    try:
                        await wait_for(finished, timeout=40, what="every window's final row")
                    except TimeoutError as exc:
                        got = await rows()
                        wrong = {w: (got.get(w), (expected_n[w], expected_total[w])) for w in expected_n
                                 if got.get(w) != (expected_n[w], expected_total[w])}
                        dead = tmp_path / "dead.ndjson"
                        raise AssertionError(
                            f"{len(wrong)} windows wrong (got, want): {sorted(wrong.items())[:5]}; dead letters: "
                            f"{dead.read_text()[:600] if dead.exists() else 'none'}; log: {log.read_text()[-1500:]}"
                        ) from exc
                    finally:
                        second.send_signal(signal.SIGTERM)
                        await asyncio.wait_for(second.wait(), 20)
                finally:
                    if second.returncode is None:
                        second.kill()
                        await second.wait()
            return log.read_text()
        finally:
            await js.delete_stream(stream)
            await nc.close()
            await sql(f'DROP TABLE IF EXISTS "{out}"')
            await sql(f'DROP TABLE IF EXISTS "{table}"')

    log = asyncio.run(main())
    assert "restored partition -" in log  # the restart started from the checkpoint, not from scratch
    assert (tmp_path / "dead.ndjson").read_text() == ""  # nothing late, nothing failed
